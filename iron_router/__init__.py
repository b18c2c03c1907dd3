"""iron-sdk's router: ``iron-runtime --mode=router`` serves the runtime over HTTP.

Door 3 is an OpenAI-compatible API (any OpenAI client or framework points its base URL
here and uses its IC token as the API key); door 2 is the runtime API the SDK uses when
``IRON_RUNTIME_URL`` is set. Names are imported on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "iron_router.app",
    "RouterConfig": "iron_router.config",
    "load_config": "iron_router.config",
    "serve": "iron_router.server",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'iron_router' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
