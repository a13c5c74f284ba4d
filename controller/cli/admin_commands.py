"""The line PC's admin commands, on its own files (no service needed):
    povd users add NAME --role ROLE | passwd NAME | role NAME ROLE | remove NAME | list
    povd audit verify | audit list [--last N] [--json]
Each user change is appended to the audit trail as done by ``local:<os user>``. Owns where
the users file and the audit trail live in the data directory."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher

from controller.cli.output import EXIT_ERROR, EXIT_INVALID, EXIT_OK, err, out
from controller.records.audit import AuditError, AuditTrail, cmd_audit_verify
from controller.service.roles import Role
from controller.service.users import UserError, UserStore


def users_path(data_dir: Path) -> Path:
    return data_dir / "users.json"


def audit_path(data_dir: Path) -> Path:
    return data_dir / "audit.sqlite3"


def add_admin_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`povd users ...` and `povd audit ...`; each sets `admin_command`."""
    users = subparsers.add_parser("users", help="manage the line PC's users")
    users.set_defaults(admin_command="users")
    users_sub = users.add_subparsers(dest="users_action", required=True)
    add = users_sub.add_parser("add", help="add a user")
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=[r.value for r in Role])
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from the first line of stdin")
    passwd = users_sub.add_parser("passwd", help="set a user's password")
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true")
    role = users_sub.add_parser("role", help="change a user's role")
    role.add_argument("name")
    role.add_argument("role", choices=[r.value for r in Role])
    remove = users_sub.add_parser("remove", help="remove a user (their sessions end)")
    remove.add_argument("name")
    listing = users_sub.add_parser("list", help="list users and roles")
    listing.add_argument("--json", action="store_true")

    audit = subparsers.add_parser("audit", help="the audit trail")
    audit.set_defaults(admin_command="audit")
    audit_sub = audit.add_subparsers(dest="audit_action", required=True)
    audit_sub.add_parser("verify", help="check the hash chain (exit 1 if tampered)")
    audit_list = audit_sub.add_parser("list", help="print the newest entries")
    audit_list.add_argument("--last", type=int, default=50)
    audit_list.add_argument("--json", action="store_true")


def _actor() -> str:
    return f"local:{getpass.getuser()}"


def _new_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass(f"new password for {args.name}: ")
    if getpass.getpass("again: ") != first:
        raise UserError(args.name, "the passwords differ")
    return first


def _users(args: argparse.Namespace, store: UserStore, trail: AuditTrail) -> int:
    action = args.users_action
    if action == "list":
        users = store.list()
        if args.json:
            out(json.dumps([{"name": u.name, "role": u.role.value} for u in users], indent=2))
        elif not users:
            out(f"no users yet ({store.path}): povd users add NAME --role ROLE")
        for user in [] if args.json else users:
            out(f"{user.name:<32} {user.role.value}")
        return EXIT_OK
    detail: dict[str, Any] = {"name": args.name}
    try:
        if action == "add":
            detail["role"] = args.role
            store.add(args.name, _new_password(args), args.role)
        elif action == "passwd":
            store.set_password(args.name, _new_password(args))
        elif action == "role":
            detail["role"] = args.role
            store.set_role(args.name, args.role)
        else:
            store.remove(args.name)
    except UserError as exc:
        trail.append(_actor(), f"users.{action}", detail, "failed", exc.reason)
        err(f"povd users {action}: {exc}")
        return EXIT_INVALID
    trail.append(_actor(), f"users.{action}", detail, "ok")
    out(f"users {action} {args.name}: done")
    return EXIT_OK


def _audit_list(path: Path, last: int, as_json: bool) -> int:
    if not path.exists():
        out(f"no audit trail at {path}")
        return EXIT_OK
    with AuditTrail(path) as trail:
        entries = trail.entries()[-last:] if last > 0 else []
    if as_json:
        out(json.dumps([e.to_json() for e in entries], indent=2))
        return EXIT_OK
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.t))
        why = f" ({e.reason})" if e.reason else ""
        out(f"{e.seq:>6} {when} {e.user:<20} {e.action:<14} {e.outcome}{why} "
             f"{json.dumps(e.detail)}")
    return EXIT_OK


def run_admin_command(args: argparse.Namespace, data_dir: Path, *,
                      hasher: PasswordHasher | None = None) -> int:
    """`povd users ...` / `povd audit ...` on data_dir's users.json and audit.sqlite3.

    `hasher` is for tests (cheap parameters); the default is UserStore's."""
    try:
        if args.admin_command == "audit":
            if args.audit_action == "verify":
                return cmd_audit_verify(audit_path(data_dir))
            return _audit_list(audit_path(data_dir), args.last, args.json)
        with AuditTrail(audit_path(data_dir)) as trail:
            return _users(args, UserStore(users_path(data_dir), hasher=hasher), trail)
    except (AuditError, UserError) as exc:
        err(f"povd {args.admin_command}: {exc}")
        return EXIT_ERROR
