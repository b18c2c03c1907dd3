"""HTTP mode: the runtime's door interface served by the router's runtime API.

With ``IRON_RUNTIME_URL`` set, :func:`iron_sdk.runtime.get_runtime` returns a
:class:`RemoteRuntime`: ``@protect_agent``, ``llm_call`` and every plugin drive it exactly
as they drive the in-process :class:`~iron_sdk.runtime.Runtime`. The router decides
(reserve, redact, block) and accounts; the agent's own LLM request still goes from the
agent to its provider. Governance errors come back as the very same exceptions
(:func:`~iron_sdk.errors.error_from_body`).

When the router cannot be reached, the session's ``BudgetConfig.on_ledger_error`` decides
as in library mode: ``"closed"`` raises :class:`RuntimeUnavailableError` naming the URL;
``"open"`` (the default) lets calls proceed without budget or audit, with one logged
warning. Safety still fails closed: prompts are then scanned (redacted or blocked) here.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit, urlunsplit

from iron_sdk.call import LlmCall, ToolCall, Usage, new_id
from iron_sdk.config import BudgetConfig, ReliabilityConfig, RuntimeConfig, SafetyConfig
from iron_sdk.errors import (
    InvalidRequestError,
    InvalidTokenError,
    IronCageError,
    PolicyViolationError,
    RuntimeUnavailableError,
    SafetyViolationError,
    error_from_body,
)
from iron_sdk.plugins import call_each, call_in_order
from iron_sdk.remote_transport import Connection, ProtocolError
from iron_sdk.session import Session
from iron_sdk.usage import usage_to_dict

if TYPE_CHECKING:
    from iron_sdk.events import Event
    from iron_sdk.policy.model import Policy
    from iron_sdk.pricing import ModelPrice
    from iron_sdk.request import LlmRequest

log = logging.getLogger("iron_sdk.remote")

_LOCAL = "local-"  # id prefix of sessions and calls made while the router was unreachable


class _Unreachable(Exception):
    """The router did not answer as a router: the fail-open/closed policy applies."""

    def __init__(self, error: RuntimeUnavailableError) -> None:
        super().__init__(str(error))
        self.error = error


def _jsonable(obj: Any) -> Any:
    """``json.dumps`` fallback: pydantic objects (openai messages) as dicts; anything
    else that is not data (client sentinels such as ``NOT_GIVEN``, timeouts, files) as
    null: the runtime reads texts and limits, never those."""
    dump = getattr(obj, "model_dump", None)
    if dump is not None:
        return dump(mode="json", exclude_none=True)
    return None


# Built once: json.dumps/loads with options build an encoder per call (~1.5 µs each).
_encode = json.JSONEncoder(separators=(",", ":"), default=_jsonable).encode
_decode = json.JSONDecoder().decode


def _safe_url(url: str) -> str:
    """The URL without credentials, fit for messages and logs."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


class RemoteRuntime:
    """Client of the router's runtime API (``/v1/runtime/...``). Thread-safe; one per
    process (:func:`~iron_sdk.runtime.get_runtime`). Sessions and calls it returns are the
    same :class:`Session` and :class:`LlmCall` objects as in library mode, their budget
    state mirrored from each response.

    Plugins registered in this process see the same hook sequence as in library mode:
    the router's events for each call are replayed to ``iron_event`` here, and
    ``iron_llm_request`` (the decision already taken), ``iron_llm_response`` and
    ``iron_llm_error`` run here after the router's answer."""

    def __init__(self, url: str, *, timeout_s: float = 5.0, connect_timeout_s: float = 1.0,
                 plugins: tuple[object, ...] = (), load_entry_points: bool = True) -> None:
        self.url = _safe_url(url.rstrip("/"))
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidRequestError(
                f"IRON_RUNTIME_URL must be http://HOST:PORT (got {self.url!r}).")
        self._tls = parts.scheme == "https"
        self._address = (parts.hostname, parts.port or (443 if self._tls else 80))
        self._host_header = parts.netloc.rsplit("@", 1)[-1]
        self._path = parts.path.rstrip("/") + "/v1/runtime"
        self._timeout, self._connect_timeout = timeout_s, connect_timeout_s
        self._local = threading.local()
        self._degraded = False  # warned that the router is unreachable
        self._prices: dict[str, ModelPrice] = {}
        self._sessions: weakref.WeakValueDictionary[str, Session] = (
            weakref.WeakValueDictionary())
        self._outside: Session | None = None
        self._outside_lock = threading.Lock()
        self._configs: dict[str, tuple[dict[str, Any], Any]] = {}
        self._safety: Any = None  # local safety policy, for calls made while unreachable
        # SDK-side plugins: framework integrations install themselves on session start
        # here, in the agent's process; the policies themselves run in the router.
        self.config = RuntimeConfig(load_entry_points=load_entry_points, audit=False)
        self.pm = _local_manager(load_entry_points, plugins)
        self.hook = self.pm.hook
        self.hook.iron_configure(runtime=self)

    # -- transport ----------------------------------------------------------------------
    def _connection(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is None or conn.sock is None or conn.pid != os.getpid():  # or forked child
            conn = self._local.conn = Connection(self._address, self._tls,
                                                  self._connect_timeout, self._timeout)
        elif conn.busy:
            # Re-entered mid-request on this thread: a stream dropped by the garbage
            # collector settles itself from __del__. Use a connection of its own.
            conn = Connection(self._address, self._tls, self._connect_timeout,
                               self._timeout, keep=False)
        return conn

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 token: str | None = None) -> dict[str, Any]:
        """One runtime API request; raises the router's error or :class:`_Unreachable`."""
        try:
            content = b"" if body is None else _encode(body).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidRequestError(
                f"The call cannot be sent to the iron runtime: {exc}.") from None
        auth = ""
        if token:
            if not token.isascii() or not token.isprintable() or " " in token:
                raise InvalidTokenError("The IC token is not valid here (malformed): it is "
                                        "not a token issued by `iron-runtime token issue`.")
            auth = f"Authorization: Bearer {token}\r\n"
        request = (f"{method} {self._path}{path} HTTP/1.1\r\nHost: {self._host_header}\r\n"
                   f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n"
                   f"{auth}\r\n").encode() + content
        for attempt in (1, 2):
            reused = False
            try:
                conn = self._connection()
                reused = conn.used
                status, raw = conn.exchange(request)
                break
            except (OSError, ProtocolError) as exc:  # exchange() closed the connection
                # A kept-alive connection the router closed meanwhile: reconnect once.
                if attempt == 1 and reused and isinstance(exc, ConnectionError):
                    continue
                raise self._unreachable(f"{type(exc).__name__}: {exc}") from None
        try:
            data = _decode(raw.decode("utf-8"))
        except ValueError:  # UnicodeDecodeError is one too
            data = None
        if status == 200 and isinstance(data, dict):
            if self._degraded:
                self._degraded = False
                log.warning("iron runtime at %s is reachable again", self.url)
            return data
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            if data["error"].get("code") == "session_not_found":
                raise RuntimeUnavailableError(f"{data['error'].get('message')} (the iron "
                                              f"runtime at {self.url})")
            raise error_from_body(data)
        raise self._unreachable(f"HTTP {status} from {method} {path}, which is not an "
                                "iron runtime API answer")

    def _unreachable(self, why: str) -> _Unreachable:
        return _Unreachable(RuntimeUnavailableError(
            f"The iron runtime at {self.url} (IRON_RUNTIME_URL) is unreachable ({why}). "
            "Start it with `iron-runtime --mode=router`, or unset IRON_RUNTIME_URL to run "
            "the runtime in-process."))

    def _fail_open(self, budget: BudgetConfig, exc: _Unreachable) -> None:
        """Apply ``on_ledger_error``: raise when closed, else warn (once) and go on."""
        if budget.on_ledger_error == "closed":
            raise exc.error from None
        self._warn(exc)

    def _warn(self, exc: _Unreachable) -> None:
        if not self._degraded:
            self._degraded = True
            log.warning("%s Proceeding without budget enforcement or audit "
                        "(on_ledger_error='open'); prompts are still scanned locally.",
                        exc.error)

    # -- sessions -----------------------------------------------------------------------
    def open_session(self, agent_id: str | None = None, *, ic_token: str | None = None,
                     budget_usd: float | None = None, budget: BudgetConfig | None = None,
                     safety: SafetyConfig | None = None,
                     reliability: ReliabilityConfig | None = None,
                     scopes: tuple[str, ...] = (), policy: Policy | None = None) -> Session:
        """Open a session in the router (which verifies ``ic_token``). Extra ``scopes``
        cannot cross the runtime API: the router takes scopes from the token and its own
        config only. ``policy`` is sent for the router to apply (it only tightens)."""
        if scopes:
            raise PolicyViolationError("scopes", "over the runtime API, budget scopes come "
                                       "from the IC token and the router's config only")
        body: dict[str, Any] = {}
        if agent_id is not None:
            body["agent_id"] = agent_id
        if budget_usd is not None:
            body["budget_usd"] = budget_usd
        for name, cfg in (("budget", budget), ("safety", safety),
                          ("reliability", reliability)):
            if cfg is not None:
                body[name] = cfg.model_dump(mode="json", exclude_defaults=True)
        if policy is not None:
            from iron_sdk.policy.model import as_policy  # the policy package, only if asked

            policy = as_policy(policy)
            assert policy is not None
            body["policy"] = policy.model_dump(mode="json", exclude_none=True)
        try:
            reply = self._request("POST", "/sessions", body, ic_token)
        except _Unreachable as exc:
            self._fail_open(budget or BudgetConfig(), exc)
            session = _local_session(self, agent_id, ic_token, budget_usd, budget, safety,
                                     reliability)
            session.policy = policy
        else:
            session = Session(
                agent_id=reply["agent_id"], runtime=self,
                budget=self._config("budget", BudgetConfig, reply),
                safety=self._config("safety", SafetyConfig, reply),
                reliability=self._config("reliability", ReliabilityConfig, reply),
                scopes=tuple(reply["scopes"]), cap_micro=reply["cap_micro"],
                session_id=reply["session_id"], claims=reply["claims"], token=ic_token,
                policy=policy)
            self._sessions[session.session_id] = session
            _mirror(session, reply["session"])
        self.hook.iron_session_start(session=session)
        return session

    def outside_session(self) -> Session:
        """The session of calls made outside any protected function, opened in the
        router for ``$IRON_AGENT`` (else "unattributed") with the token in
        ``$IRON_IC_TOKEN``/``$IC_TOKEN``: the router's operator decides whether it may
        exist."""
        session = self._outside
        if session is None:
            with self._outside_lock:
                session = self._outside
                if session is None:
                    token = os.environ.get("IRON_IC_TOKEN") or os.environ.get("IC_TOKEN")
                    session = self._outside = self.open_session(
                        None if token else self.config.default_agent_id(), ic_token=token)
        return session

    def _config(self, name: str, model: Any, reply: dict[str, Any]) -> Any:
        """The router's effective config, validated once per distinct value."""
        raw = reply[name]
        cached = self._configs.get(name)
        if cached is None or cached[0] != raw:
            cached = self._configs[name] = (raw, model.model_validate(raw))
        return cached[1]

    def close_session(self, session: Session, error: BaseException | None = None) -> None:
        try:
            if not session.session_id.startswith(_LOCAL):
                reply = self._request("DELETE", f"/sessions/{session.session_id}",
                                      _error_body(error) if error is not None else None,
                                      session.token)
                _mirror(session, reply["session"])
        except (_Unreachable, IronCageError) as exc:
            log.warning("could not close session %s in the iron runtime: %s",
                        session.session_id, exc)
        finally:
            self.hook.iron_session_end(session=session, error=error)

    # -- model calls --------------------------------------------------------------------
    def begin_call(self, session: Session, request: LlmRequest, *, model: str | None = None,
                   source: str = "sdk", provider: str = "", can_redact: bool = True,
                   redact_hint: str | None = None) -> LlmCall:
        """The router runs the request policies; its redactions are written back into
        ``request`` (a redaction this integration cannot write back blocks the call)."""
        model = model or request.model
        if session.session_id.startswith(_LOCAL):
            return self._local_call(session, request, model, source, provider, can_redact,
                                    redact_hint)
        body: dict[str, Any] = {"session_id": session.session_id, "kind": request.kind,
                                "request": request.body}
        if model != request.model:
            body["model"] = model
        if source != "sdk":
            body["source"] = source
        if provider:
            body["provider"] = provider
        if not can_redact:
            body["can_redact"] = False
            body["redact_hint"] = redact_hint
        self._with_events(body)
        try:
            reply = self._request("POST", "/calls", body, session.token)
        except _Unreachable as exc:
            self._fail_open(session.budget, exc)
            return self._local_call(session, request, model, source, provider, can_redact,
                                    redact_hint)
        _mirror(session, reply["session"])
        call = LlmCall(session=session, model=model, request=request, source=source,
                       provider=reply["provider"], can_redact=can_redact,
                       redact_hint=redact_hint, call_id=reply["call_id"])
        call.input_tokens_est = reply["input_tokens_est"]
        call.max_output_tokens = reply["max_output_tokens"]
        call.reserved_micro = reply["reserved_micro"]
        call.findings = reply["findings"]
        call.redacted = reply["redacted"]
        self._replay(reply)
        try:
            for path, value in reply["edits"]:
                if not request.can_write(tuple(path)):
                    raise SafetyViolationError(call.findings, message=(
                        f"The request contains {', '.join(call.findings)} in a field this "
                        "integration cannot rewrite, so it was not sent."))
                request.replace(tuple(path), value)
            for name, value in (reply.get("fields") or {}).items():
                if name in request.body and request.body[name] == value:
                    continue
                request.set_field(name, value)  # e.g. the operator's output limit
                if name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
                    request.max_tokens = value
            call_in_order(self.pm, "iron_llm_request", call=call)  # this process's plugins
        except BaseException as exc:
            self.fail_call(call, exc)
            call.outcome = "blocked"
            raise
        return call

    def _local_call(self, session: Session, request: LlmRequest, model: str, source: str,
                    provider: str, can_redact: bool, redact_hint: str | None) -> LlmCall:
        """A call made while the router is unreachable: no budget, but safety still
        applies (it fails closed), with this process's detectors."""
        if not isinstance(model, str) or not model:
            raise InvalidRequestError("'model' must be a non-empty string.")
        call = LlmCall(session=session, model=model, request=request, source=source,
                       provider=provider, can_redact=can_redact, redact_hint=redact_hint,
                       call_id=_LOCAL + new_id())
        if self._safety is None:
            from iron_sdk.policies.safety import SafetyPolicy

            policy = SafetyPolicy()
            policy.iron_configure(runtime=self)  # type: ignore[arg-type]
            self._safety = policy
        self._safety.iron_llm_request(call=call)
        return call

    def settle_call(self, call: LlmCall, usage: Usage) -> LlmCall:
        """Charge ``usage`` in the router. Never raises: the provider has answered."""
        if call.outcome != "pending":
            return call  # each request is charged once
        call.usage = usage
        call.outcome = "completed"
        if call.call_id.startswith(_LOCAL):
            with call.session.lock:
                call.session.calls += 1
            return call
        try:
            reply = self._request("POST", f"/calls/{call.call_id}/settle",
                                  self._with_events({"usage": usage_to_dict(usage)}),
                                  call.session.token)
        except (_Unreachable, IronCageError) as exc:
            log.error("iron runtime could not settle call %s (%s in, %s out tokens): %s",
                      call.call_id, usage.input_tokens, usage.output_tokens, exc)
            return call
        call.cost_micro = reply["cost_micro"]
        call.outcome = reply["outcome"]
        _mirror(call.session, reply["session"])
        call_each(self.pm, "iron_llm_response", self._plugin_failed, call=call)
        self._replay(reply)
        return call

    def fail_call(self, call: LlmCall, error: BaseException) -> None:
        """Release the call's reservation in the router. Never raises."""
        if call.outcome != "pending":
            return
        call.outcome = "failed"
        if call.call_id.startswith(_LOCAL):
            return
        try:
            reply = self._request("POST", f"/calls/{call.call_id}/fail",
                                  self._with_events(_error_body(error)), call.session.token)
        except (_Unreachable, IronCageError) as exc:
            log.warning("iron runtime could not release call %s (its lease frees it): %s",
                        call.call_id, exc)
            return
        call.reserved_micro = 0
        _mirror(call.session, reply["session"])
        call_each(self.pm, "iron_llm_error", self._plugin_failed, call=call, error=error)
        self._replay(reply)

    def _with_events(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body``, asking the router not to send the call's events back when no plugin
        in this process has an ``iron_event`` to replay them to."""
        if not self.hook.iron_event.get_hookimpls():
            body["events"] = False
        return body

    def _replay(self, reply: dict[str, Any]) -> None:
        """The router's events of this call, to this process's sinks."""
        for event in reply.get("events") or ():
            call_each(self.pm, "iron_event", self._plugin_failed, event=event)

    def _plugin_failed(self, plugin: str, hook: str, exc: BaseException,
                       call: LlmCall | None) -> None:
        log.error("plugin %s failed in %s (%s); the pipeline went on", plugin, hook,
                  type(exc).__name__)
        if call is not None and hook != "iron_event":
            from iron_sdk.events import make_event

            self.emit(make_event("plugin_failed", plugin=plugin[:200], hook=hook,
                                 error=type(exc).__name__, call_id=call.call_id,
                                 session_id=call.session.session_id))

    # -- tools --------------------------------------------------------------------------
    def begin_tool(self, session: Session, name: str, arguments: Any = None,
                   source: str = "sdk") -> ToolCall:
        tool = ToolCall(session=session, name=name, arguments=arguments, source=source,
                        call_id=_LOCAL + new_id())
        if not session.session_id.startswith(_LOCAL):
            try:
                reply = self._request("POST", "/tools", {
                    "session_id": session.session_id, "name": name,
                    "arguments": _plain(arguments), "source": source}, session.token)
            except _Unreachable as exc:
                self._warn(exc)  # tools touch no budget: audit is lost, the tool runs
            else:
                tool.call_id = reply["tool_id"]
        return tool

    def end_tool(self, call: ToolCall, result: Any = None,
                 error: BaseException | None = None) -> None:
        call.error = error
        if call.call_id.startswith(_LOCAL):
            return
        body = _error_body(error) if error is not None else {}
        body["result"] = _plain(result)
        try:
            self._request("POST", f"/tools/{call.call_id}/end", body, call.session.token)
        except (_Unreachable, IronCageError) as exc:
            log.warning("iron runtime could not record the end of tool %s: %s", call.name, exc)

    # -- shared services ----------------------------------------------------------------
    def price(self, model: str) -> ModelPrice:
        """The price the router charges for ``model`` (raises UnknownModelPriceError)."""
        price = self._prices.get(model)
        if price is None:
            from iron_sdk.pricing import ModelPrice

            try:
                reply = self._request("GET", f"/prices/{quote(model, safe='/')}")
            except _Unreachable as exc:
                raise exc.error from None
            price = self._prices[model] = ModelPrice(**reply)
        return price

    def emit(self, event: Event) -> None:
        """Forward an SDK-side event (e.g. ``usage_missing``) to the router's sinks."""
        session = self._sessions.get(str(event.get("session_id")))
        call_each(self.pm, "iron_event", self._plugin_failed, event=event)
        if session is None or session.session_id.startswith(_LOCAL):
            return
        try:
            self._request("POST", "/events", event, session.token)
        except (_Unreachable, IronCageError) as exc:
            log.debug("event %s not recorded: %s", event.get("type"), exc)

    def flush(self) -> None:
        """Wait until the router has written every settlement and audit line so far."""
        try:
            self._request("POST", "/flush")
        except _Unreachable as exc:
            raise exc.error from None

    def close(self) -> None:
        """Close the connections (the router and its sessions live on)."""
        self.hook.iron_unconfigure(runtime=self)
        self.close_connection()  # other threads' connections close when their threads end

    def close_connection(self) -> None:
        """Close this thread's connection to the router (the next request reconnects)."""
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()


def _local_manager(load_entry_points: bool, plugins: tuple[object, ...]) -> Any:
    import pluggy

    from iron_sdk import hookspecs
    from iron_sdk.plugins import ENTRY_POINT_GROUP

    pm = pluggy.PluginManager("iron_sdk")
    pm.add_hookspecs(hookspecs)
    for plugin in plugins:
        pm.register(plugin)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def _mirror(session: Session, state: dict[str, Any]) -> None:
    """Adopt the router's budget state of the session, unless a newer one was seen
    (concurrent calls of one session may answer out of order)."""
    with session.lock:
        if state["seq"] > session.__dict__.get("_remote_seq", 0):
            session.__dict__["_remote_seq"] = state["seq"]
            session.spent_micro = state["spent_micro"]
            session.reserved_micro = state["reserved_micro"]
            session.calls = state["calls"]


def _error_body(error: BaseException) -> dict[str, Any]:
    """What the router needs to treat the error as library mode would (never its text)."""
    status = getattr(error, "status_code", None)
    return {"error": type(error).__name__,
            "status": status if type(status) is int else None,
            "governance": isinstance(error, IronCageError)}


def _plain(value: Any) -> Any:
    """A tool's arguments or result as JSON (their text form when not JSON-able)."""
    try:
        json.dumps(value, default=_jsonable)
    except (TypeError, ValueError):
        return str(value)
    return value


def _local_session(runtime: RemoteRuntime, agent_id: str | None, ic_token: str | None,
                   budget_usd: float | None, budget: BudgetConfig | None,
                   safety: SafetyConfig | None,
                   reliability: ReliabilityConfig | None) -> Session:
    """A session of this process only, while the router is unreachable."""
    if not agent_id and ic_token:
        try:
            import jwt  # the router verifies tokens; here we only read the agent's name

            agent_id = jwt.decode(ic_token, options={"verify_signature": False}).get("sub")
        except Exception:
            agent_id = None
    if not agent_id:
        raise InvalidRequestError("A session needs an agent_id or an IC token.")
    return Session(agent_id=agent_id, runtime=runtime, token=ic_token,
                   budget=budget or BudgetConfig(), safety=safety or SafetyConfig(),
                   reliability=reliability or ReliabilityConfig(),
                   cap_micro=None if budget_usd is None else round(budget_usd * 1_000_000),
                   session_id=_LOCAL + new_id())
