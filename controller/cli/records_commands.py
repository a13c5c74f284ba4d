"""``povd runs list|show|report|verify``: read the run records directly, no service needed. A
report is text, JSON, or files: the printable HTML page (``--html FILE``) and the CSV of the
run's samples and passes (``--csv DIR``)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from controller.cli.admin_commands import audit_path
from controller.cli.output import EXIT_ENDED_OTHERWISE, EXIT_INVALID, EXIT_OK, err, out
from controller.records.report_csv import (
    passes_filename,
    samples_filename,
    write_passes_csv,
    write_samples_csv,
)
from controller.records.run_records import RecordsReader, RunDetail, records_path, resolve_data_dir
from controller.records.schema import to_plain
from controller.records.verify import LegalTransitions, verify_records
from controller.safety.states import TRANSITIONS
from controller.service.reports.summary import run_report
from controller.service.reports.summary import when as _when


def cmd_runs(args: argparse.Namespace) -> int:
    path = records_path(resolve_data_dir(args.data_dir))
    if not path.exists():
        if args.runs_command == "list":
            out("[]" if args.json else f"no run records yet ({path})")
            return EXIT_OK
        out(f"no run records at {path}")
        return EXIT_INVALID
    if args.runs_command == "verify":
        return cmd_runs_verify(args, path)
    reader = RecordsReader(path)
    if args.runs_command == "list":
        _list_runs(reader, as_json=args.json)
        return EXIT_OK
    detail = reader.get_run(args.run_id)
    if detail is None:
        out(f"no run {args.run_id}")
        return EXIT_INVALID
    if args.runs_command == "report" and (args.html or args.csv):
        return _write_report_files(reader, detail, html=args.html, csv_dir=args.csv)
    if args.runs_command == "report":
        report = run_report(detail)
        if args.json:
            out(json.dumps(report, indent=2, default=str))
        else:
            print_report(report)
    elif args.json:
        out(json.dumps(to_plain(detail), indent=2, default=str))
    else:
        _show_run(detail)
    return EXIT_OK


def legal_transitions() -> LegalTransitions:
    """The (from, to) state pairs the state machine's table allows, for ``verify_records``."""
    return frozenset((before.value, after.value) for (before, _), after in TRANSITIONS.items())


def cmd_runs_verify(args: argparse.Namespace, path: Path) -> int:
    """``povd runs verify [--run ID] [--json]``: 0 when every check passes, 1 with findings."""
    data_dir = resolve_data_dir(args.data_dir)
    result = verify_records(path, legal_transitions(), run_id=args.run,
                            audit=audit_path(data_dir))
    if args.run is not None and not result.runs:
        out(f"no run {args.run}")
        return EXIT_INVALID
    if args.json:
        out(json.dumps(result.to_json(), indent=2))
    else:
        audit = ("no audit trail" if result.audit_entries is None
                 else f"audit trail {result.audit_entries} entries")
        out(f"{path}: {len(result.runs)} runs, {result.events} events, {audit}")
        for run in result.runs:
            verdict = "ok" if run.ok else f"{len(run.findings)} findings"
            out(f"  run {run.run_id:>4}  {run.outcome or 'interrupted':<11} "
                f"{run.passes:>4} passes {run.states:>4} state changes "
                f"{run.resumes} resumes  {verdict}")
        for finding in result.all_findings:
            where = "" if finding.run_id is None else f"run {finding.run_id}: "
            out(f"  FINDING [{finding.check}] {where}{finding.detail}")
        out("verified: every check passed" if result.ok
            else f"NOT VERIFIED: {len(result.all_findings)} findings")
    return EXIT_OK if result.ok else EXIT_ENDED_OTHERWISE


def _list_runs(reader: RecordsReader, *, as_json: bool) -> None:
    runs = reader.list_runs()
    if as_json:
        out(json.dumps([to_plain(r) for r in runs], indent=2, default=str))
        return
    out(f"{'id':>4}  {'recipe':<22} {'serial':<12} {'operator':<12} {'started':<19}  outcome")
    for r in runs:
        outcome = r.outcome.value if r.outcome else "interrupted?"
        out(f"{r.id:>4}  {r.recipe_name:<22} {r.preform_serial or '-':<12} "
            f"{r.operator:<12} {_when(r.started_at):<19}  {outcome}")


def _show_run(detail: RunDetail) -> None:
    r = detail.run
    out(f"run {r.id}: {r.recipe_name} ({r.recipe_hash[:12]}) on {r.line}/{r.machine}")
    out(f"  operator {r.operator}, serial {r.preform_serial or '-'}, "
        f"bait rod {r.bait_rod_lot or '-'}, precursor {r.precursor_lot or '-'}")
    out(f"  started {_when(r.started_at)}, ended {_when(r.ended_at)}, "
        f"outcome {r.outcome.value if r.outcome else 'none (interrupted)'}")
    out(f"  passes: {len(detail.passes)}")
    for p in detail.passes:
        out(f"    layer {p.layer} pass {p.pass_index}: diameter {p.diameter_mm} mm, "
            f"deposited {p.deposited_g} g, {p.duration_s} s")
    out(f"  state changes: {len(detail.states)}")
    for s in detail.states:
        out(f"    {_when(s.t)} {s.from_state} -> {s.to_state} ({s.reason or ''})")
    out(f"  alarms: {len(detail.alarms)}, commands: {len(detail.commands)}, "
        f"setpoints: {len(detail.setpoints)}")
    for a in detail.alarms:
        out(f"    {_when(a.t)} {to_plain(a)}")
    for c in detail.commands:
        out(f"    {_when(c.t)} {to_plain(c)}")


def _write_report_files(reader: RecordsReader, detail: RunDetail, *, html: Path | None,
                        csv_dir: Path | None) -> int:
    """The report as files: the printable HTML page and / or the CSV of samples and passes."""
    from controller.service.reports.html_page import report_html  # noqa: PLC0415 - only here

    run_id = detail.run.id
    samples = reader.telemetry(run_id)
    try:
        if html is not None:
            html.write_text(report_html(detail, samples, generated_at=time.time()),
                            encoding="utf-8")
            out(f"wrote {html}")
        if csv_dir is not None:
            csv_dir.mkdir(parents=True, exist_ok=True)
            path = csv_dir / samples_filename(run_id)
            with path.open("w", encoding="utf-8", newline="") as f:
                rows = write_samples_csv(samples, f, detail.run.started_at)
            out(f"wrote {path} ({rows} samples)")
            path = csv_dir / passes_filename(run_id)
            with path.open("w", encoding="utf-8", newline="") as f:
                rows = write_passes_csv(detail.passes, f)
            out(f"wrote {path} ({rows} passes)")
    except OSError as exc:
        err(f"cannot write the report: {exc}")
        return EXIT_INVALID
    return EXIT_OK


def print_report(report: dict[str, Any]) -> None:
    out(f"Run report {report['run']}: {report['recipe']} ({report['recipe_sha256'][:12]})")
    for key in ("line", "machine", "operator", "preform_serial", "bait_rod_lot",
                "precursor_lot", "started", "ended", "duration_s", "outcome", "first_out",
                "passes", "final_diameter_mm", "deposited_g"):
        out(f"  {key:<18} {report[key] if report[key] is not None else '-'}")
    out(f"  {'alarms raised':<18} {', '.join(report['alarms_raised']) or 'none'}")
    out("  commands:")
    for c in report["operator_commands"]:
        verdict = "accepted" if c["accepted"] else f"refused: {c['reason']}"
        out(f"    {c['t']} {c['user']:<10} {c['command']:<10} {verdict}")
    _print_layers(report["layers"])
    out("  passes:")
    out(f"    {'layer':>5} {'pass':>5} {'diameter mm':>12} {'glass g':>9} {'time s':>8}")
    for p in report["pass_table"]:
        out(f"    {p['layer']:>5} {p['pass']:>5} {p['diameter_mm'] or '-':>12} "
            f"{p['deposited_g'] or '-':>9} {p['duration_s'] or '-':>8}")


def _print_layers(layers: list[dict[str, Any]]) -> None:
    """The per-layer tables: the geometry the layers reached, then how the loop got there."""
    out("  layers, geometry (mm; passes run/planned+extra):")
    out(f"    {'':<12} {'':>8}  {'outer diameter (boundary)':<42}  {'radial thickness'}")
    out(f"    {'layer':<12} {'passes':>8}  {'planned':>8} {'measured':>8} {'source':<8} "
        f"{'error':>7} {'error %':>7}  {'planned':>9} {'measured':>8} {'error %':>7}")
    for x in layers:
        passes = f"{x['passes']}/{_num(x['planned_passes'], 'd')}+{x['extra_passes']}"
        name = x["name"] if x["complete"] else f"{x['name']}*"
        out(f"    {name:<12} {passes:>8}  {_num(x['planned_boundary_mm'], '.3f'):>8} "
            f"{_num(x['measured_boundary_mm'], '.3f'):>8} {x['boundary_source'] or '-':<8} "
            f"{_num(x['boundary_error_mm'], '+.3f'):>7} {_num(x['boundary_error_pct'], '+.2f'):>7}"
            f"  {_num(x['planned_thickness_mm'], '.3f'):>9} "
            f"{_num(x['measured_thickness_mm'], '.3f'):>8} "
            f"{_num(x['thickness_error_pct'], '+.2f'):>7}")
    out("  layers, process (flows x recipe: mean (range); passes limited by the trims):")
    out(f"    {'':<12} {'':<21} {'':<21} {'':<15} {'':>7} {'':>6}  {'composition %'}")
    out(f"    {'layer':<12} {'SiCl4 scale':<21} {'dopant scale':<21} {'traverse mm/min':<15} "
        f"{'limited':>7} {'step %':>6}  {'mean':>6} {'worst':>6}")
    for x in layers:
        out(f"    {x['name']:<12} {_span(x['sicl4_scale'], '.3f'):<21} "
            f"{_span(x['dopant_scale'], '.3f'):<21} {_range(x['traverse_mm_min']):<15} "
            f"{x['limited_passes']:>3}/{x['passes']:<3} "
            f"{_num(x['largest_step_pct'], '.1f'):>6}  "
            f"{_num(x['composition_error_mean_pct'], '+.2f'):>6} "
            f"{_num(x['composition_error_worst_pct'], '+.2f'):>6}")
    if any(not x["complete"] for x in layers):
        out("    * the layer did not run all its passes")


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _span(span: dict[str, float] | None, spec: str) -> str:
    if span is None:
        return "-"
    return f"{span['mean']:{spec}} ({span['low']:{spec}}-{span['high']:{spec}})"


def _range(span: dict[str, float] | None) -> str:
    return "-" if span is None else f"{span['low']:.1f}-{span['high']:.1f}"
