"""iron-sdk plugin for OpenTelemetry: one GenAI client span per governed model call (the
GenAI semantic conventions plus ``iron.*`` attributes for budget and safety decisions),
the GenAI client metrics and a cost counter.

Installed with the ``otel`` extra; it uses the process's OpenTelemetry providers, set up
by the application or by ``opentelemetry-instrument`` from the standard ``OTEL_*``
environment. Off, without importing OpenTelemetry, when the SDK is not installed or
``OTEL_SDK_DISABLED=true``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["GenAiTelemetry"]

if TYPE_CHECKING:
    from iron_otel.telemetry import GenAiTelemetry


def __getattr__(name: str) -> Any:
    # Imported on use: the entry point (iron_otel.plugin) must not import opentelemetry.
    if name == "GenAiTelemetry":
        from iron_otel.telemetry import GenAiTelemetry

        return GenAiTelemetry
    raise AttributeError(f"module 'iron_otel' has no attribute {name!r}")
