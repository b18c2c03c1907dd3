"""``iron-runtime``: tokens, budgets, usage, the offline demo, and router mode."""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Sequence

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
    sub = parser.add_subparsers(dest="command")

    token = sub.add_parser("token", help="IC tokens").add_subparsers(dest="action",
                                                                     required=True)
    issue = token.add_parser("issue", help="issue a signed IC token for an agent")
    issue.add_argument("--agent", required=True)
    issue.add_argument("--expires-in", type=_duration, help="e.g. 30d (default: no expiry)")
    issue.add_argument("--scope", action="append", default=[],
                       help="extra budget scope the agent is charged to, e.g. team:search")

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
    return parser


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

        return serve(host=args.host, port=args.port, config_path=args.config)
    if args.command == "demo":
        from iron_sdk.demo import main as demo

        return demo()
    config = RuntimeConfig()
    if args.command == "token":
        from iron_sdk.identity import issue_token

        print(issue_token(config.home, args.agent, expires_in_s=args.expires_in,
                          scopes=tuple(args.scope)))
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
