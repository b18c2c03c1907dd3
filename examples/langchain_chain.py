"""A LangChain chain under iron-sdk, offline: ``python examples/langchain_chain.py``.

``prompt | ChatOpenAI | StrOutputParser`` inside ``@protect_agent``, against a local
stand-in provider this script starts itself (no key, no network, a throwaway IRON_HOME).
No callback, wrapper or middleware is added for the governed path:

1. each call is charged once, for the provider's exact usage (the openai-client plugin
   beneath ChatOpenAI charges it; the LangChain plugin leaves it alone);
2. an e-mail address in the prompt is redacted before the request leaves;
3. ``governed(model)`` redacts and charges at the LangChain level (any chat model),
   here for a streamed call;
4. a budget stop: the refused call never reaches the provider.
"""

from __future__ import annotations

import os
import tempfile

os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"  # price data from the wheel, offline
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ["IRON_HOME"] = tempfile.mkdtemp(prefix="iron-example-")
os.environ.pop("IRON_RUNTIME_URL", None)  # library mode


def main() -> int:
    from iron_langchain import governed
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_openai import ChatOpenAI

    from iron_sdk import BudgetExceededError, current_session, protect_agent
    from iron_sdk.standin import StandInProvider

    with StandInProvider() as provider:
        model = ChatOpenAI(model="gpt-4o-mini", base_url=provider.url,
                           api_key="sk-local-example", max_tokens=64, max_retries=0)
        prompt = ChatPromptTemplate.from_messages(
            [("system", "Answer in one line."), ("user", "{question}")])
        chain = prompt | model | StrOutputParser()
        print(f"IRON_HOME={os.environ['IRON_HOME']}  stand-in provider at {provider.url}")

        @protect_agent(agent_id="chain-example", budget_usd=0.001)
        def ask(questions: list[str]) -> None:
            for question in questions:
                answer = chain.invoke({"question": question})
                s = current_session()
                print(f"  call {s.calls}: {answer[:32]!r}... spent ${s.spent_usd:.6f} "
                      f"of ${s.budget_usd:.6f}")

        print("\n1. Spend, reserved before and settled after each call")
        ask(["What is a ledger?", "And a lease?"])

        print("\n2. PII redacted before the prompt leaves")
        question = "Email jane.doe@example.com about the refund."
        ask([question])
        print(f"  chain was given: {question}")
        print(f"  provider saw:    {provider.requests[-1]['messages'][1]['content']}")

        print("\n3. governed(model): redaction and spend at the LangChain level, streamed")
        streamed = prompt | governed(model) | StrOutputParser()

        @protect_agent(agent_id="chain-example-stream")
        def stream(question: str) -> None:
            pieces = list(streamed.stream({"question": question}))
            print(f"  {len(pieces)} pieces streamed, spent ${current_session().spent_usd:.6f}")

        stream("Call +1 415-555-0132 or write to ops@example.org.")
        print(f"  provider saw:    {provider.requests[-1]['messages'][1]['content']}")

        print("\n4. Budget stop: refused before the request leaves")
        seen, answered = len(provider.requests), []

        @protect_agent(agent_id="chain-example-tight", budget_usd=0.00005)
        def report() -> None:
            for _ in range(10):
                chain.invoke({"question": "Summarise the quarterly report."})
                answered.append(1)

        try:
            report()
        except BudgetExceededError as exc:
            print(f"  BudgetExceededError after {len(answered)} calls: {exc}")
        print("  refused call, requests reached the provider: "
              f"{len(provider.requests) - seen - len(answered)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
