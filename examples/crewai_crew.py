"""A CrewAI crew under @protect_agent — no hook, callback or wrapper in the crew's code.

Runs offline: a local stand-in provider plays OpenAI, IRON_HOME is a temporary folder,
CrewAI's telemetry and tracing are off.

    python3 -m uv run --extra all python examples/crewai_crew.py
"""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("IRON_HOME", tempfile.mkdtemp(prefix="iron-example-"))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
os.environ.setdefault("OTEL_SDK_DISABLED", "true")
os.environ.setdefault("CREWAI_TRACING_ENABLED", "false")

from crewai import LLM, Agent, Crew, Task

from iron_sdk import BudgetExceededError, current_session, get_runtime, protect_agent
from iron_sdk.standin import StandInProvider


def main() -> None:
    with StandInProvider() as provider:
        llm = LLM(model="gpt-4o-mini", base_url=provider.url, api_key="sk-example-not-real",
                  max_tokens=100)
        writer = Agent(role="Newsletter writer", goal="Write short, warm welcome notes.",
                       backstory="You write the company's newsletter.", llm=llm)
        note = Task(description="Write a welcome note for ann.lee@example.com.",
                    expected_output="A two-line welcome note.", agent=writer)
        crew = Crew(agents=[writer], tasks=[note])

        @protect_agent(agent_id="newsletter-crew", budget_usd=0.0001)
        def newsletter(rounds: int) -> None:
            for _ in range(rounds):
                crew.kickoff()
                s = current_session()
                print(f"crew spent ${s.spent_usd:.6f} for {s.calls} model calls "
                      f"(budget ${s.budget_usd:.6f})")

        newsletter(1)
        task_line = next(line for line in
                         provider.requests[-1]["messages"][-1]["content"].splitlines()
                         if line.startswith("Current Task:"))
        print("provider received:", task_line.removeprefix("Current Task: "))

        try:
            newsletter(10)
        except BudgetExceededError as exc:  # raised by crew.kickoff(), typed
            print(f"budget stop: {type(exc).__name__} {exc.scope} limit ${exc.limit_usd:.6f}, "
                  f"call needed ${exc.requested_usd:.6f}")
        runtime = get_runtime()
        runtime.flush()
        spent = runtime.ledger.state("agent:newsletter-crew").spent_micro
        print(f"provider saw {len(provider.requests)} requests in all; "
              f"ledger: agent newsletter-crew spent ${spent / 1e6:.6f}")


if __name__ == "__main__":
    main()
