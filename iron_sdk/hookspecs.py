"""The governance events every door of the runtime fires, as a pluggy hook spec.

Built-in policies (pricing, safety, reliability, budget, audit) and framework
integrations are plugins on this spec, loaded the same way as third-party plugins
(entry-point group ``iron_sdk``). A plugin is any object or module with ``@hookimpl``
functions whose names match the specs below; it may implement any subset and accept
any subset of the arguments. Integration authors import what they need from
:mod:`iron_sdk.integration`.

The call sequence of one model call::

    iron_session_start(session)                     once per protected invocation
      iron_llm_request(call)                        before anything leaves; may refuse
        ├─ refused → iron_llm_error(call, error)    call.outcome == "blocked"
        │            iron_event(call_blocked)
        ├─ provider answered → iron_llm_response(call)
        │            iron_event(call_completed)
        └─ provider failed   → iron_llm_error(call, error)
                     iron_event(call_failed)
      (iron_tool_request / iron_tool_response around each agent tool)
    iron_session_end(session, error)

``iron_event`` also carries the events plugins emit meanwhile (``pii_detected``,
``budget_threshold``, ``usage_missing``, ``plugin_failed``, ...).

Order of the built-ins inside ``iron_llm_request``: reliability and safety first
(``tryfirst``; reliability before safety), then plugins without an order mark, then the
budget reservation (``trylast``), so nothing is reserved for a call another plugin
vetoes — and if a later plugin refuses, ``iron_llm_error`` releases it.

Which process runs what:

- **library mode**: every hook, in the agent's process;
- **router, door 3** (OpenAI-compatible API): every hook, in the router's process;
- **HTTP mode** (SDK with ``IRON_RUNTIME_URL``, door 2): the router runs the policies
  (its plugins see the whole sequence); plugins registered in the agent's process see
  ``iron_configure``, ``iron_session_start``/``end``, ``iron_llm_request`` *after* the
  router decided (its redactions already applied; raising still refuses the call and
  releases the reservation), ``iron_llm_response``, ``iron_llm_error`` and
  ``iron_event`` for their own calls (the router's events replayed) — the same
  sequence as in library mode. ``iron_model_price`` and ``iron_detect`` run in the
  router only; ``iron_tool_*`` run in the router.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from iron_sdk.call import LlmCall, ToolCall
    from iron_sdk.config import SafetyConfig
    from iron_sdk.events import Event
    from iron_sdk.interface import GovernanceRuntime
    from iron_sdk.pricing import ModelPrice
    from iron_sdk.safety.detectors import Finding
    from iron_sdk.session import Session

hookspec = pluggy.HookspecMarker("iron_sdk")
hookimpl = pluggy.HookimplMarker("iron_sdk")


@hookspec
def iron_configure(runtime: GovernanceRuntime) -> None:
    """The runtime has started: keep a reference, open resources, install
    instrumentation (framework plugins patch their framework here if it is imported,
    else at ``iron_session_start``).

    :param runtime: the in-process runtime, or the HTTP client of the router.

    Called once per runtime, after every plugin is registered, in every process that
    creates a runtime. Raising makes creating the runtime fail.
    """


@hookspec
def iron_instrument() -> None:
    """Instrument the frameworks this plugin governs that are already imported (never
    import one): a client used before any session, or outside every protected function,
    is then governed too.

    Called, with the entry-point plugins only, in the agent's process when
    ``@protect_agent`` decorates a function (before any runtime may exist); may be called
    again, so it must be idempotent. Should not raise.
    """


@hookspec
def iron_unconfigure(runtime: GovernanceRuntime) -> None:
    """The runtime is shutting down: flush and close what ``iron_configure`` opened.

    Called once, at ``runtime.close()``. Should not raise.
    """


@hookspec
def iron_session_start(session: Session) -> None:
    """A protected function was invoked (or a client opened a runtime-API session).

    :param session: the new session (agent, scopes, configs).

    May raise a governance error to refuse the session before the function body runs.
    Runs in the process that opened the session (in HTTP mode: both the router and the
    agent's process).
    """


@hookspec
def iron_session_end(session: Session, error: BaseException | None) -> None:
    """The protected invocation returned (``error`` is None) or raised ``error``.

    Should not raise (the user's result or exception is already decided).
    """


@hookspec
def iron_llm_request(call: LlmCall) -> None:
    """A model call is about to leave the machine.

    :param call: the call; ``call.request`` is the request model
        (:mod:`iron_sdk.request`): every text in it with its path, the output it can
        generate, its media.

    A plugin may rewrite texts with ``call.request.replace(path, value)`` (redaction)
    or raise an :class:`~iron_sdk.errors.IronCageError` to refuse the call; nothing is
    sent then, and ``iron_llm_error`` runs so that whatever an earlier plugin reserved
    is released. Any other exception also refuses the call (fails closed) as
    :class:`~iron_sdk.errors.RuntimeUnavailableError`. The built-in budget plugin
    (``trylast``) reserves ``call.reserved_micro`` here.
    """


@hookspec
def iron_llm_response(call: LlmCall) -> None:
    """The provider answered: ``call.usage`` and ``call.cost_micro`` are set.

    The built-in budget plugin settles the reservation with the real cost here. Every
    implementation runs even if another raises: an exception is logged with the
    plugin's name and reported as a ``plugin_failed`` event, never lost charge, never
    an exception in place of the answer the user paid for.
    """


@hookspec
def iron_llm_error(call: LlmCall, error: BaseException) -> None:
    """The call failed after ``iron_llm_request`` passed (provider error, cancelled,
    client gone; ``call.outcome == "failed"``), or a plugin refused it in
    ``iron_llm_request`` (``call.outcome == "blocked"``). Whatever was reserved for it
    is released here. Exceptions are handled as in ``iron_llm_response``.
    """


@hookspec
def iron_tool_request(call: ToolCall) -> None:
    """An agent tool is about to run (``call.name``, ``call.arguments``). Raise a
    governance error to refuse it."""


@hookspec
def iron_tool_response(call: ToolCall, result: Any) -> None:
    """An agent tool finished with ``result`` (``call.error`` is set if it raised).
    Should not raise."""


@hookspec(firstresult=True)
def iron_model_price(model: str) -> ModelPrice | None:
    """The price of ``model``, or None to let the next plugin answer.

    Configured prices answer first (``tryfirst``), the bundled price database last
    (``trylast``), so a plugin can price private or fine-tuned models. The answer is
    cached per model for the runtime's life. Raising refuses the call.
    """


@hookspec
def iron_detect(text: str, config: SafetyConfig) -> list[Finding] | None:
    """Extra PII/secret detectors (e.g. an NER model), run on every text of a request.

    :param text: one text of the request (see :mod:`iron_sdk.request`).
    :param config: the session's :class:`~iron_sdk.config.SafetyConfig` (e.g. the NER
        plugin runs only with ``config.ner``).

    Return findings (kind, start, end) to have them handled by the safety policy like
    the built-in ones (allow-lists apply). Raising blocks the call (safety fails closed).
    Runs where the policies run (the router in HTTP mode).
    """


@hookspec
def iron_event(event: Event) -> None:
    """Every governance event (call completed/failed/blocked, budget threshold, PII
    found, tool used, plugin failed). Sinks (the JSON-lines audit log, metrics,
    OpenTelemetry) listen here. Events carry ids, names, tokens and costs, never prompt
    text, PII or keys. The built-in audit sink runs last (``trylast``). An exception is
    logged with the plugin's name; the other sinks still run.
    """
