"""Typed exceptions. Every governance decision surfaces as one of these, in every mode.

Each error knows its HTTP status and OpenAI-style ``code`` so the router can answer in
the OpenAI error shape and the SDK in HTTP mode can raise the very same exception again
(:func:`error_from_body`).
"""

from __future__ import annotations

from typing import Any, ClassVar

MICRO = 1_000_000


def usd(micro: int) -> float:
    """Micro-dollars to dollars (edges only; inside everything is an integer)."""
    return micro / MICRO


class IronCageError(Exception):
    """Base class of every iron-sdk error."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "runtime_error"
    type: ClassVar[str] = "iron_error"

    def fields(self) -> dict[str, Any]:
        """Structured fields carried over HTTP (never prompt text, PII values or keys)."""
        return {}

    def to_body(self) -> dict[str, Any]:
        """The OpenAI error shape: ``{"error": {"message", "type", "code", ...}}``."""
        return {"error": {"message": str(self), "type": self.type, "code": self.code,
                          "param": None, **self.fields()}}


class InvalidRequestError(IronCageError, ValueError):
    """The request itself is malformed (bad JSON, missing or wrong fields)."""

    status = 400
    code = "invalid_request"
    type = "invalid_request_error"


class InvalidTokenError(IronCageError):
    """The IC token is missing, forged, expired or otherwise unusable."""

    status = 401
    code = "invalid_ic_token"
    type = "authentication_error"


class BudgetExceededError(IronCageError):
    """The call would take a budget past its limit; nothing was sent to the provider."""

    status = 402
    code = "budget_exceeded"
    type = "budget_error"

    def __init__(self, *, scope: str, limit_usd: float, spent_usd: float,
                 requested_usd: float, message: str | None = None) -> None:
        self.scope = scope
        self.limit_usd = limit_usd
        self.spent_usd = spent_usd
        self.requested_usd = requested_usd
        super().__init__(message or (
            f"Budget '{scope}' exceeded: this call needs up to ${requested_usd:.6f} but only "
            f"${max(limit_usd - spent_usd, 0.0):.6f} of ${limit_usd:.6f} is left "
            f"(${spent_usd:.6f} spent or reserved). Raise the limit "
            f"(`iron-runtime budget set ...`), lower max_tokens, or use a cheaper model."))

    def fields(self) -> dict[str, Any]:
        return {"scope": self.scope, "limit_usd": self.limit_usd,
                "spent_usd": self.spent_usd, "requested_usd": self.requested_usd}


class SafetyViolationError(IronCageError):
    """The prompt contains PII or secrets and the safety policy blocks such calls."""

    status = 403
    code = "safety_violation"
    type = "safety_error"

    def __init__(self, kinds: list[str] | tuple[str, ...], message: str | None = None) -> None:
        self.kinds = sorted(set(kinds))
        super().__init__(message or (
            f"Blocked by safety policy: the prompt contains {', '.join(self.kinds)}. "
            "Remove it, or use SafetyConfig(pii='redact') to send it redacted."))

    def fields(self) -> dict[str, Any]:
        return {"kinds": self.kinds}


class RateLimitedError(IronCageError):
    """The agent's rate limit is reached; retry after ``retry_after`` seconds."""

    status = 429
    code = "rate_limited"
    type = "rate_limit_error"

    def __init__(self, retry_after: float, message: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message or f"Rate limit reached; retry after {retry_after:.1f}s.")

    def fields(self) -> dict[str, Any]:
        return {"retry_after": self.retry_after}


class CircuitOpenError(IronCageError):
    """The circuit breaker for this model/provider is open after repeated failures."""

    status = 503
    code = "circuit_open"
    type = "service_unavailable"

    def __init__(self, target: str, retry_after: float, message: str | None = None) -> None:
        self.target = target
        self.retry_after = retry_after
        super().__init__(message or (
            f"Circuit for '{target}' is open after repeated failures; "
            f"retry after {retry_after:.1f}s."))

    def fields(self) -> dict[str, Any]:
        return {"target": self.target, "retry_after": self.retry_after}


class RuntimeUnavailableError(IronCageError):
    """A part the policy needs (ledger, safety layer, router) could not be reached."""

    status = 503
    code = "runtime_unavailable"
    type = "service_unavailable"


class LedgerUnavailableError(RuntimeUnavailableError):
    """The budget ledger could not answer in time; the call was refused (fail closed)."""

    code = "ledger_unavailable"


class UnknownModelPriceError(IronCageError):
    """No price is known for the model, so its cost could not be governed."""

    status = 400
    code = "unknown_model_price"
    type = "invalid_request_error"

    def __init__(self, model: str, message: str | None = None) -> None:
        self.model = model
        super().__init__(message or (
            f"No price is known for model '{model}', so the call was refused rather than "
            "charged $0. Configure one: RuntimeConfig(prices={'"
            f"{model}': {{'input_per_mtok': ..., 'output_per_mtok': ...}}}}) or the "
            "`prices:` section of the router config, or implement the iron_model_price hook."))

    def fields(self) -> dict[str, Any]:
        return {"model": self.model}


class ModelNotFoundError(IronCageError):
    """The router has no route for the requested model."""

    status = 404
    code = "model_not_found"
    type = "invalid_request_error"


class ModelNotAllowedError(IronCageError):
    """The operator's policy does not allow this agent to use the model; nothing was
    reserved or sent."""

    status = 403
    code = "model_not_allowed"
    type = "permission_error"

    def __init__(self, model: str, message: str | None = None) -> None:
        self.model = model
        super().__init__(message or (
            f"Model '{model[:100]}' is not allowed for this agent by the operator's policy "
            "(`iron-runtime policy show NAME` lists the allowed patterns)."))

    def fields(self) -> dict[str, Any]:
        return {"model": self.model}


class AgentDisabledError(IronCageError):
    """The operator switched this agent off (``iron-runtime agent disable NAME``)."""

    status = 403
    code = "agent_disabled"
    type = "permission_error"

    def __init__(self, agent: str, message: str | None = None) -> None:
        self.agent = agent
        super().__init__(message or (
            f"Agent '{agent}' is disabled by the operator; "
            f"`iron-runtime agent enable {agent}` switches it back on."))

    def fields(self) -> dict[str, Any]:
        return {"agent": self.agent}


class ToolNotAllowedError(IronCageError):
    """The operator's policy does not allow this agent to run the tool."""

    status = 403
    code = "tool_not_allowed"
    type = "permission_error"

    def __init__(self, tool: str, message: str | None = None) -> None:
        self.tool = tool
        super().__init__(message or (
            f"Tool '{tool[:100]}' is not allowed for this agent by the operator's policy."))

    def fields(self) -> dict[str, Any]:
        return {"tool": self.tool}


class PolicyViolationError(IronCageError):
    """The agent's code or request asked for a looser policy than the operator's;
    ``field`` names what (e.g. ``safety.pii``, ``max_tokens``)."""

    status = 403
    code = "policy_violation"
    type = "permission_error"

    def __init__(self, field: str, why: str = "", message: str | None = None) -> None:
        self.field = field
        super().__init__(message or (
            f"'{field}' may only tighten the operator's policy{': ' + why if why else ''}. "
            "Change it in the operator's config (RuntimeConfig, the router config, or "
            "`iron-runtime policy set`)."))

    def fields(self) -> dict[str, Any]:
        return {"field": self.field}


class OutsideSessionError(IronCageError):
    """A governed client was used outside any protected function, and the operator's
    policy refuses such calls (``RuntimeConfig(outside_session="refuse")``)."""

    status = 403
    code = "outside_session"
    type = "permission_error"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (
            "This LLM call was made outside any @protect_agent function, and the "
            "operator's policy refuses such calls (outside_session: refuse). Wrap the code "
            "path that makes it in @protect_agent."))


class PayloadTooLargeError(InvalidRequestError):
    """The request body is over the router's size limit."""

    status = 413
    code = "payload_too_large"


class UpstreamUnreachableError(IronCageError):
    """The provider could not be reached (or dropped the connection)."""

    status = 502
    code = "upstream_unreachable"
    type = "upstream_error"


class UpstreamTimeoutError(UpstreamUnreachableError):
    """The provider did not answer in time."""

    status = 504
    code = "upstream_timeout"


_BY_CODE: dict[str, type[IronCageError]] = {
    cls.code: cls for cls in (InvalidRequestError, InvalidTokenError, BudgetExceededError,
                              SafetyViolationError, RateLimitedError, CircuitOpenError,
                              RuntimeUnavailableError, LedgerUnavailableError,
                              UnknownModelPriceError,
                              ModelNotFoundError, ModelNotAllowedError, AgentDisabledError,
                              ToolNotAllowedError, PolicyViolationError, PayloadTooLargeError,
                              OutsideSessionError,
                              UpstreamUnreachableError, UpstreamTimeoutError)
}


def error_from_body(body: dict[str, Any]) -> IronCageError:
    """Rebuild the exception an OpenAI-shaped error body describes (HTTP mode)."""
    err = body.get("error") or {}
    code, message = err.get("code"), err.get("message", "iron runtime error")
    cls = _BY_CODE.get(code or "")
    if cls is BudgetExceededError:
        return BudgetExceededError(scope=err["scope"], limit_usd=err["limit_usd"],
                                   spent_usd=err["spent_usd"],
                                   requested_usd=err["requested_usd"], message=message)
    if cls is SafetyViolationError:
        return SafetyViolationError(err.get("kinds", []), message=message)
    if cls is RateLimitedError:
        return RateLimitedError(err.get("retry_after", 1.0), message=message)
    if cls is CircuitOpenError:
        return CircuitOpenError(err.get("target", ""), err.get("retry_after", 1.0), message)
    if cls is UnknownModelPriceError:
        return UnknownModelPriceError(err.get("model", ""), message=message)
    if cls is ModelNotAllowedError:
        return ModelNotAllowedError(err.get("model", ""), message=message)
    if cls is AgentDisabledError:
        return AgentDisabledError(err.get("agent", ""), message=message)
    if cls is ToolNotAllowedError:
        return ToolNotAllowedError(err.get("tool", ""), message=message)
    if cls is PolicyViolationError:
        return PolicyViolationError(str(err.get("field", "")), message=message)
    if cls is None:
        return IronCageError(message)
    return cls(message)
