"""iron-sdk plugin for LangChain: inside a protected function every LangChain model and
tool run is governed without any callback, wrapper or middleware in user code.

Which path does what (each provider request is charged exactly once):

* ``ChatOpenAI`` and other ``BaseChatOpenAI`` models: the openai-client plugin governs the
  request at the client — blocks, **redacts**, charges the exact usage (streams too).
* Every other model (other providers, legacy LLMs like ``langchain_openai.OpenAI``):
  :class:`IronCallbackHandler`, attached automatically — blocks before the request is
  sent and charges from ``usage_metadata``/``token_usage``. A callback cannot rewrite a
  prompt, so where the policy would redact, it refuses the call instead.
* :func:`governed` (``IronChatModel``) and :class:`IronMiddleware` (``create_agent``):
  govern and **redact** at the LangChain level, for any chat model; the model beneath runs
  under ``outer_governed()`` so nothing else charges it again.
* Tools: audited through the handler (``runtime.begin_tool``/``end_tool``, ``tool_called``).

``IronCallbackHandler(agent_id=..., budget_usd=...)`` also governs code outside protected
functions when passed as a callback. Names load lazily: importing this package (as the
entry point does) never imports LangChain.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "IronCallbackHandler": "iron_langchain.callbacks",
    "instrument": "iron_langchain.callbacks",
    "IronChatModel": "iron_langchain.model",
    "governed": "iron_langchain.model",
    "IronMiddleware": "iron_langchain.middleware",
}
__all__ = ["IronCallbackHandler", "IronChatModel", "IronMiddleware", "governed", "instrument"]
assert sorted(__all__) == sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'iron_langchain' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from iron_langchain.callbacks import IronCallbackHandler, instrument
    from iron_langchain.middleware import IronMiddleware
    from iron_langchain.model import IronChatModel, governed
