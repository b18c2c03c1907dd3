"""Governance refusals in the shape CrewAI lets through.

CrewAI swallows any exception a hook raises (fail-open) except ``HookAborted``, which it
passes through its retry loops untouched, up to ``kickoff()``. A refusal is therefore
raised as an instance of the iron-sdk error's own class that is also a ``HookAborted``:
CrewAI stops at once, and the user's ``except BudgetExceededError`` (or
``SafetyViolationError``, ...) catches it, with the same fields and message.
"""

from __future__ import annotations

import threading

from iron_sdk.errors import IronCageError

_classes: dict[type[IronCageError], type[IronCageError]] = {}
_lock = threading.Lock()


def _abort_class(cls: type[IronCageError]) -> type[IronCageError]:
    made = _classes.get(cls)
    if made is None:
        from crewai.hooks import HookAborted

        with _lock:
            made = _classes.get(cls)
            if made is None:
                made = type(cls.__name__, (cls, HookAborted), {
                    "__module__": __name__, "__qualname__": cls.__qualname__,
                    "__doc__": cls.__doc__})
                _classes[cls] = made
    return made


def as_hook_abort(error: IronCageError) -> IronCageError:
    """``error`` as an instance of its own class that CrewAI treats as a hook abort."""
    cls = _abort_class(type(error))
    aborted = cls.__new__(cls, *error.args)
    aborted.__dict__.update(error.__dict__)
    aborted.reason = str(error)  # HookAborted's fields, read by CrewAI's deny event
    aborted.source = "iron_sdk"
    return aborted
