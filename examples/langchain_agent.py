"""A LangChain agent with a tool under iron-sdk, offline: ``python examples/langchain_agent.py``.

``create_agent(ChatOpenAI, tools=[lookup_order], middleware=[IronMiddleware()])`` inside
``@protect_agent``, against a local stand-in provider this script starts itself (no key,
no network, a throwaway IRON_HOME):

1. the agent's model calls are charged (once each) and its tool call is audited as a
   ``tool_called`` event — by the callback handler the plugin attaches automatically;
2. ``IronMiddleware`` redacts the system prompt and the user's message before each model
   call (the agent's own state keeps the originals);
3. a budget stop: the refused model call never reaches the provider.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # price data from the wheel, offline
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ["IRON_HOME"] = tempfile.mkdtemp(prefix="iron-example-")
os.environ.pop("IRON_RUNTIME_URL", None)  # library mode


def tool_calling_standin() -> Any:
    """The stand-in provider, scripted for this demo: a user turn that offers tools is
    answered with a call to the first tool (the stock stand-in answers with text only)."""
    from iron_sdk.standin import StandInProvider

    provider = StandInProvider()
    base = provider.server.RequestHandlerClass

    class ToolCalling(base):  # type: ignore[misc, valid-type]
        def _chat(self, body: dict[str, Any]) -> None:
            tools, messages = body.get("tools"), body.get("messages") or []
            if not tools or messages[-1].get("role") != "user":
                return super()._chat(body)
            call = {"id": "call_1", "type": "function", "function": {
                "name": tools[0]["function"]["name"],
                "arguments": json.dumps({"order_id": "A-17"})}}
            self._json(200, {
                "id": "chatcmpl-standin", "object": "chat.completion", "created": 0,
                "model": body["model"], "usage": self.owner.usage(body, 9),
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": None, "tool_calls": [call]}}]})

    provider.server.RequestHandlerClass = ToolCalling
    return provider


def main() -> int:
    from iron_langchain import IronMiddleware
    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    from iron_sdk import BudgetExceededError, current_session, get_runtime, protect_agent
    from iron_sdk.policies.audit import read_events

    @tool
    def lookup_order(order_id: str) -> str:
        """Look up the shipping status of an order."""
        return f"order {order_id} shipped on Monday"

    with tool_calling_standin() as provider:
        model = ChatOpenAI(model="gpt-4o-mini", base_url=provider.url,
                           api_key="sk-local-example", max_tokens=64, max_retries=0)
        agent = create_agent(model, tools=[lookup_order],
                             system_prompt="You track orders. Escalate to ops@example.org.",
                             middleware=[IronMiddleware()])
        print(f"IRON_HOME={os.environ['IRON_HOME']}  stand-in provider at {provider.url}")

        @protect_agent(agent_id="agent-example", budget_usd=0.001)
        def support(question: str) -> str:
            result = agent.invoke({"messages": [("user", question)]})
            s = current_session()
            print(f"  {s.calls} model calls, spent ${s.spent_usd:.6f} of ${s.budget_usd:.6f}")
            return result["messages"][-1].content

        print("\n1. Model calls charged, the tool call audited")
        question = "Where is order A-17? I am jane.doe@example.com."
        print(f"  answer: {support(question)[:40]!r}...")
        runtime = get_runtime()
        runtime.flush()  # audit lines are written by a background batcher
        for event in read_events(runtime.config.home / "audit.jsonl"):
            if event["type"] == "tool_called":
                print(f"  tool_called: {event['tool']} ({event['outcome']})")
            elif event["type"] == "call_completed":
                print(f"  call_completed: {event['model']} {event['input_tokens']}+"
                      f"{event['output_tokens']} tokens, {event['cost_micro']} µ$")

        print("\n2. Redacted by IronMiddleware before each model call")
        sent = provider.requests[0]["messages"]
        print(f"  agent was given: {question}")
        print(f"  provider saw:    {sent[1]['content']}")
        print(f"  system prompt:   {sent[0]['content']}")

        print("\n3. Budget stop: refused before the request leaves")
        seen = len(provider.requests)

        @protect_agent(agent_id="agent-example-tight", budget_usd=0.00002)
        def broke() -> None:
            agent.invoke({"messages": [("user", "Where is order B-2?")]})

        try:
            broke()
        except BudgetExceededError as exc:
            print(f"  BudgetExceededError: {exc}")
        print(f"  requests reached the provider: {len(provider.requests) - seen}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
