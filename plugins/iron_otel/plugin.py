"""Entry point (group ``iron_sdk``): turns the telemetry on when OpenTelemetry is wanted.

Only ``iron_configure`` lives here, so when the plugin stays off nothing of it runs per
call and ``opentelemetry`` is never imported.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from typing import TYPE_CHECKING

from iron_sdk.hookspecs import hookimpl

if TYPE_CHECKING:
    from iron_sdk.runtime import Runtime

log = logging.getLogger("iron_sdk.otel")
PLUGIN_NAME = "iron.otel"
_EXPORTER_ENV = ("OTEL_TRACES_EXPORTER", "OTEL_METRICS_EXPORTER")


def wanted() -> bool:
    """The SDK is installed and not disabled by ``OTEL_SDK_DISABLED``."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    try:
        importlib.metadata.version("opentelemetry-sdk")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@hookimpl
def iron_configure(runtime: Runtime) -> None:
    if runtime.pm.has_plugin(PLUGIN_NAME) or not wanted():
        return
    from iron_otel.telemetry import GenAiTelemetry, providers_configured

    if not providers_configured():
        if not any(os.environ.get(name) for name in _EXPORTER_ENV):
            return  # nobody collects telemetry in this process: stay off the hot path
        try:  # what opentelemetry-instrument does: providers from the OTEL_* environment
            from opentelemetry.sdk._configuration import _OTelSDKConfigurator

            _OTelSDKConfigurator().configure()
        except Exception:
            log.exception("OpenTelemetry could not be set up from the OTEL_* environment")
            return
    runtime.pm.register(GenAiTelemetry(), name=PLUGIN_NAME)
