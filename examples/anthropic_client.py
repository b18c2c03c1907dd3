"""The official anthropic client under @protect_agent — no wrapper in the agent's code.

Runs offline: a local stand-in provider plays Anthropic's Messages API, IRON_HOME is a
temporary folder.

    python3 -m uv run --extra all python examples/anthropic_client.py
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("IRON_HOME", tempfile.mkdtemp(prefix="iron-example-"))

import anthropic

from iron_sdk import BudgetExceededError, current_session, protect_agent
from iron_sdk.standin import StandInProvider

MODEL = "claude-haiku-4-5"


def main() -> None:
    with StandInProvider() as provider:
        # the client adds /v1/messages to its base URL itself
        client = anthropic.Anthropic(base_url=provider.url.removesuffix("/v1"),
                                     api_key="sk-ant-example-not-real")

        @protect_agent(agent_id="claude-support", budget_usd=0.001)
        def support_bot(tickets: list[str]) -> None:
            for ticket in tickets:
                client.messages.create(
                    model=MODEL, max_tokens=50, system="Answer support tickets.",
                    messages=[{"role": "user", "content": ticket}])
                s = current_session()
                print(f"call {s.calls}: spent ${s.spent_usd:.6f} of ${s.budget_usd:.6f}")

        @protect_agent(agent_id="claude-support")
        def streaming_bot(ticket: str) -> str:
            with client.messages.stream(model=MODEL, max_tokens=50,
                                        messages=[{"role": "user", "content": ticket}]) as s:
                text = "".join(s.text_stream)
            print(f"streamed reply charged ${current_session().spent_usd:.6f}")
            return text

        support_bot(["My invoice is wrong, reach me at ann@example.com"])
        print("provider received:", provider.requests[-1]["messages"][0]["content"])
        print("streamed:", streaming_bot("Where is my parcel?"))

        try:
            support_bot(["Where is my order?"] * 20)
        except BudgetExceededError as exc:
            print(f"budget stop: {exc.scope} limit ${exc.limit_usd:.6f}, "
                  f"call needed ${exc.requested_usd:.6f}")
        print(f"provider saw {len(provider.requests)} requests in all")


if __name__ == "__main__":
    main()
