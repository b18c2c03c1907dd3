"""CrewAI tool calls audited through CrewAI's tool-call hooks.

``before_tool_call`` opens ``runtime.begin_tool`` (a plugin may refuse the tool: CrewAI
then skips it and tells the agent it was blocked); ``after_tool_call`` closes it with
``runtime.end_tool``, which emits the ``tool_called`` audit event. CrewAI builds a new
context for the after hook but hands both the same ``tool_input`` dict, which pairs them.
"""

from __future__ import annotations

from typing import Any

from iron_crewai import llm
from iron_crewai.errors import as_hook_abort
from iron_crewai.llm import SOURCE
from iron_sdk.errors import IronCageError, RuntimeUnavailableError
from iron_sdk.integration import Session, ToolCall, active_session

_open: dict[int, ToolCall] = {}  # id(tool_input) → the tool call in progress

# CrewAI's own words for a tool that raised or was blocked (it returns them as the result).
_FAILED_PREFIXES = ("Error executing tool", "Tool execution blocked by hook")


class ToolFailed(Exception):
    """A CrewAI tool raised or reported a failure (carried to ``end_tool``)."""


def end_session(session: Session) -> None:
    """Close tool calls of ``session`` that CrewAI never reported finished."""
    left = [key for key, call in list(_open.items()) if call.session is session]
    for key in left:
        call = _open.pop(key, None)
        if call is not None:
            session.runtime.end_tool(call, error=ToolFailed(
                f"CrewAI tool '{call.name}' did not finish before its session ended"))


def before_tool_call(ctx: Any) -> None:
    """``before_tool_call`` hook: the tool is about to run (a plugin may refuse it)."""
    session = active_session()
    if session is None or not llm.enabled:
        return None
    runtime = session.runtime
    try:
        call = runtime.begin_tool(session, ctx.tool_name, arguments=ctx.tool_input,
                                  source=SOURCE)
    except Exception as exc:
        error = exc if isinstance(exc, IronCageError) else RuntimeUnavailableError(
            f"A governance plugin failed on tool '{ctx.tool_name}' "
            f"({type(exc).__name__}); the tool was not run.")
        refused = ToolCall(session=session, name=ctx.tool_name, source=SOURCE)
        runtime.end_tool(refused, error=error)  # the refusal is audited too
        raise as_hook_abort(error) from None
    _open[id(ctx.tool_input)] = call
    return None


def after_tool_call(ctx: Any) -> None:
    """``after_tool_call`` hook: the tool ran, failed, or was blocked by a hook."""
    call = _open.pop(id(ctx.tool_input), None)
    if call is None:
        return None
    raw = ctx.raw_tool_result if ctx.raw_tool_result is not None else ctx.tool_result
    error = None
    if type(raw).__name__ == "ToolFailure" or (
            isinstance(raw, str) and raw.startswith(_FAILED_PREFIXES)):
        error = ToolFailed(f"CrewAI tool '{call.name}' failed")
    call.session.runtime.end_tool(call, result=raw, error=error)
    return None
