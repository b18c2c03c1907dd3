"""``IronMiddleware``: governs — and redacts — every model call of a LangChain agent::

    agent = create_agent(model, tools=[...], middleware=[IronMiddleware()])

Each model call runs the request policies on the system prompt and the messages the
agent is about to send; the redacted copies go to the model (the agent's own state keeps
the originals) and the call settles from the reply's ``usage_metadata`` (text counted when
the provider reported none). The model runs under ``outer_governed()``, so the automatic
callback handler and the openai-client plugin do not charge it again. A refusal raises
``BudgetExceededError``/``SafetyViolationError`` out of ``agent.invoke`` before anything
is sent. Tool calls are audited by the callback handler (attached automatically inside
protected functions). Needs the ``langchain`` package.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse
from langchain_core.messages import AIMessage

from iron_langchain.convert import MessageMeter, begin, ls_params, model_params
from iron_sdk.integration import Session, active_session, is_outer_governed, outer_governed


class IronMiddleware(AgentMiddleware):
    """Agent middleware (``create_agent(..., middleware=[IronMiddleware()])``).

    Governs inside protected functions; ``session`` (e.g.
    ``IronCallbackHandler(agent_id=...).session``) governs outside them.
    """

    def __init__(self, *, session: Session | None = None) -> None:
        super().__init__()
        self.session = session

    def _begin(self, request: ModelRequest) -> tuple[MessageMeter, ModelRequest] | None:
        if is_outer_governed():
            return None
        session = active_session() or self.session
        if session is None:
            return None
        system = [request.system_message] if request.system_message is not None else []
        messages = [*system, *request.messages]
        params = model_params(ls_params(request.model, **request.model_settings),
                              type(request.model).__name__)
        call, sent = begin(session, messages, params, stream=False)
        if sent is not messages:
            request = request.override(system_message=sent[0] if system else None,
                                       messages=sent[len(system):])
        return MessageMeter(call), request

    def wrap_model_call(self, request: ModelRequest,
                        handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        governed = self._begin(request)
        if governed is None:
            return handler(request)
        meter, request = governed
        try:
            with outer_governed():
                response = handler(request)
        except BaseException as exc:
            meter.fail(exc)
            raise
        meter.add(_reply(response))
        meter.finish()
        return response

    async def awrap_model_call(self, request: ModelRequest,
                               handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
                               ) -> Any:
        governed = self._begin(request)
        if governed is None:
            return await handler(request)
        meter, request = governed
        try:
            with outer_governed():
                response = await handler(request)
        except BaseException as exc:
            meter.fail(exc)
            raise
        meter.add(_reply(response))
        meter.finish()
        return response


def _reply(response: Any) -> AIMessage | None:
    """The model's message in whatever an inner middleware returned."""
    if isinstance(response, AIMessage):
        return response
    response = getattr(response, "model_response", response)  # ExtendedModelResponse
    return next((m for m in getattr(response, "result", ()) if isinstance(m, AIMessage)), None)
