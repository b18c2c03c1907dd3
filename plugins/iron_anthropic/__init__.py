"""iron-sdk plugin for the official ``anthropic`` client: inside a protected function every
``messages.create`` (plain and ``stream=True``) and ``messages.stream(...)`` call, sync and
async, the beta resource's too, is governed without any wrapper in user code.
``messages.count_tokens`` is left alone (it generates nothing)."""

from iron_anthropic.wrappers import instrument, uninstrument

__all__ = ["instrument", "uninstrument"]
