"""HTTP error responses in the OpenAI error shape, shared by every router endpoint."""

from __future__ import annotations

from starlette.responses import JSONResponse

from iron_sdk.errors import InvalidRequestError, IronCageError, RateLimitedError


def error_response(exc: IronCageError) -> JSONResponse:
    """``{"error": {"message", "type", "code", ...}}`` with the error's status."""
    headers = {}
    retry_after = getattr(exc, "retry_after", None)
    if isinstance(exc, RateLimitedError) or retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after or 1)))
    return JSONResponse(exc.to_body(), status_code=exc.status, headers=headers)


def invalid(message: str, status: int = 400) -> JSONResponse:
    """A client mistake (bad JSON, wrong field) as a 400 ``invalid_request``."""
    response = error_response(InvalidRequestError(message))
    response.status_code = status
    return response
