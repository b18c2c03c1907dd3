"""Attach the CrewAI integration once (idempotent, thread-safe) and detach it again.

Registers our global LLM-call and tool-call hooks and wraps the seams every built-in
CrewAI LLM goes through (see :mod:`iron_crewai.llm`). Global hooks are copied into an
agent's executor when CrewAI builds it, so they are registered on the first protected
call — before any executor a protected function builds.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from iron_crewai import llm, tools

_lock = threading.Lock()
_installed = False
_undo: list[Callable[[], None]] = []
_watched: set[type] = set()

_USAGE = "_track_token_usage_internal"


def installed() -> bool:
    return _installed


def _patch(owner: Any, name: str, wrap: Callable[[Any], Any]) -> None:
    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    setattr(owner, name, wrap(original))
    _undo.append(lambda: setattr(owner, name, original))


def _is_ours(fn: Any) -> bool:
    return getattr(fn, "__iron_crewai__", False)


def watch_class(cls: type) -> None:
    """Attach to an LLM class the first time a governed call uses it (see :func:`_watch`)."""
    if cls in _watched:
        return
    with _lock:
        if _installed:
            _watch(cls)


def _watch(cls: type) -> None:
    """Make ``cls``'s own usage tracker (Bedrock overrides it) report to us, and give a
    user's own ``BaseLLM`` subclass the governed scope around ``call``/``acall`` that
    CrewAI's LLMs open in ``llm_call_context``. Called with ``_lock`` held."""
    if cls in _watched:
        return
    for name, wrap, custom_only in ((_USAGE, llm.wrap_track_usage, False),
                                    ("call", llm.wrap_custom_call, True),
                                    ("acall", llm.wrap_custom_acall, True)):
        owner = next((k for k in cls.__mro__ if name in k.__dict__), None)
        if owner is None or _is_ours(owner.__dict__[name]):
            continue
        if custom_only and owner.__module__.split(".")[0] == "crewai":
            continue
        _patch(owner, name, wrap)
    _watched.add(cls)


def _subclasses(cls: type) -> list[type]:
    found, todo = [], [cls]
    while todo:
        for sub in todo.pop().__subclasses__():
            found.append(sub)
            todo.append(sub)
    return found


def instrument() -> None:
    """Register the hooks and wrap the seams (no-op when already done)."""
    global _installed
    if _installed:
        return
    with _lock:
        if _installed:
            return
        from crewai.hooks import (
            register_after_tool_call_hook,
            register_before_llm_call_hook,
            register_before_tool_call_hook,
            unregister_after_tool_call_hook,
            unregister_before_llm_call_hook,
            unregister_before_tool_call_hook,
        )
        from crewai.llms import base_llm
        from crewai.llms.base_llm import BaseLLM

        # llm_call_context is imported by name into each provider module: rebind it in
        # those loaded already; modules imported later pick up the wrapped one.
        original = base_llm.llm_call_context
        wrapped = llm.wrap_call_context(original)
        for name, module in list(sys.modules.items()):
            if name.startswith("crewai") and getattr(module, "llm_call_context",
                                                     None) is original:
                _patch(module, "llm_call_context", lambda _orig: wrapped)
        _patch(BaseLLM, "_emit_call_started_event", llm.wrap_call_started)
        _patch(BaseLLM, "_emit_stream_chunk_event", llm.wrap_stream_chunk)
        _patch(BaseLLM, _USAGE, llm.wrap_track_usage)
        for sub in _subclasses(BaseLLM):  # later ones: on the first call a hook sees
            _watch(sub)

        for register, unregister, hook in (
                (register_before_llm_call_hook, unregister_before_llm_call_hook,
                 llm.before_llm_call),
                (register_before_tool_call_hook, unregister_before_tool_call_hook,
                 tools.before_tool_call),
                (register_after_tool_call_hook, unregister_after_tool_call_hook,
                 tools.after_tool_call)):
            register(hook)
            _undo.append(lambda unregister=unregister, hook=hook: unregister(hook))
        llm.watch_class = watch_class
        llm.enabled = _installed = True


def end_session(session: Any) -> None:
    """A protected invocation ended: release what it left open (see ``end_session`` in
    :mod:`iron_crewai.llm` and :mod:`iron_crewai.tools`)."""
    llm.end_session(session)
    tools.end_session(session)


def uninstrument() -> None:
    """Undo :func:`instrument` (executors CrewAI built meanwhile keep their hook copy,
    which passes through when it finds nothing to govern)."""
    global _installed
    with _lock:
        while _undo:
            _undo.pop()()
        _watched.clear()
        llm.enabled = _installed = False
