"""``iron-runtime``: tokens, budgets, usage, the offline demo, and router mode."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from iron_sdk.config import RuntimeConfig
from iron_sdk.errors import MICRO, IronCageError, usd

_DURATION = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise argparse.ArgumentTypeError("use a duration like 90s, 30m, 12h or 30d")
    return int(match[1]) * _UNITS[match[2]]


def _scope(name: str) -> str:
    """``research-bot`` → ``agent:research-bot``; ``team:x`` and ``global`` as given."""
    return name if ":" in name or name == "global" else f"agent:{name}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iron-runtime", description=__doc__)
    parser.add_argument("--mode", choices=["router"], help="run the runtime as a server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--config", help="router config (LiteLLM model_list YAML)")
    parser.add_argument("--workers", type=int, default=1,
                        help="router worker processes on one port (share a Redis or "
                             "SQLite ledger; breakers are per worker)")
    sub = parser.add_subparsers(dest="command")

    token = sub.add_parser("token", help="IC tokens").add_subparsers(dest="action",
                                                                     required=True)
    issue = token.add_parser("issue", help="issue a signed IC token for an agent")
    issue.add_argument("--agent", required=True)
    issue.add_argument("--expires-in", type=_duration, help="e.g. 30d (default: no expiry)")
    issue.add_argument("--scope", action="append", default=[],
                       help="extra budget scope the agent is charged to, e.g. team:search")
    issue.add_argument("--admin", action="store_true",
                       help="an admin token (the router's /v1/admin API), not an agent's")
    _add_operator_parsers(sub, token)

    secret = sub.add_parser("secret", help="signing keys of IC tokens").add_subparsers(
        dest="action", required=True)
    rotate = secret.add_parser("rotate", help="make a new signing key; tokens signed with "
                                              "the previous one verify until the grace ends")
    rotate.add_argument("--grace", type=_duration, default=_duration("7d"),
                        help="how long the previous key still verifies, e.g. 12h or 7d "
                             "(default 7d; 0s: immediately refused)")

    budget = sub.add_parser("budget", help="budgets in the ledger").add_subparsers(
        dest="action", required=True)
    bset = budget.add_parser("set", help="set a budget (agent name, team:NAME or global)")
    bset.add_argument("name")
    bset.add_argument("--usd", type=float, required=True,
                      help="limit in USD (0 or negative: remove)")
    bset.add_argument("--period", choices=["total", "daily", "weekly", "monthly"],
                      default="total", help="the limit applies per calendar period")
    bset.add_argument("--tz", default="UTC", help="time zone of the periods, e.g. Europe/Paris")
    bshow = budget.add_parser("show", help="show budgets")
    bshow.add_argument("name", nargs="*")
    bshow.add_argument("--json", action="store_true")
    breset = budget.add_parser("reset", help="zero what a scope has spent")
    breset.add_argument("name")

    usage = sub.add_parser("usage", help="spend per agent and model")
    usage.add_argument("--json", action="store_true")

    sub.add_parser("demo", help="offline demo against a local stand-in provider")
    _add_audit_parser(sub)
    dash = sub.add_parser("dashboard", help="the dashboard on loopback, for library mode "
                                            "(the router serves it at /ui)")
    dash.add_argument("--port", type=int, default=8090)
    return parser


def _add_audit_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    audit = sub.add_parser("audit", help="the tamper-evident audit log").add_subparsers(
        dest="action", required=True)
    verify = audit.add_parser("verify", help="check the MAC chain (exit 1 at the first bad "
                                             "line)")
    verify.add_argument("files", nargs="*", metavar="FILE",
                        help="files in the order written (default: the whole rotated log)")
    tail = audit.add_parser("tail", help="the latest events, optionally following")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new events")
    tail.add_argument("-n", "--lines", type=int, default=20, help="events shown (default 20)")
    tail.add_argument("--agent", help="only this agent's events")
    tail.add_argument("--type", help="only events of this type, e.g. call_blocked")
    tail.add_argument("--since", type=_since, metavar="TIME",
                      help="only events since TIME: 15m, 2h, 1d ago, or an ISO date/time")
    tail.add_argument("--json", action="store_true", help="one JSON event per line")


def _since(text: str) -> float:
    """``15m`` (ago), ``2026-12-01T14:00``, or epoch seconds → a timestamp."""
    import time
    from datetime import datetime

    if _DURATION.match(text):
        return time.time() - _duration(text)
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(
            "use a duration ago (15m, 2h), an ISO date/time or epoch seconds") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except IronCageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.mode == "router":
        from iron_router.server import serve

        return serve(host=args.host, port=args.port, config_path=args.config,
                     workers=args.workers)
    if args.command == "dashboard":
        return _dashboard(args.port)
    if args.command == "demo":
        from iron_sdk.demo import main as demo

        return demo()
    config = RuntimeConfig()
    if args.command == "audit":
        return _audit(args, config)
    if args.command == "token" and args.action == "issue":
        from iron_sdk.identity import issue_token

        token = issue_token(config.home, args.agent, expires_in_s=args.expires_in,
                            scopes=tuple(args.scope), admin=args.admin)
        _record_issued(config, token)
        print(token)
        return 0
    if args.command == "secret":
        return _rotate(config, grace_s=args.grace)
    if args.command in ("policy", "agent", "token"):
        return _operator_command(args, config)
    if args.command not in ("budget", "usage"):
        build_parser().print_help()
        return 0
    from iron_sdk.ledger import open_ledger

    ledger = open_ledger(config.ledger_url())
    try:
        if args.command == "usage":
            return _usage(ledger, as_json=args.json)
        if args.action == "set":
            limit = round(args.usd * MICRO) if args.usd > 0 else None
            try:
                ledger.set_limit(_scope(args.name), limit, period=args.period, tz=args.tz)
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            per = "" if args.period == "total" else f" {args.period} ({args.tz})"
            print(f"{_scope(args.name)}: limit "
                  f"{'removed' if limit is None else f'${args.usd:.6f}{per}'}")
        elif args.action == "reset":
            ledger.reset(_scope(args.name))
            print(f"{_scope(args.name)}: spent reset to $0")
        else:
            return _budgets(ledger, [_scope(n) for n in args.name], as_json=args.json)
        return 0
    finally:
        ledger.close()


def _dashboard(port: int) -> int:
    """``iron-runtime dashboard``: reads this home's ledger and audit log (``[router]``)."""
    try:
        from iron_router.dashboard.standalone import serve
    except ModuleNotFoundError as exc:
        print(f"error: the dashboard needs the router extra (pip install 'iron-sdk[router]'): "
              f"{exc.name} is missing", file=sys.stderr)
        return 2
    return serve(port)


def _rotate(config: RuntimeConfig, *, grace_s: float) -> int:
    import time

    from iron_sdk.identity import KEYRING, rotate_key

    key = rotate_key(config.home, grace_s=grace_s)
    until = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(time.time() + grace_s))
    print(f"new signing key {key.kid} in {config.home / KEYRING}; tokens signed with the "
          f"previous key verify until {until}. Issue new tokens with "
          "`iron-runtime token issue --agent NAME`.")
    return 0


def _usage(ledger: object, *, as_json: bool) -> int:
    rows = ledger.usage()  # type: ignore[attr-defined]
    if as_json:
        print(json.dumps([{"agent_id": r.agent_id, "model": r.model, "calls": r.calls,
                           "input_tokens": r.input_tokens, "output_tokens": r.output_tokens,
                           "cost_usd": usd(r.cost_micro), "cost_micro": r.cost_micro}
                          for r in rows], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Usage per agent and model")
    for col in ("agent", "model", "calls", "input tokens", "output tokens", "cost (USD)"):
        table.add_column(col, justify="left" if col in ("agent", "model") else "right")
    for r in rows:
        table.add_row(r.agent_id, r.model, str(r.calls), f"{r.input_tokens:,}",
                      f"{r.output_tokens:,}", f"{usd(r.cost_micro):.6f}")
    Console().print(table)
    return 0


def _budgets(ledger: object, scopes: list[str], *, as_json: bool) -> int:
    states = [ledger.state(s) for s in scopes or ledger.scopes()]  # type: ignore[attr-defined]
    if as_json:
        print(json.dumps([{"scope": s.scope, "limit_usd": None if s.limit_micro is None
                           else usd(s.limit_micro), "spent_usd": usd(s.spent_micro),
                           "reserved_usd": usd(s.reserved_micro), "period": s.period,
                           "period_start": _iso(s.period_start), "resets_at": _iso(s.resets_at)}
                          for s in states], indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="Budgets")
    for col in ("scope", "limit (USD)", "spent (USD)", "reserved (USD)", "left (USD)",
                "period", "resets at"):
        table.add_column(col, justify="left" if col in ("scope", "period") else "right")
    for s in states:
        limit = "—" if s.limit_micro is None else f"{usd(s.limit_micro):.6f}"
        left = ("—" if s.limit_micro is None
                else f"{usd(max(s.limit_micro - s.spent_micro - s.reserved_micro, 0)):.6f}")
        table.add_row(s.scope, limit, f"{usd(s.spent_micro):.6f}",
                      f"{usd(s.reserved_micro):.6f}", left, s.period, _iso(s.resets_at) or "—")
    Console().print(table)
    return 0


def _iso(epoch: float | None) -> str | None:
    """Epoch seconds as ISO 8601 in UTC (None stays None)."""
    if epoch is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat()


# -- operator policy: policy set/show/clear, agent disable/enable, token revoke/list ------
_LIST_FIELDS = ("models", "deny_models", "tools", "deny_tools")
_INT_FIELDS = ("rpm", "tpm", "max_tokens")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a whole number above 0")
    return value


def _names(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


def _add_operator_parsers(sub: argparse._SubParsersAction,  # type: ignore[type-arg]
                          token: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from iron_sdk.policy import PII_ORDER

    policy = sub.add_parser("policy", help="operator policy per agent, team:NAME or global"
                            ).add_subparsers(dest="action", required=True)
    pset = policy.add_parser("set", help="set policy fields (others are kept)")
    pset.add_argument("name")
    for flag, what in (("models", "allowed model glob patterns"),
                       ("deny-models", "refused model glob patterns"),
                       ("tools", "allowed tool names (globs)"),
                       ("deny-tools", "refused tool names (globs)")):
        pset.add_argument(f"--{flag}", type=_names, metavar="PATTERNS",
                          help=f"{what}, comma-separated")
    pset.add_argument("--pii", choices=PII_ORDER, help="weakest PII/secret action allowed")
    pset.add_argument("--rpm", type=_positive, metavar="N", help="requests per minute")
    pset.add_argument("--tpm", type=_positive, metavar="N",
                      help="tokens per minute (input + reserved output)")
    pset.add_argument("--max-tokens", type=_positive, metavar="N",
                      help="most output tokens one call may ask for")
    pshow = policy.add_parser("show", help="the effective policy and where each value is from")
    pshow.add_argument("name", nargs="*")
    pshow.add_argument("--json", action="store_true")
    pclear = policy.add_parser("clear", help="remove fields (all without flags)")
    pclear.add_argument("name")
    from iron_sdk.policy import FIELDS

    for field in FIELDS:
        pclear.add_argument(f"--{field.replace('_', '-')}", dest=f"clear_{field}",
                            action="store_true")

    agent = sub.add_parser("agent", help="the kill switch").add_subparsers(dest="action",
                                                                          required=True)
    agent.add_parser("disable", help="refuse every call of the agent").add_argument("name")
    agent.add_parser("enable", help="switch the agent back on").add_argument("name")

    revoke = token.add_parser("revoke", help="revoke a token (id or token) or an agent's")
    revoke.add_argument("token", nargs="?")
    revoke.add_argument("--agent", help="revoke every token of this agent issued until now")
    tlist = token.add_parser("list", help="tokens issued")
    tlist.add_argument("--agent")
    tlist.add_argument("--json", action="store_true")


def _record_issued(config: RuntimeConfig, token: str) -> None:
    from iron_sdk.policy import open_policy_store
    from iron_sdk.policy.operations import record_issued

    try:
        with open_policy_store(config.ledger_url()) as store:
            record_issued(store, token)
    except (IronCageError, ValueError) as exc:  # the token is still good; listing is not
        print(f"warning: the token was not recorded for `token list`: {exc}", file=sys.stderr)


def _operator_command(args: argparse.Namespace, config: RuntimeConfig) -> int:
    import time

    from iron_sdk.errors import InvalidRequestError
    from iron_sdk.policy import FIELDS, open_policy_store
    from iron_sdk.policy import operations as ops

    try:
        store = open_policy_store(config.ledger_url())
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None
    with store:
        result: object
        if args.command == "policy" and args.action == "set":
            fields = {f: getattr(args, f) for f in (*_LIST_FIELDS, *_INT_FIELDS, "pii")
                      if getattr(args, f) is not None}
            result = ops.set_policy(store, args.name, fields)
        elif args.command == "policy" and args.action == "clear":
            result = ops.clear_policy(store, args.name,
                                      [f for f in FIELDS if getattr(args, f"clear_{f}")])
        elif args.command == "policy":
            return _print_policies(ops.show(store, args.name, getattr(config, "policy", None)),
                                   as_json=args.json)
        elif args.command == "agent":
            result = ops.set_disabled(store, args.name, args.action == "disable")
        elif args.action == "revoke":
            if args.token is not None and args.agent is not None or (
                    args.token is None and args.agent is None):
                raise InvalidRequestError("give either TOKEN or --agent NAME")
            result = ops.revoke(store, time.time(), token=args.token, agent=args.agent)
        else:
            return _print_tokens(ops.list_tokens(store, args.agent), as_json=args.json)
    print(json.dumps(result))
    return 0


def _print_policies(views: list[dict[str, object]], *, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"policies": views}, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for view in views:
        table = Table(title=f"Policy of {view['scope']}")
        for col in ("field", "value", "from"):
            table.add_column(col)
        effective = view["effective"]
        assert isinstance(effective, dict)
        for field, value in effective.items():
            items = value if isinstance(value, list) else [value] if value else []
            for item in items:
                shown = item["value"]
                text = ", ".join(shown) if isinstance(shown, list) else str(shown)
                table.add_row(field, text, item["source"])
            if not items:
                table.add_row(field, "—", "")
        console.print(table)
    return 0


def _print_tokens(tokens: list[dict[str, object]], *, as_json: bool) -> int:
    if as_json:
        print(json.dumps({"tokens": tokens}, indent=2))
        return 0
    from datetime import UTC, datetime

    from rich.console import Console
    from rich.table import Table

    def when(ts: object) -> str:
        if not isinstance(ts, int | float):
            return "—"
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")

    table = Table(title="IC tokens")
    for col in ("id", "agent", "scopes", "issued", "expires", "admin", "revoked"):
        table.add_column(col)
    for t in tokens:
        scopes = t["scopes"]
        table.add_row(str(t["id"]), str(t["agent"]),
                      ", ".join(scopes) if isinstance(scopes, list) else "",
                      when(t["issued"]), when(t["expires"]), "yes" if t["admin"] else "",
                      when(t["revoked"]))
    Console().print(table)
    return 0


def _audit(args: argparse.Namespace, config: RuntimeConfig) -> int:
    from iron_sdk.audit_chain import audit_key, head_path, log_files, verify
    from iron_sdk.identity import load_secret

    current = config.home / "audit.jsonl"
    if args.action == "tail":
        return _audit_tail(args, current)
    key = audit_key(load_secret(config.home, create=False))
    if args.files:
        files = [Path(f) for f in args.files]
        head_of = files[-1] if head_path(files[-1]).exists() else None
        verdict = verify(files, key, head_of=head_of, from_start=False)
    else:
        verdict = verify(log_files(current), key, head_of=current)
    print(verdict, file=sys.stdout if verdict.ok else sys.stderr)
    return 0 if verdict.ok else 1


def _audit_tail(args: argparse.Namespace, current: Path) -> int:
    import itertools
    from collections import deque

    from rich.console import Console
    from rich.table import Table

    from iron_sdk.audit_chain import follow, log_files, read_file, read_files

    def wanted(e: dict) -> bool:
        return ((args.agent is None or e.get("agent_id") == args.agent)
                and (args.type is None or e.get("type") == args.type)
                and (args.since is None or e.get("ts", 0) >= args.since))

    console = Console(highlight=False)
    rotated = read_files(p for p in log_files(current) if p != current)
    f = current.open("rb") if current.exists() else None  # followed from where it ends
    events = itertools.chain(rotated, read_file(f) if f else ())
    latest = deque((e for e in events if wanted(e)), maxlen=max(args.lines, 0))
    if args.json:
        for e in latest:
            print(json.dumps(e), flush=True)
    else:
        table = Table(title="Audit log")
        for col in _AUDIT_COLUMNS:
            table.add_column(col, justify="right" if col in ("tokens", "cost (USD)", "seq")
                             else "left")
        for e in latest:
            table.add_row(*_audit_row(e))
        console.print(table)
    if not args.follow:
        return 0
    try:
        for e in follow(current, f):
            if not wanted(e):
                continue
            if args.json:
                print(json.dumps(e), flush=True)
            else:
                console.print("  ".join(_audit_row(e)))
                sys.stdout.flush()
    except KeyboardInterrupt:
        pass
    return 0


_AUDIT_COLUMNS = ("time", "type", "agent", "model", "tokens", "cost (USD)", "outcome", "seq")


def _audit_row(e: dict) -> tuple[str, ...]:
    import time

    ts = e.get("ts")
    when = (time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
            if isinstance(ts, int | float) else "?")
    tokens = (f"{e.get('input_tokens', 0)}→{e.get('output_tokens', 0)}"
              if "input_tokens" in e else "")
    cost = f"{usd(e['cost_micro']):.6f}" if isinstance(e.get("cost_micro"), int) else ""
    outcome = str(e.get("reason") or e.get("outcome") or e.get("action") or "")
    return (when, str(e.get("type", "?")), str(e.get("agent_id") or ""),
            str(e.get("model") or ""), tokens, cost, outcome, str(e.get("seq", "")))


if __name__ == "__main__":
    sys.exit(main())
