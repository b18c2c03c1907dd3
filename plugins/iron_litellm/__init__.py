"""iron-sdk plugin for LiteLLM.

- SDK: inside a protected function every ``litellm.completion``/``acompletion`` call
  (sync, async, streamed) is governed without any callback in user code;
  :class:`IronLiteLLM` is the callback to add to ``litellm.callbacks`` explicitly.
- Proxy: ``litellm_settings: callbacks: iron_litellm.proxy.handler`` in the proxy's
  ``config.yaml`` governs every proxied request (:mod:`iron_litellm.proxy`).

Importing this package does not import litellm (names load on first use).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {"IronLiteLLM": "iron_litellm.callback", "instrument": "iron_litellm.sdk",
            "uninstrument": "iron_litellm.sdk"}

__all__ = ["IronLiteLLM", "instrument", "uninstrument"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'iron_litellm' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


if TYPE_CHECKING:
    from iron_litellm.callback import IronLiteLLM
    from iron_litellm.sdk import instrument, uninstrument
