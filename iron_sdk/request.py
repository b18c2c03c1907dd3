"""The request model: one reading of every model request, for every door and plugin.

:func:`read_request` turns the fields of a request (the keyword arguments of a client
call, or a JSON body) of any shape the project governs — chat completions, the Responses
API, embeddings, legacy completions, Anthropic messages — into an :class:`LlmRequest`:

- every text that leaves the machine, wherever it sits (message content and parts,
  tool-call arguments, names, refusals, tool and schema descriptions, ``user``,
  ``metadata``, Responses items, Anthropic blocks...), each with its path in the body
  so a redacted value is written back into the exact field it came from;
- the output the call can generate: the output limit × ``n`` (× ``best_of``);
- images, audio and files, which are priced by the provider but carry no text to scan.

Texts are found by walking the body, not by listing fields: whatever a new API version
adds is scanned too. Only keys that hold no prose (ids, enums, numbers, base64 payloads)
are passed over. Writing back copies each container on the path once (never the
caller's objects: a history list, a message dict or a pydantic message of a previous
reply stay as they were).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from iron_sdk.errors import InvalidRequestError

Kind = Literal["chat", "responses", "embedding", "completion", "anthropic"]
KINDS: frozenset[str] = frozenset({"chat", "responses", "embedding", "completion",
                                   "anthropic"})
Path = tuple[str | int, ...]

# Top-level fields that carry no text leaving the machine (numbers, enums, transport
# options of the client libraries, litellm/proxy bookkeeping).
_SKIP_TOP = frozenset({
    "model", "stream", "stream_options", "n", "best_of", "max_tokens",
    "max_completion_tokens", "max_output_tokens", "temperature", "top_p", "top_k", "seed",
    "logit_bias", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
    "parallel_tool_calls", "service_tier", "store", "reasoning_effort", "reasoning",
    "modalities", "encoding_format", "dimensions", "timeout", "extra_headers",
    "extra_query", "background", "truncation", "include", "previous_response_id",
    "thinking", "audio", "api_key", "api_base", "base_url", "api_version", "callbacks",
    "litellm_call_id", "litellm_logging_obj", "proxy_server_request", "litellm_metadata",
    "drop_params", "num_retries", "mock_response", "caching", "acompletion",
})
# Keys anywhere below that hold identifiers, enums or base64 payloads, never prose.
_SKIP_KEY = frozenset({
    "type", "role", "id", "tool_call_id", "call_id", "detail", "format", "media_type",
    "mime_type", "data", "file_data", "file_id", "encrypted_content", "cache_control",
    "status", "signature", "voice",
})
# Where the output limit sits, per kind (first present wins).
_OUTPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "chat": ("max_completion_tokens", "max_tokens"),
    "responses": ("max_output_tokens",),
    "completion": ("max_tokens",),
    "anthropic": ("max_tokens",),
    "embedding": (),
}
# Chat models that accept only ``max_completion_tokens`` as their output limit.
_REASONING_MODELS = ("o1", "o3", "o4", "gpt-5")
_IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
_AUDIO_PARTS = frozenset({"input_audio", "audio"})
_FILE_PARTS = frozenset({"file", "input_file", "document"})


@dataclass(slots=True)
class Text:
    """One text of the request: where it sits and what it says."""

    path: Path
    value: str
    schema: bool = False  # inside tool/function definitions (counted with their JSON)


@dataclass(slots=True)
class Media:
    """An image, audio clip or file of the request: ``source`` is a URL or data URL (an
    image), or the base64 data (audio, a file); None when the request only refers to it
    (a file id)."""

    kind: Literal["image", "audio", "file"]
    source: str | None = None
    detail: str | None = None


Writable = Callable[[Path], bool]


class LlmRequest:
    """One model request as the pipeline reads it.

    ``body`` holds the request fields to send (redactions are written into it, copying
    what they touch); ``texts`` every text in it; ``max_tokens`` the caller's output
    limit per choice (None: unset); ``choices`` how many outputs are generated;
    ``media`` its images, audio and files; ``token_inputs`` tokens sent as ids
    (embeddings of token arrays). ``writable`` says which paths the integration can
    write back (None: all); a value that must be redacted elsewhere blocks the call.
    """

    __slots__ = ("kind", "body", "texts", "max_tokens", "choices", "stream", "media",
                 "token_inputs", "writable", "edits", "fields", "changed", "_owned")

    def __init__(self, kind: str, body: dict[str, Any], *, texts: list[Text],
                 max_tokens: int | None, choices: int, stream: bool, media: list[Media],
                 token_inputs: int = 0, writable: Writable | None = None,
                 owned: bool = False) -> None:
        self.kind = kind
        self.body = body
        self.texts = texts
        self.max_tokens = max_tokens
        self.choices = choices
        self.stream = stream
        self.media = media
        self.token_inputs = token_inputs
        self.writable = writable
        self.edits: list[tuple[Path, str]] = []  # redactions written, in order
        self.fields: dict[str, Any] = {}  # top-level fields set (an output limit...)
        self.changed = False  # the body differs from what the caller gave
        # ids of containers this request owns (may change in place); None: all of them.
        self._owned: set[int] | None = None if owned else {id(body)}

    # -- convenience constructors -------------------------------------------------------
    @classmethod
    def chat(cls, model: str, messages: Any, *, max_tokens: int | None = None,
             stream: bool = False, tools: list[Any] | None = None) -> LlmRequest:
        """A chat request from its parts (``llm_call``, framework callbacks)."""
        body: dict[str, Any] = {"model": model, "messages": messages}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if stream:
            body["stream"] = True
        if tools:
            body["tools"] = tools
        return read_request("chat", body)

    # -- reading --------------------------------------------------------------------------
    @property
    def model(self) -> Any:
        return self.body.get("model")

    @property
    def messages(self) -> list[Any]:
        """The chat messages (or Anthropic messages) as they are to be sent."""
        messages = self.body.get("messages")
        return messages if isinstance(messages, list) else []

    def get(self, path: Path) -> Any:
        node: Any = self.body
        for key in path:
            node = _child(node, key)
        return node

    def tool_schemas(self) -> Any:
        """The tool/function definitions, if any (counted as JSON for the estimate)."""
        return self.body.get("tools") or self.body.get("functions")

    def output_tokens(self, default: int) -> int:
        """What the call can generate: the output limit (``default`` when unset) × the
        number of outputs; 0 for embeddings."""
        if self.kind == "embedding":
            return 0
        return (self.max_tokens or default) * self.choices

    # -- writing --------------------------------------------------------------------------
    def can_write(self, path: Path) -> bool:
        return self.writable is None or self.writable(path)

    def replace(self, path: Path, value: str) -> None:
        """Write ``value`` at ``path``, copying each container on the way that is not
        this request's own (the caller's history and message objects stay untouched)."""
        if not path:
            raise ValueError("empty path")
        node: Any = self.body
        for key in path[:-1]:
            node = self._own_child(node, key)
        _set(node, path[-1], value)
        self.edits.append((path, value))
        self.changed = True

    def set_field(self, name: str, value: Any) -> None:
        """Set a top-level field (output limit, stream options)."""
        self.body[name] = value
        self.fields[name] = value
        self.changed = True

    def limit_output(self, tokens: int) -> None:
        """Write an output limit of ``tokens`` per choice into the request, in the field
        its kind uses, so the provider cannot generate more than was reserved."""
        if self.kind == "embedding":
            return
        if self.kind == "responses":
            name = "max_output_tokens"
        elif self.kind == "chat" and ("max_completion_tokens" in self.body or str(
                self.model).rsplit("/", 1)[-1].startswith(_REASONING_MODELS)):
            name = "max_completion_tokens"
        else:
            name = "max_tokens"
        self.set_field(name, tokens)
        self.max_tokens = tokens

    def _own_child(self, parent: Any, key: str | int) -> Any:
        child = _child(parent, key)
        owned = self._owned
        if owned is None or id(child) in owned:
            return child
        if isinstance(child, dict):
            copy: Any = dict(child)
        elif isinstance(child, list | tuple):
            copy = list(child)
        else:  # a pydantic object (a message of a previous reply): its JSON form
            copy = _plain(child)
        _set(parent, key, copy)
        owned.add(id(copy))
        return copy


def read_request(kind: str, body: dict[str, Any], *, writable: Writable | None = None,
                 owned: bool = False) -> LlmRequest:
    """Read a request of ``kind`` from its fields. ``owned``: the body and everything in
    it belong to the caller of this function (a parsed JSON body), so redaction edits it
    in place. Raises :class:`InvalidRequestError` for a malformed request."""
    if kind not in KINDS:
        raise InvalidRequestError(f"Unknown request kind {kind!r}.")
    if not isinstance(body, dict):
        raise InvalidRequestError("The request must be an object of fields.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' is required and must be a non-empty string.")
    stream = _flag(body, "stream")
    if kind == "embedding":
        return _read_embedding(body, stream, writable, owned)
    texts: list[Text] = []
    media: list[Media] = []
    walked = None  # the field walked while it was checked
    if kind == "completion":
        _require(body, "prompt", "'prompt' is required.")
        _check_prompt(body.get("prompt"))
    elif kind == "responses":
        if body.get("input") is None and body.get("instructions") is None:
            raise InvalidRequestError("'input' is required.")
    else:
        messages = body.get("messages")
        if _given(messages) and not isinstance(messages, list | dict | str | bytes):
            body["messages"] = messages = list(messages)  # any iterable (openai allows)
        if not isinstance(messages, list) or (kind == "chat" and not messages):
            raise InvalidRequestError("'messages' is required and must be a non-empty list "
                                      "of message objects.")
        for i, m in enumerate(messages):
            if not isinstance(_field(m, "role"), str):
                raise InvalidRequestError(
                    f"messages[{i}] must be an object with a 'role' string.")
            _walk(m, ("messages", i), texts, media, False, 1)
        walked = "messages"
    options = body.get("stream_options")
    if _given(options) and not isinstance(options, dict):
        raise InvalidRequestError("'stream_options' must be an object.")
    for name in ("tools", "functions"):
        if _given(body.get(name)) and not isinstance(body[name], list):
            raise InvalidRequestError(f"'{name}' must be a list.")
    max_tokens = None
    for name in _OUTPUT_FIELDS[kind]:
        max_tokens = _positive(body, name)
        if max_tokens is not None:
            break
    if kind == "anthropic" and max_tokens is None:
        raise InvalidRequestError("'max_tokens' is required for Anthropic messages.")
    if kind == "completion" and max_tokens is None:
        max_tokens = 16  # the legacy completions default
    choices = _positive(body, "n") or 1
    if kind == "completion":  # best_of outputs are generated; each prompt of a batch too
        choices = max(choices, _positive(body, "best_of") or 1) * _prompts(body["prompt"])
    for key, value in body.items():
        if key not in _SKIP_TOP and value is not None and key != walked:
            _walk(value, (key,), texts, media, key in ("tools", "functions"))
    return LlmRequest(kind, body, texts=texts, max_tokens=max_tokens, choices=choices,
                      stream=stream, media=media, writable=writable, owned=owned)


def _read_embedding(body: dict[str, Any], stream: bool, writable: Writable | None,
                    owned: bool) -> LlmRequest:
    raw = body.get("input")
    if raw is None or raw == "" or raw == []:
        raise InvalidRequestError("'input' is required: a string, a list of strings, or "
                                  "token arrays.")
    texts: list[Text] = []
    tokens = 0
    if isinstance(raw, str):
        texts.append(Text(("input",), raw))
    elif isinstance(raw, list) and all(_is_int(t) for t in raw):
        tokens = len(raw)  # one token array
    elif isinstance(raw, list):
        for i, item in enumerate(raw):
            if isinstance(item, str):
                texts.append(Text(("input", i), item))
            elif isinstance(item, list) and all(_is_int(t) for t in item):
                tokens += len(item)
            else:
                raise InvalidRequestError(
                    f"input[{i}] must be a string or a list of token ids.")
    else:
        raise InvalidRequestError("'input' must be a string, a list of strings, or token "
                                  "arrays.")
    if body.get("user") is not None:
        _walk(body["user"], ("user",), texts, [], False)
    return LlmRequest("embedding", body, texts=texts, max_tokens=None, choices=1,
                      stream=stream, media=[], token_inputs=tokens, writable=writable,
                      owned=owned)


# -- walking ----------------------------------------------------------------------------
def _walk(node: Any, path: Path, texts: list[Text], media: list[Media], schema: bool,
          depth: int = 0) -> None:
    if isinstance(node, str):
        if node and not node.startswith("data:"):
            texts.append(Text(path, node, schema))
        return
    if depth > 64:
        raise InvalidRequestError("The request is nested too deeply.")
    if isinstance(node, dict):
        items: Iterable[tuple[Any, Any]] = node.items()
        part = node.get("type")
    elif isinstance(node, list | tuple):
        for i, item in enumerate(node):
            if type(item) is str:  # a leaf read here: one call less per text
                if item and not item.startswith("data:"):
                    texts.append(Text((*path, i), item, schema))
            else:
                _walk(item, (*path, i), texts, media, schema, depth + 1)
        return
    else:
        fields = _fields(node)
        if fields is None:
            return  # numbers, booleans, None, client sentinels (openai's NOT_GIVEN)
        items = fields.items()
        part = fields.get("type")
    if isinstance(part, str):
        _media(part, node, media)
    for key, value in items:
        if value is None or key in _SKIP_KEY or not isinstance(key, str):
            continue
        if type(value) is str:  # a leaf read here: one call less per text
            if value and not value.startswith("data:"):
                texts.append(Text((*path, key), value, schema))
        else:
            _walk(value, (*path, key), texts, media, schema, depth + 1)


def _media(part: str, node: Any, media: list[Media]) -> None:
    if part in _IMAGE_PARTS:
        image = _field(node, "image_url")
        source = _field(image, "url") if image is not None and not isinstance(image, str) \
            else image
        if source is None:  # Anthropic: {"source": {"type": "base64"|"url", ...}}
            src = _field(node, "source")
            if src is not None:
                data = _field(src, "data")
                source = (f"data:{_field(src, 'media_type')};base64,{data}"
                          if isinstance(data, str) else _field(src, "url"))
        detail = _field(node, "detail") or (
            _field(image, "detail") if image is not None and not isinstance(image, str)
            else None)
        media.append(Media("image", source if isinstance(source, str) else None,
                           detail if isinstance(detail, str) else None))
    elif part in _AUDIO_PARTS:
        audio = _field(node, "input_audio") or node
        data = _field(audio, "data")
        media.append(Media("audio", data if isinstance(data, str) else None))
    elif part in _FILE_PARTS:
        file = _field(node, "file") or node
        data = _field(file, "file_data") or _field(_field(node, "source") or {}, "data")
        media.append(Media("file", data if isinstance(data, str) else None))


# -- small readers ----------------------------------------------------------------------
def _fields(obj: Any) -> dict[str, Any] | None:
    """A pydantic object's fields (openai's and litellm's message types), else None."""
    if not hasattr(type(obj), "__pydantic_fields__"):
        return None
    fields = dict(obj.__dict__)
    extra = getattr(obj, "__pydantic_extra__", None)
    if extra:
        fields.update(extra)
    return fields


def _field(obj: Any, name: str) -> Any:
    if isinstance(obj, dict):
        return obj.get(name)
    fields = _fields(obj)
    return fields.get(name) if fields is not None else None


def _child(node: Any, key: str | int) -> Any:
    if isinstance(node, dict | list | tuple):
        return node[key]  # type: ignore[index]
    fields = _fields(node)
    if fields is None or key not in fields:
        raise KeyError(key)
    return fields[key]  # type: ignore[index]


def _set(node: Any, key: str | int, value: Any) -> None:
    if isinstance(node, dict | list):
        node[key] = value  # type: ignore[index]
    else:  # pragma: no cover - _own_child turns every container on a path into a dict/list
        raise TypeError(f"cannot write into {type(node).__name__}")


def _plain(obj: Any) -> Any:
    """A pydantic object as the JSON the client would send (None fields left out)."""
    dump = getattr(obj, "model_dump", None)
    if dump is None:
        raise TypeError(f"cannot write into {type(obj).__name__}")
    return dump(mode="json", exclude_none=True)


def _given(value: Any) -> bool:
    """False for None and for client sentinels such as openai's ``NOT_GIVEN``/``Omit``
    (falsy objects that are not data)."""
    return value is not None and (
        bool(value) or isinstance(value, str | int | float | list | dict | tuple))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if isinstance(value, bool):
        return value
    if value is None or not (value or value == 0):  # None, openai's NOT_GIVEN
        return False
    raise InvalidRequestError(f"'{name}' must be true or false.")


def _positive(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None or not (value or value == 0):  # None, openai's NOT_GIVEN
        return None
    if not _is_int(value) or value < 1:
        raise InvalidRequestError(f"'{name}' must be a positive integer.")
    return value


def _require(body: dict[str, Any], name: str, message: str) -> None:
    if body.get(name) is None:
        raise InvalidRequestError(message)


def _prompts(prompt: Any) -> int:
    """How many prompts a completion request batches (a list of strings or token lists)."""
    if isinstance(prompt, list) and prompt and not all(_is_int(t) for t in prompt):
        return len(prompt)
    return 1


def _check_prompt(prompt: Any) -> None:
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt):
        return
    raise InvalidRequestError("'prompt' must be a string or a non-empty list.")


def schema_json(value: Any) -> str:
    """Tool definitions as the JSON the provider receives (for counting)."""
    return json.dumps(value, default=lambda o: _plain(o) if hasattr(o, "model_dump")
                      else None, separators=(",", ":"))
