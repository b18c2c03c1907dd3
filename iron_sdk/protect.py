"""``@protect_agent``: every invocation of the decorated function is a governed session."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar, overload

from iron_sdk.propagation import install as install_propagation
from iron_sdk.session import Session, _current

if TYPE_CHECKING:
    from iron_sdk.config import BudgetConfig, ReliabilityConfig, SafetyConfig
    from iron_sdk.policy.model import Policy

F = TypeVar("F", bound=Callable[..., Any])


@overload
def protect_agent(fn: F, /) -> F: ...
@overload
def protect_agent(ic_token: str | None = None, *, agent_id: str | None = None,
                  budget_usd: float | None = None, budget: BudgetConfig | None = None,
                  safety: SafetyConfig | None = None,
                  reliability: ReliabilityConfig | None = None,
                  policy: Policy | dict[str, Any] | None = None) -> Callable[[F], F]: ...


def protect_agent(ic_token: Any = None, *, agent_id: str | None = None,
                  budget_usd: float | None = None, budget: BudgetConfig | None = None,
                  safety: SafetyConfig | None = None,
                  reliability: ReliabilityConfig | None = None,
                  policy: Policy | dict[str, Any] | None = None) -> Any:
    """Put every LLM call the function makes under policy.

    Works bare (``@protect_agent``) or called, on plain, async, generator and async
    generator functions. ``ic_token`` names an agent whose budget lives in the ledger;
    without one the agent is ``agent_id`` or the function's qualified name.
    ``budget_usd`` caps each invocation. The token is checked at call time.
    ``policy`` (a :class:`~iron_sdk.policy.Policy` or its fields: ``models``, ``tools``,
    ``rpm``, ...) is what this code asks for itself: it only ever tightens the
    operator's policy, the strictest value of every layer wins.
    """
    bare = callable(ic_token)  # @protect_agent without arguments
    protector = _Protector(dict(
        ic_token=None if bare else ic_token, agent_id=agent_id, budget_usd=budget_usd,
        budget=budget, safety=safety, reliability=reliability, policy=policy))
    return protector(ic_token) if bare else protector


class _Protector:
    def __init__(self, options: dict[str, Any]) -> None:
        """``options``: ``protect_agent``'s arguments, passed on to ``open_session``."""
        budget_usd = options["budget_usd"]
        if budget_usd is not None and budget_usd <= 0:
            raise ValueError("budget_usd must be positive")
        if options["policy"] is not None:  # checked when decorating: a typo fails at import
            from iron_sdk.policy.model import as_policy

            options["policy"] = as_policy(options["policy"])
        self.options = options
        from iron_sdk.plugins import instrument_frameworks

        instrument_frameworks()  # clients already imported are governed from now on

    def _open(self, fn: Callable[..., Any]) -> Session:
        from iron_sdk.runtime import get_runtime  # the runtime loads on first use

        install_propagation()  # threads and pool tasks started in the session run in it
        opts = self.options
        agent = opts["agent_id"] or (None if opts["ic_token"] else fn.__qualname__)
        return get_runtime().open_session(agent, **{k: v for k, v in opts.items()
                                                    if k != "agent_id"})

    def __call__(self, fn: F) -> F:
        open_session = functools.partial(self._open, fn)
        if inspect.isasyncgenfunction(fn):
            wrapper = _wrap_async_gen(fn, open_session)
        elif inspect.iscoroutinefunction(fn):
            wrapper = _wrap_async(fn, open_session)
        elif inspect.isgeneratorfunction(fn):
            wrapper = _wrap_gen(fn, open_session)
        else:
            wrapper = _wrap_sync(fn, open_session)
        return functools.wraps(fn)(wrapper)  # type: ignore[return-value]


def _wrap_sync(fn: Callable[..., Any], open_session: Callable[[], Session]) -> Any:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        session = open_session()
        token = _current.set(session)
        error: BaseException | None = None
        try:
            return fn(*args, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _current.reset(token)
            session.runtime.close_session(session, error)
    return wrapper


def _wrap_async(fn: Callable[..., Any], open_session: Callable[[], Session]) -> Any:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        session = open_session()
        token = _current.set(session)
        error: BaseException | None = None
        try:
            return await fn(*args, **kwargs)
        except BaseException as exc:
            error = exc
            raise
        finally:
            _current.reset(token)
            session.runtime.close_session(session, error)
    return wrapper


def _wrap_gen(fn: Callable[..., Any], open_session: Callable[[], Session]) -> Any:
    # The session is current only while the generator's own code runs (each step),
    # never in the consumer's code between items.
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        session = open_session()
        error: BaseException | None = None
        token = _current.set(session)
        try:
            gen = fn(*args, **kwargs)
        finally:
            _current.reset(token)
        try:
            send: Any = None
            throw: BaseException | None = None
            while True:
                token = _current.set(session)
                try:
                    item = gen.throw(throw) if throw is not None else gen.send(send)
                except StopIteration as stop:
                    return stop.value
                finally:
                    _current.reset(token)
                throw = None
                try:
                    send = yield item
                except GeneratorExit:
                    gen.close()
                    raise
                except BaseException as exc:
                    throw = exc
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):
                error = exc
            raise
        finally:
            session.runtime.close_session(session, error)
    return wrapper


def _wrap_async_gen(fn: Callable[..., Any], open_session: Callable[[], Session]) -> Any:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        session = open_session()
        error: BaseException | None = None
        token = _current.set(session)
        try:
            agen = fn(*args, **kwargs)
        finally:
            _current.reset(token)
        try:
            send: Any = None
            throw: BaseException | None = None
            while True:
                token = _current.set(session)
                try:
                    if throw is not None:
                        item = await agen.athrow(throw)
                    else:
                        item = await agen.asend(send)
                except StopAsyncIteration:
                    return
                finally:
                    _current.reset(token)
                throw = None
                try:
                    send = yield item
                except GeneratorExit:
                    await agen.aclose()
                    raise
                except BaseException as exc:
                    throw = exc
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit):
                error = exc
            raise
        finally:
            session.runtime.close_session(session, error)
    return wrapper
