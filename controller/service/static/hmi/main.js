"use strict";
// The operator's screen: the machine at a glance, the commands the user may give now (the
// others disabled with the service's reason), alarms with acknowledge and shelve, trends.
(() => {
  const { el, setText, fmt } = HMI;
  const PRIORITY_RANK = { critical: 0, high: 1, medium: 2, low: 3 };
  const PRIORITY_ICON = { critical: "✖", high: "▲", medium: "◆", low: "●" };
  const ALARMED = new Set(["unack_active", "ack_active", "rtn_unack"]);
  const FINAL_STATES = new Set(["Complete", "Stopped", "Aborted", "Idle"]);
  let line = null;
  let status = null;
  let plan = null; // the running run's plan view (GET /hmi/api/runs/{id}/plan)
  let planRun = null;
  let measured = {}; // "step/layer" -> the last pass's diameter
  let passWall = []; // [process s, wall s] of recent passes: the process clock's pace
  let trends = null;
  let validatedText = null;

  // -- one glance ------------------------------------------------------------------------------
  function renderStatus(s) {
    status = s;
    setText("machine", `${s.line}/${s.machine}`);
    setText("state", s.state);
    document.getElementById("state").dataset.state = s.state;
    setText("mode", s.mode);
    renderCommands(s.commands);
    renderRun(s);
    renderTelemetry(s.telemetry, s.commanded);
    renderInterlocks(s);
    renderAlarms(s.alarms, s.commands);
    if (s.run_id !== planRun) loadPlan(s.run_id);
  }

  function renderCommands(commands) {
    for (const button of document.querySelectorAll("#commands button[data-command]")) {
      const why = commands[button.dataset.command];
      button.disabled = Boolean(why);
      const reason = document.querySelector(`[data-why="${button.dataset.command}"]`);
      reason.textContent = why || "";
      button.title = why || "";
    }
    renderTrims(commands.trim);
  }

  function currentLayer() {
    if (!plan || !status || !status.cursor) return null;
    return plan.layers.find((l) => l.step === status.cursor.step
      && l.layer === status.cursor.layer) || null;
  }

  function renderTrims(roleRefusal) {
    const layer = status && status.layer && currentLayer();
    const why = roleRefusal || (layer ? null : "trims apply during a deposit layer");
    document.getElementById("cmd-trim").disabled = Boolean(why);
    setText("trim-why", why || "");
    const power = document.getElementById("trim-power");
    const traverse = document.getElementById("trim-traverse");
    power.disabled = traverse.disabled = Boolean(why);
    if (layer) {
      [power.min, power.max] = layer.power_trim_kw;
      [traverse.min, traverse.max] = layer.traverse_trim_pct;
      setText("trim-power-bounds", `within [${layer.power_trim_kw.join(", ")}] kW`);
      setText("trim-traverse-bounds", `within [${layer.traverse_trim_pct.join(", ")}] %`);
    } else {
      setText("trim-power-bounds", "");
      setText("trim-traverse-bounds", "");
    }
  }

  function totalPasses() {
    return plan ? plan.layers.reduce((sum, l) => sum + l.passes, 0) : null;
  }

  function renderRun(s) {
    const run = plan && plan.run;
    setText("recipe", run ? run.recipe_name : (s.run_id ? "…" : "no run"));
    setText("run-id", s.run_id ? `run ${s.run_id}` : "");
    setText("serial", (run && run.preform_serial) || "—");
    setText("op", s.op || "—");
    const layer = s.layer;
    setText("layer", layer ? `${layer.layer + 1}: ${layer.label} (pass ${layer.done} of ${layer.passes})` : "—");
    const done = s.cursor ? s.cursor.passes_done : null;
    const total = totalPasses();
    setText("passes-done", done === null ? "—" : String(done));
    setText("passes-total", total === null ? "—" : String(total));
    const bar = document.getElementById("progress");
    bar.value = total && done !== null ? done / total : 0;
    setText("eta", eta(s));
    const safe = document.getElementById("making-safe");
    safe.hidden = !s.making_safe;
    safe.textContent = s.making_safe ? `⚠ ${s.making_safe}` : "";
  }

  // Remaining process time from the forecast, paced by what the passes took on the wall
  // clock (a simulated line runs faster than real time; a real one drifts from the forecast).
  function eta(s) {
    if (!plan || !s.cursor || FINAL_STATES.has(s.state)) return "—";
    const steps = plan.forecast.steps;
    let remaining = 0;
    for (const step of steps) if (step.index > s.cursor.step) remaining += step.duration_s;
    const perPass = plan.forecast.layers.map((l) => l.pass_duration_s);
    plan.layers.forEach((layer, i) => {
      if (layer.step !== s.cursor.step) return;
      if (layer.layer > s.cursor.layer) remaining += layer.passes * perPass[i];
      if (layer.layer === s.cursor.layer) {
        remaining += Math.max(0, layer.passes - s.cursor.layer_pass) * perPass[i];
      }
    });
    const pace = passWall.length ? passWall.reduce((a, p) => a + p[1] / p[0], 0) / passWall.length : 1;
    const wallS = remaining * pace;
    const at = new Date(Date.now() + wallS * 1000);
    return `${at.toLocaleTimeString()} (in ${wallS < 90 ? `${Math.round(wallS)} s` : `${Math.round(wallS / 60)} min`})`;
  }

  function renderTelemetry(t, commanded) {
    if (!t) return;
    const rf = t.rf || {};
    setText("rf-forward", fmt(rf.forward_kw));
    setText("rf-reflected", fmt(rf.reflected_kw, 2));
    setText("rf-setpoint", fmt(commanded && commanded.rf_on ? commanded.power_kw : 0));
    setText("plasma", rf.plasma_lit ? "● lit" : "○ off");
    setText("rod-temp", fmt(t.safety && t.safety.rod_temperature_c, 0));
    const body = document.getElementById("gases");
    const rows = [];
    for (const [name, reading] of Object.entries(t.mfcs || {})) {
      const gas = line && line.mfcs[name] ? line.mfcs[name].gas : name;
      const set = commanded && commanded.flows_slpm ? commanded.flows_slpm[name] : undefined;
      const off = set !== undefined && Math.abs(reading.mass_slpm - set) > 0.05 * (line ? line.mfcs[name].full_scale_slpm : 1);
      rows.push(el("tr", { class: off ? "deviates" : "", "data-mfc": name },
        el("td", {}, gas), el("td", { class: "num" }, fmt(reading.mass_slpm, 2), off ? " ⚠" : ""),
        el("td", { class: "num" }, set === undefined ? "—" : fmt(set, 2))));
    }
    body.replaceChildren(...rows);
    const axes = t.axes || {};
    setText("spindle", fmt(axes.spindle && axes.spindle.velocity, 0));
    const carriage = axes.carriage || {};
    setText("carriage", fmt(carriage.position_mm, 0));
    const v = carriage.velocity || 0;
    setText("carriage-dir", carriage.moving ? (v > 0 ? "→ towards B" : v < 0 ? "← towards A" : "") : "stopped");
    setText("torch-slide", fmt(axes.torch_slide && axes.torch_slide.position_mm, 1));
    setText("diameter", fmt(t.gauge && t.gauge.valid ? t.gauge.diameter_mm : null, 2));
  }

  // Each input by its level now (the status's conditions), its latched trip alarm beside it:
  // a trip stays latched and marked first-out after its input has returned, until a clear.
  function renderInterlocks(s) {
    if (!line) return;
    const alarms = Object.fromEntries((s.alarms || []).map((a) => [a.id, a]));
    const conditions = s.conditions ? new Set(s.conditions) : null;
    const safety = (s.telemetry && s.telemetry.safety) || {};
    const items = line.interlocks.map((lock) => {
      const alarm = alarms[lock.id];
      const alarmed = Boolean(alarm && ALARMED.has(alarm.state));
      const tripped = conditions ? conditions.has(lock.id) : alarmed && alarm.state !== "rtn_unack";
      const latched = !tripped && alarmed;
      const firstOut = Boolean((alarm && alarm.first_out) || s.trip_cause === lock.id);
      const value = safety[lock.signal];
      const shown = typeof value === "number" ? ` (${fmt(value, 1)})` : "";
      const cls = tripped ? "bad" : latched ? "latched" : "good";
      const label = tripped ? "✖ TRIPPED" : latched ? "◐ returned, latched" : "✔ OK";
      return el("li", { class: cls, "data-interlock": lock.id, "data-first-out": firstOut ? "yes" : null },
        el("span", { class: "mark" }, label), " ", lock.description, shown,
        firstOut ? el("span", { class: "first-out" }, " ◀ FIRST OUT") : null);
    });
    const heartbeat = heartbeatItem(safety, conditions);
    document.getElementById("interlocks").replaceChildren(...items, heartbeat);
  }

  // The safety PLC's own watch on this controller: a latched heartbeat loss means the PLC
  // acted alone (RF enable, precursor valve and heaters off) and holds the line so until it
  // is reset; no interlock of the table shows it.
  function heartbeatItem(safety, conditions) {
    const latched = conditions ? conditions.has("heartbeat_latched") : Boolean(safety.heartbeat_latched);
    const ok = !latched && safety.heartbeat_ok !== false;
    return el("li", { class: ok ? "good" : "bad", "data-interlock": "plc_heartbeat" },
      el("span", { class: "mark" }, ok ? "✔ OK" : latched ? "✖ LATCHED" : "✖ LOST"),
      " safety PLC heartbeat", latched ? " (the PLC acted alone until reset)" : "");
  }

  function renderAlarms(alarms, commands) {
    const sorted = [...(alarms || [])].sort((a, b) => PRIORITY_RANK[a.priority] - PRIORITY_RANK[b.priority]);
    setText("alarm-count", sorted.length ? `(${sorted.length})` : "(none)");
    const items = sorted.map((alarm) => {
      const unacked = alarm.state === "unack_active" || alarm.state === "rtn_unack";
      const ack = el("button", {
        class: "ack", type: "button", disabled: Boolean(commands.ack) || !unacked,
        title: commands.ack || (unacked ? "" : "already acknowledged"),
        onclick: () => acknowledge(alarm.id),
      }, "✓ Acknowledge");
      const shelve = el("button", {
        class: "shelve", type: "button", disabled: Boolean(commands.shelve),
        title: commands.shelve || "", onclick: () => shelveAlarm(alarm.id),
      }, "Shelve…");
      return el("li", { class: `alarm ${alarm.priority} ${alarm.state}`, "data-alarm": alarm.id },
        el("span", { class: "icon", "aria-hidden": "true" }, PRIORITY_ICON[alarm.priority] || "!"),
        el("b", {}, ` ${alarm.priority.toUpperCase()} `),
        alarm.message,
        alarm.value !== null && alarm.value !== undefined ? ` [${typeof alarm.value === "number" ? fmt(alarm.value, 2) : alarm.value}]` : "",
        el("span", { class: "alarm-state" }, ` ${alarm.state.replace("_", " ")}`),
        alarm.first_out ? el("span", { class: "first-out" }, " ◀ FIRST OUT") : null,
        " ", ack, " ", shelve,
        commands.ack ? el("span", { class: "why" }, commands.ack) : null);
    });
    document.getElementById("alarms").replaceChildren(...items);
  }

  async function acknowledge(id) {
    HMI.report(await HMI.command("ack", { alarm_id: id }), `alarm ${id} acknowledged`);
  }

  async function shelveAlarm(id) {
    const dialog = document.getElementById("shelve-dialog");
    setText("shelve-alarm", id);
    dialog.showModal();
    dialog.addEventListener("close", async () => {
      if (dialog.returnValue !== "yes") return;
      const minutes = Number(document.getElementById("shelve-minutes").value);
      const reason = document.getElementById("shelve-reason").value;
      HMI.report(await HMI.command("shelve", { alarm_id: id, for_s: minutes * 60, reason }),
        `alarm ${id} shelved for ${minutes} min`);
    }, { once: true });
  }

  // -- the run's plan, measured layers, runs ----------------------------------------------------
  async function loadPlan(runId) {
    planRun = runId;
    plan = null;
    measured = {};
    passWall = [];
    renderLayers();
    if (!runId) return;
    const [view, detail] = await Promise.all([
      HMI.request("GET", `/hmi/api/runs/${runId}/plan`),
      HMI.request("GET", `/api/runs/${runId}`),
    ]);
    if (planRun !== runId || !view.ok) return;
    plan = view.data;
    if (!FINAL_STATES.has(status ? status.state : "Idle")) loadTrendHistory(runId);
    for (const p of (detail.ok && detail.data.passes) || []) {
      measured[`${p.step}/${p.layer}`] = p.diameter_mm;
    }
    renderLayers();
    loadRuns();
  }

  function renderLayers() {
    const rows = (plan ? plan.layers : []).map((layer) => {
      const got = measured[`${layer.step}/${layer.layer}`];
      return el("tr", {},
        el("td", {}, layer.label), el("td", { class: "num" }, fmt(layer.target_diameter_mm, 2)),
        el("td", { class: "num" }, got === undefined ? "—" : fmt(got, 2)));
    });
    document.getElementById("layers").replaceChildren(...rows);
  }

  function onPass(p) {
    if (status && status.cursor) measured[`${status.cursor.step}/${p.layer}`] = p.diameter_mm;
    const wall = p.ended_wall - p.started_wall;
    if (p.duration_s > 0 && wall > 0) passWall = [...passWall.slice(-4), [p.duration_s, wall]];
    renderLayers();
  }

  async function loadRuns() {
    const result = await HMI.request("GET", "/api/runs");
    if (!result.ok) return;
    const runs = [...result.data].sort((a, b) => b.id - a.id).slice(0, 8);
    document.getElementById("runs").replaceChildren(...runs.map((run) => el("li", { "data-run": run.id },
      `#${run.id} ${run.recipe_name} · ${run.preform_serial || "no serial"} · ${run.outcome || "running"} `,
      el("a", { href: `/api/runs/${run.id}/report.html`, target: "_blank", class: "report" }, "report"), " ",
      el("a", { href: `/api/runs/${run.id}/samples.csv`, class: "csv" }, "samples.csv"), " ",
      el("a", { href: `/api/runs/${run.id}/passes.csv`, class: "csv" }, "passes.csv"))));
  }

  // -- commands --------------------------------------------------------------------------------
  async function runCommand(name) {
    if (name === "start") return openStart();
    if (name === "abort" && !(await HMI.confirmDialog("Abort the run? RF off at once, gases to their safe state."))) return;
    HMI.report(await HMI.command(name));
  }

  async function openStart() {
    const select = document.getElementById("start-recipe");
    const names = await HMI.request("GET", "/hmi/api/recipes");
    select.replaceChildren(el("option", { value: "" }, "— choose —"),
      ...((names.ok && names.data) || []).map((n) => el("option", { value: n }, n)));
    validatedText = null;
    document.getElementById("start-confirm").disabled = true;
    document.getElementById("start-validation").replaceChildren();
    document.getElementById("start-file").value = "";
    document.getElementById("start-dialog").showModal();
  }

  async function validate(text) {
    validatedText = null;
    document.getElementById("start-confirm").disabled = true;
    const box = document.getElementById("start-validation");
    box.replaceChildren("validating…");
    const result = await HMI.request("POST", "/api/recipes/validate", { text });
    if (!result.ok) return box.replaceChildren(`not validated: ${(result.data && result.data.detail) || result.status}`);
    const reply = result.data;
    if (!reply.valid) {
      return box.replaceChildren(el("p", { class: "refused" }, "✖ The recipe is not valid:"),
        el("ul", { id: "start-errors" }, ...reply.errors.map((e) => el("li", {},
          el("b", {}, e.field || "recipe"), e.line ? ` (line ${e.line})` : "", `: ${e.reason}`))));
    }
    const f = reply.forecast;
    box.replaceChildren(el("p", { class: "ok" }, `✔ ${reply.name}: valid`),
      el("ul", { id: "start-forecast" },
        el("li", {}, `${f.passes} passes in ${f.layers.length} layers`),
        el("li", {}, `about ${Math.round(f.duration_s / 60)} min of process time`),
        el("li", {}, `final diameter ${fmt(f.final_diameter_mm, 2)} mm from ${fmt(f.start_diameter_mm, 1)} mm`),
        el("li", {}, `SiCl4 ${fmt(f.sicl4_g, 0)} g, glass ${fmt(f.deposited_g, 0)} g`)));
    validatedText = text;
    document.getElementById("start-confirm").disabled = false;
  }

  async function pickShipped() {
    const name = document.getElementById("start-recipe").value;
    if (!name) return;
    const result = await HMI.request("GET", `/hmi/api/recipes/${encodeURIComponent(name)}`);
    if (result.ok) validate(result.data.text);
  }

  async function pickFile() {
    const file = document.getElementById("start-file").files[0];
    if (file) validate(await file.text());
  }

  async function confirmStart(event) {
    event.preventDefault();
    const form = document.getElementById("start-form");
    if (!form.reportValidity() || !validatedText) return;
    const args = {
      recipe_text: validatedText,
      recipe_path: document.getElementById("start-recipe").value || "upload",
      preform_serial: document.getElementById("start-serial").value,
      bait_rod_lot: document.getElementById("start-bait-lot").value || null,
      precursor_lot: document.getElementById("start-precursor-lot").value || null,
    };
    document.getElementById("start-dialog").close();
    HMI.report(await HMI.command("start", args), "run started");
  }

  function openTrims() {
    document.getElementById("trim-dialog").showModal();
  }

  async function applyTrims(event) {
    event.preventDefault();
    if (!document.getElementById("trim-form").reportValidity()) return;
    document.getElementById("trim-dialog").close();
    const power = document.getElementById("trim-power").value;
    const traverse = document.getElementById("trim-traverse").value;
    const args = {};
    if (power !== "") args.power_kw = Number(power);
    if (traverse !== "") args.traverse_pct = Number(traverse);
    HMI.report(await HMI.command("trim", args), "trims applied");
  }

  // -- trends ----------------------------------------------------------------------------------
  function makeTrends() {
    if (trends || !line) return;
    const gases = Object.values(line.mfcs).map((m) => m.gas);
    trends = {
      power: new Trend(document.getElementById("trend-power"), "RF power", ["forward kW", "reflected kW"], "kW"),
      flows: new Trend(document.getElementById("trend-flows"), "Gas flows", gases, "slpm"),
      diameter: new Trend(document.getElementById("trend-diameter"), "Preform diameter", ["gauge mm", "layer plan mm"], "mm"),
    };
  }

  // Each trend's values in one sample (the feed's, or a recorded one: the same shape).
  function trendValues(t, planned) {
    const rf = t.rf || {};
    const mfcs = t.mfcs || {};
    return {
      power: [rf.forward_kw, rf.reflected_kw],
      flows: Object.keys(line.mfcs).map((m) => (mfcs[m] ? mfcs[m].mass_slpm : null)),
      diameter: [t.gauge && t.gauge.valid ? t.gauge.diameter_mm : null, planned],
    };
  }

  function onTelemetry(t) {
    if (!trends) return;
    const now = Date.now() / 1000;
    const layer = currentLayer();
    const values = trendValues(t, layer ? layer.target_diameter_mm : null);
    for (const [name, trend] of Object.entries(trends)) trend.push(now, values[name]);
  }

  // A page opened mid-run draws the run's last minutes from its records at once.
  async function loadTrendHistory(runId) {
    const result = await HMI.request("GET", `/hmi/api/runs/${runId}/trend`);
    if (!result.ok || planRun !== runId || !trends || !result.data.length) return;
    const rows = result.data.map((r) => trendValues(r, null));
    const times = result.data.map((r) => r.t);
    for (const [name, trend] of Object.entries(trends)) {
      const columns = trend.names.map((_, i) => rows.map((v) => (v[name][i] === undefined ? null : v[name][i])));
      trend.prepend(times, columns);
    }
  }

  HMI.onLogin(async () => {
    const result = await HMI.request("GET", "/hmi/api/line");
    if (result.ok) line = result.data;
    makeTrends();
    if (planRun && status && !FINAL_STATES.has(status.state)) loadTrendHistory(planRun);
    loadRuns();
  });
  HMI.on("status", renderStatus);
  HMI.on("telemetry", onTelemetry);
  HMI.on("pass", onPass);
  HMI.on("state", (item) => { if (FINAL_STATES.has(item.to)) loadRuns(); });

  document.addEventListener("DOMContentLoaded", () => {
    for (const button of document.querySelectorAll("#commands button[data-command]")) {
      button.addEventListener("click", () => runCommand(button.dataset.command));
    }
    document.getElementById("start-recipe").addEventListener("change", pickShipped);
    document.getElementById("start-file").addEventListener("change", pickFile);
    document.getElementById("start-confirm").addEventListener("click", confirmStart);
    document.getElementById("cmd-trim").addEventListener("click", openTrims);
    document.getElementById("trim-apply").addEventListener("click", applyTrims);
  });
})();
