"""``iron-runtime demo``: a protected agent against a local stand-in provider, offline.

Shows spend per call, a prompt redacted before it leaves, a budget stop that never
reaches the provider, and the usage table. Uses a throwaway ``IRON_HOME`` unless one is
set, so it leaves no trace in ``~/.iron``.
"""

from __future__ import annotations

import os
import tempfile

from rich.console import Console

console = Console()


def main() -> int:
    if "IRON_HOME" not in os.environ:
        os.environ["IRON_HOME"] = tempfile.mkdtemp(prefix="iron-demo-")
    os.environ.pop("IRON_RUNTIME_URL", None)  # the embedded default

    import openai

    from iron_sdk import BudgetExceededError, current_session, protect_agent
    from iron_sdk.cli import main as cli
    from iron_sdk.standin import StandInProvider

    with StandInProvider() as provider:
        client = openai.OpenAI(base_url=provider.url, api_key="sk-local-demo")
        console.rule("[bold]iron-sdk demo[/] (library mode, offline)")
        console.print(f"IRON_HOME={os.environ['IRON_HOME']}  stand-in provider at {provider.url}")

        @protect_agent(agent_id="demo-agent", budget_usd=0.0002)
        def agent(questions: list[str], verbose: bool = True) -> None:
            for q in questions:
                client.chat.completions.create(
                    model="gpt-4o-mini", max_tokens=64,
                    messages=[{"role": "user", "content": q}])
                s = current_session()
                if verbose:
                    console.print(f"  call {s.calls}: spent ${s.spent_usd:.6f}, "
                                  f"left ${s.remaining_usd:.6f} of ${s.budget_usd:.6f}")

        console.print("\n[bold]1. Spend, reserved before and settled after each call[/]")
        agent(["What is a ledger?", "And a lease?"])

        console.print("\n[bold]2. PII redacted before the prompt leaves[/]")
        prompt = "Email jane.doe@example.com or call +1 415-555-0132 about the refund."
        agent([prompt])
        console.print(f"  agent wrote:    {prompt}")
        console.print(f"  provider saw:   {provider.requests[-1]['messages'][0]['content']}")

        console.print("\n[bold]3. Budget stop: refused before the request leaves[/]")
        seen = len(provider.requests)
        try:
            agent(["Summarise this long report, please."] * 50, verbose=False)
        except BudgetExceededError as exc:
            console.print(f"  [red]BudgetExceededError[/]: {exc}")
            console.print(f"  {len(provider.requests) - seen} requests reached the provider; "
                          "the refused one never left")

    console.print("\n[bold]4. The ledger (iron-runtime usage)[/]")
    cli(["usage"])
    console.print(f"Audit log: {os.environ['IRON_HOME']}/audit.jsonl")
    return 0
