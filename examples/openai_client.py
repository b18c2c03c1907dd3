"""The official openai client under @protect_agent — no wrapper in the agent's code.

Runs offline: a local stand-in provider plays OpenAI, IRON_HOME is a temporary folder.

    python3 -m uv run --extra all python examples/openai_client.py
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("IRON_HOME", tempfile.mkdtemp(prefix="iron-example-"))

import openai

from iron_sdk import BudgetExceededError, current_session, protect_agent
from iron_sdk.standin import StandInProvider


def main() -> None:
    with StandInProvider() as provider:
        client = openai.OpenAI(base_url=provider.url, api_key="sk-example-not-real")

        @protect_agent(agent_id="support-bot", budget_usd=0.0001)
        def support_bot(tickets: list[str]) -> None:
            for ticket in tickets:
                client.chat.completions.create(
                    model="gpt-4o-mini", max_tokens=50,
                    messages=[{"role": "system", "content": "Answer support tickets."},
                              {"role": "user", "content": ticket}])
                s = current_session()
                print(f"call {s.calls}: spent ${s.spent_usd:.6f} of ${s.budget_usd:.6f}")

        support_bot(["My invoice is wrong, reach me at ann@example.com"])
        print("provider received:", provider.requests[-1]["messages"][1]["content"])

        try:
            support_bot(["Where is my order?"] * 20)
        except BudgetExceededError as exc:
            print(f"budget stop: {exc.scope} limit ${exc.limit_usd:.6f}, "
                  f"call needed ${exc.requested_usd:.6f}")
        print(f"provider saw {len(provider.requests)} requests in all")


if __name__ == "__main__":
    main()
