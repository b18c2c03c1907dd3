"""The LiteLLM SDK under @protect_agent — no callback or wrapper in the agent's code.

``litellm.completion``/``acompletion`` (plain and streamed) are governed: the budget is
reserved before each request and settled with the provider's usage after it, PII is
redacted before the prompt leaves, and a call that would overspend never leaves.

Runs offline: a local stand-in provider plays OpenAI, IRON_HOME is a temporary folder.

    python3 -m uv run --extra all python examples/litellm_sdk.py
"""

from __future__ import annotations

import asyncio
import os
import tempfile

os.environ.setdefault("IRON_HOME", tempfile.mkdtemp(prefix="iron-example-"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no price-map download

import litellm

from iron_sdk import BudgetExceededError, current_session, get_runtime, protect_agent
from iron_sdk.standin import StandInProvider


def report(label: str, before: int) -> None:
    s = current_session()
    print(f"{label}: charged {s.spent_micro - before} µ$ "
          f"(session {s.spent_micro} µ$ of {round(s.budget_usd * 1e6)} µ$)")


def main() -> None:
    with StandInProvider() as provider:
        options = dict(model="openai/gpt-4o-mini", api_base=provider.url,
                       api_key="sk-example-not-real", max_tokens=40)

        @protect_agent(agent_id="litellm-bot", budget_usd=0.00005)
        def support_bot(ticket: str) -> None:
            messages = [{"role": "system", "content": "Answer support tickets."},
                        {"role": "user", "content": ticket}]
            before = current_session().spent_micro
            litellm.completion(messages=messages, **options)
            report("plain call", before)
            before = current_session().spent_micro
            for _chunk in litellm.completion(messages=messages, stream=True, **options):
                pass
            report("streamed call", before)

        @protect_agent(agent_id="litellm-bot", budget_usd=0.00005)
        async def async_bot(ticket: str) -> None:
            before = current_session().spent_micro
            await litellm.acompletion(messages=[{"role": "user", "content": ticket}],
                                      **options)
            report("async call", before)

        support_bot("Refund order 1234 for ann@example.com please")
        print("provider received:", provider.requests[0]["messages"][1]["content"])
        asyncio.run(async_bot("Where is my parcel?"))

        @protect_agent(agent_id="litellm-bot", budget_usd=0.00008)
        def chatty_bot() -> None:
            while True:
                before = current_session().spent_micro
                litellm.completion(messages=[{"role": "user", "content": "Tell me more."}],
                                   **options)
                report("chatty call", before)

        sent = len(provider.requests)
        try:
            chatty_bot()
        except BudgetExceededError as exc:
            print(f"budget stop: {exc.scope} after {len(provider.requests) - sent} calls "
                  f"(the next one needed up to ${exc.requested_usd:.6f}, "
                  f"${exc.limit_usd - exc.spent_usd:.6f} left); it was never sent")

        runtime = get_runtime()
        runtime.flush()
        spent = runtime.ledger.state("agent:litellm-bot").spent_micro
        print(f"ledger: agent:litellm-bot spent {spent} µ$ "
              f"over {len(provider.requests)} provider requests")


if __name__ == "__main__":
    main()
