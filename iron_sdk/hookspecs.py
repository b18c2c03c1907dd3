"""The governance events every door of the runtime fires, as a pluggy hook spec.

Built-in policies (pricing, safety, budget, audit) and framework integrations are
plugins on this spec, loaded the same way as third-party plugins (entry-point group
``iron_sdk``). A plugin is any object or module with ``@hookimpl`` functions whose names
match the specs below; it may implement any subset and accept any subset of the
arguments.

Order inside ``iron_llm_request``: safety runs first (``tryfirst``), then user plugins,
then the budget reservation (``trylast``), so nothing is reserved for a call another
plugin vetoes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from iron_sdk.call import LlmCall, ToolCall
    from iron_sdk.events import Event
    from iron_sdk.pricing import ModelPrice
    from iron_sdk.runtime import Runtime
    from iron_sdk.safety.detectors import Finding
    from iron_sdk.session import Session

hookspec = pluggy.HookspecMarker("iron_sdk")
hookimpl = pluggy.HookimplMarker("iron_sdk")


@hookspec
def iron_configure(runtime: Runtime) -> None:
    """The runtime has started: keep a reference, open resources, install instrumentation.

    Called once per runtime, after every plugin is registered.
    """


@hookspec
def iron_unconfigure(runtime: Runtime) -> None:
    """The runtime is shutting down: flush and close what ``iron_configure`` opened."""


@hookspec
def iron_session_start(session: Session) -> None:
    """A protected function was invoked (or a router client opened a session).

    Framework plugins use it to attach their instrumentation lazily, only once the
    framework has been imported by the user. Raising a governance error refuses the
    session before the function body runs.
    """


@hookspec
def iron_session_end(session: Session, error: BaseException | None) -> None:
    """The protected invocation returned (``error`` is None) or raised ``error``."""


@hookspec
def iron_llm_request(call: LlmCall) -> None:
    """A model call is about to leave the machine.

    Plugins may rewrite ``call.messages`` in place (redaction) or raise an
    :class:`~iron_sdk.errors.IronCageError` to block it; nothing is sent then. The
    built-in budget plugin reserves ``call.reserved_micro`` here.
    """


@hookspec
def iron_llm_response(call: LlmCall) -> None:
    """The provider answered: ``call.usage`` and ``call.cost_micro`` are set.

    The built-in budget plugin settles the reservation with the real cost here.
    """


@hookspec
def iron_llm_error(call: LlmCall, error: BaseException) -> None:
    """The call failed after ``iron_llm_request`` passed (provider error, cancelled,
    client gone). Whatever was reserved for it is released here."""


@hookspec
def iron_tool_request(call: ToolCall) -> None:
    """An agent tool is about to run. Raise a governance error to refuse it."""


@hookspec
def iron_tool_response(call: ToolCall, result: Any) -> None:
    """An agent tool finished with ``result`` (``call.error`` is set if it raised)."""


@hookspec(firstresult=True)
def iron_model_price(model: str) -> ModelPrice | None:
    """The price of ``model``, or None to let the next plugin answer.

    Configured prices answer first, the bundled price database last, so a plugin can
    price private or fine-tuned models.
    """


@hookspec
def iron_detect(text: str) -> list[Finding] | None:
    """Extra PII/secret detectors (e.g. an NER model) run on every prompt text.

    Return findings (kind, start, end) to have them handled by the safety policy like
    the built-in ones.
    """


@hookspec
def iron_event(event: Event) -> None:
    """Every governance event (call completed/failed/blocked, budget threshold, PII
    found, tool used). Sinks (the JSON-lines audit log, metrics, OpenTelemetry) listen
    here. Events carry ids, names, tokens and costs, never prompt text, PII or keys."""
