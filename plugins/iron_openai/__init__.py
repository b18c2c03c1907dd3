"""iron-sdk plugin for the official ``openai`` client: inside a protected function every
``chat.completions.create``/``parse``, ``responses.create``/``parse`` and
``embeddings.create`` call (sync, async, streamed) is governed without any wrapper in
user code."""

from iron_openai.wrappers import instrument, uninstrument

__all__ = ["instrument", "uninstrument"]
