"""A local stand-in for an OpenAI-compatible provider (demo, examples, tests, benchmarks).

A real HTTP server on loopback that answers ``/v1/chat/completions`` (plain and
streamed), ``/v1/embeddings`` and ``/v1/models`` deterministically and records every
request it receives, so tests can assert what left the machine. Paid APIs are never
contacted. Standard library only (``--fast`` serves under uvicorn, for benchmarks).

Also Anthropic's ``/v1/messages`` (plain and streamed), so translating routes (litellm)
can be exercised offline.

Knobs: ``cached_tokens`` (and, for ``/v1/messages``, ``cache_write_tokens``) make every
answer report that many cache reads (writes); ``reply`` fixes the answer's text. Opt-in by
model name: ``fail-<status>`` answers with that HTTP status (``fail-429``
adds ``Retry-After: 1``); ``echo-key`` answers 401 quoting the API key it was sent (as
some providers do); ``hang`` never answers (until the stand-in stops); ``slow-<ms>``
answers normally after ``<ms>`` milliseconds (a slow first byte); ``stall-<n>`` streams
``n`` words, then goes silent without ending the stream. ``provider.force = "fail-500"``
(any of these names) makes every request behave so, whatever model it names: a
deployment that fails on command.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ("Sure", "here", "is", "a", "short", "answer", "from", "the", "local", "stand-in",
         "provider", "today")


def prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """The stand-in's own token count (deliberately not ours: providers count)."""
    total = 0
    for m in messages:
        content = m.get("content")
        text = content if isinstance(content, str) else json.dumps(content)
        total += 4 + len(text or "") // 4
    return total + 2


class StandInProvider:
    """``with StandInProvider() as provider: provider.url`` → ``http://127.0.0.1:PORT/v1``."""

    def __init__(self, *, reply_words: int = 12, stream_usage: bool = True,
                 cached_tokens: int = 0, cache_write_tokens: int = 0, chunk_delay_s: float = 0.0,
                 port: int = 0) -> None:
        self.reply_words = reply_words
        self.stream_usage = stream_usage  # False: never send a usage chunk
        self.cached_tokens = cached_tokens
        self.cache_write_tokens = cache_write_tokens  # Anthropic's cache_creation_input_tokens
        self.chunk_delay_s = chunk_delay_s
        # A fixed answer instead of the words (streamed 7 characters a chunk, so a value in
        # it is split over chunks): what response scanning is tested with.
        self.reply: str | None = None
        self.requests: list[dict[str, Any]] = []  # bodies received, in order
        self.headers: list[dict[str, str]] = []
        self.raw_requests: list[bytes] = []  # the bytes as they arrived
        self.completed_streams = 0
        self.abandoned_streams = 0  # streams whose reader went away before the end
        self._lock = threading.Lock()
        self.stopping = threading.Event()
        self.force: str | None = None  # a knob model name applied to every request
        provider = self

        class Handler(_Handler):
            owner = provider

        self.server = _Server(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread: threading.Thread | None = None

    def start(self) -> StandInProvider:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                        kwargs={"poll_interval": 0.05})
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stopping.set()  # releases ``hang`` and ``stall-<n>`` handlers
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> StandInProvider:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _record(self, body: dict[str, Any], headers: dict[str, str], raw: bytes = b"") -> None:
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            self.raw_requests.append(raw)

    def _stall(self, body: dict[str, Any]) -> int:
        """After how many words a ``stall-<n>`` stream goes silent (-1: it never does)."""
        model = self.force or str(body.get("model", ""))
        return int(model.removeprefix("stall-") or 1) if model.startswith("stall-") else -1

    def paced(self, body: dict[str, Any], words: list[str]) -> Iterator[str]:
        """The words of a streamed answer, ``chunk_delay_s`` apart; a ``stall-<n>``
        stream stops after ``n`` of them and waits until the stand-in stops."""
        stall = self._stall(body)
        for i, word in enumerate(words):
            if i == stall:
                self.stopping.wait()
                return
            if self.chunk_delay_s:
                time.sleep(self.chunk_delay_s)
            yield word

    def stalls(self, body: dict[str, Any], words: list[str]) -> bool:
        """True when the stream stalled before its end (it must not finish)."""
        return 0 <= self._stall(body) < len(words)

    def reply_text(self, max_tokens: int | None) -> list[str]:
        if self.reply is not None:
            return [self.reply[i:i + 7] for i in range(0, len(self.reply), 7)]
        n = self.reply_words if max_tokens is None else min(self.reply_words, max_tokens)
        return [WORDS[i % len(WORDS)] + ("" if i == n - 1 else " ") for i in range(n)]

    def chat_completion(self, body: dict[str, Any]) -> dict[str, Any]:
        """The (non-streamed) answer to a chat completion request."""
        words = self.reply_text(body.get("max_completion_tokens") or body.get("max_tokens"))
        return {
            "id": "chatcmpl-standin", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "".join(words)}}],
            "usage": self.usage(body, len(words)),
        }

    def usage(self, body: dict[str, Any], completion_tokens: int) -> dict[str, Any]:
        prompt = prompt_tokens(body.get("messages") or [])
        return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
                "total_tokens": prompt + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": min(self.cached_tokens, prompt)},
                "completion_tokens_details": {"reasoning_tokens": 0}}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's default of 5 refuses bursts of connections

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client hanging up mid-stream is part of the tests, not an error to print.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: StandInProvider
    protocol_version = "HTTP/1.1"  # keep-alive, like real providers
    disable_nagle_algorithm = True  # headers and body go out at once, as from a real server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, payload: dict[str, Any],
              headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0].rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [
                {"id": "gpt-4o-mini", "object": "model", "owned_by": "stand-in"}]})
        else:
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error",
                                       "code": "not_found"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        body = json.loads(raw or b"{}")
        self.owner._record(body, {k.lower(): v for k, v in self.headers.items()}, raw)
        model = self.owner.force or str(body.get("model", ""))
        path = self.path.split("?", 1)[0]  # Azure-style ?api-version=... URLs
        if model == "echo-key":  # like providers that quote a wrong key back
            key = self.headers.get("Authorization") or self.headers.get("x-api-key") or ""
            self._json(401, {"error": {"message": f"Incorrect API key provided: {key}",
                                       "type": "invalid_request_error",
                                       "code": "invalid_api_key"}})
        elif model.startswith("fail-"):
            status = int(model.removeprefix("fail-") or 500)
            self._json(status, {"error": {"message": f"stand-in failure {status}",
                                          "type": "server_error", "code": str(status)}},
                       {"Retry-After": "1"} if status == 429 else None)
        elif model == "hang":
            self.owner.stopping.wait()
            self.close_connection = True
        elif model.startswith("slow-"):
            self.owner.stopping.wait(int(model.removeprefix("slow-") or 1000) / 1000)
            self._answer(path, body)
        else:
            self._answer(path, body)

    def _answer(self, path: str, body: dict[str, Any]) -> None:
        if path.endswith("/embeddings"):
            self._embeddings(body)
        elif path.endswith("/chat/completions"):
            if body.get("stream"):
                self._stream(body)
            else:
                self._chat(body)
        elif path.endswith("/completions"):
            self._completion(body)
        elif path.endswith("/responses"):
            self._responses(body)
        elif path.endswith("/messages"):
            self._messages(body)
        else:
            self._json(404, {"error": {"message": "not found", "type": "invalid_request_error",
                                       "code": "not_found"}})

    def _chat(self, body: dict[str, Any]) -> None:
        self._json(200, self.owner.chat_completion(body))

    def _completion(self, body: dict[str, Any]) -> None:
        """The legacy text completions API (non-streamed)."""
        words = self.owner.reply_text(body.get("max_tokens"))
        prompt = body.get("prompt")
        prompts = prompt if isinstance(prompt, list) else [prompt]
        usage = self.owner.usage({"messages": [{"content": str(p)} for p in prompts]},
                                 len(words) * len(prompts))
        self._json(200, {
            "id": "cmpl-standin", "object": "text_completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": i, "text": "".join(words), "finish_reason": "stop",
                         "logprobs": None} for i in range(len(prompts))],
            "usage": usage,
        })

    def _sse_start(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _sse(self, text: str) -> None:
        """One server-sent event as one HTTP chunk, flushed at once."""
        data = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _sse_stream(self, events: Any) -> None:
        """Send every event text ``events`` yields; count finished and abandoned streams."""
        owner = self.owner
        self._sse_start()
        try:
            for text in events:
                self._sse(text)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            with owner._lock:
                owner.completed_streams += 1
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            with owner._lock:
                owner.abandoned_streams += 1

    def _responses(self, body: dict[str, Any]) -> None:
        """OpenAI's Responses API (plain and streamed)."""
        owner = self.owner
        words = owner.reply_text(body.get("max_output_tokens"))
        raw = body.get("input")
        messages = ([{"role": "user", "content": raw}] if isinstance(raw, str)
                    else [m for m in raw or [] if isinstance(m, dict)])
        if body.get("instructions"):
            messages.insert(0, {"role": "system", "content": body["instructions"]})
        prompt = prompt_tokens(messages)
        cached = min(owner.cached_tokens, prompt)
        response = {
            "id": "resp_standin", "object": "response", "created_at": int(time.time()),
            "model": body.get("model"), "status": "completed", "parallel_tool_calls": True,
            "tool_choice": "auto", "tools": [],
            "output": [{"type": "message", "id": "msg_standin", "status": "completed",
                        "role": "assistant", "content": [
                            {"type": "output_text", "text": "".join(words),
                             "annotations": []}]}],
            "usage": {"input_tokens": prompt, "output_tokens": len(words),
                      "total_tokens": prompt + len(words),
                      "input_tokens_details": {"cached_tokens": cached},
                      "output_tokens_details": {"reasoning_tokens": 0}},
        }
        if not body.get("stream"):
            self._json(200, response)
            return

        def events() -> Any:
            seq = itertools.count()

            def event(type_: str, **payload: Any) -> str:
                data = json.dumps({"type": type_, "sequence_number": next(seq), **payload})
                return f"event: {type_}\ndata: {data}\n\n"

            yield event("response.created", response={**response, "status": "in_progress",
                                                       "output": [], "usage": None})
            for word in owner.paced(body, words):
                yield event("response.output_text.delta", item_id="msg_standin",
                            output_index=0, content_index=0, delta=word, logprobs=[])
            if owner.stalls(body, words):
                return
            yield event("response.completed", response=response)

        self._sse_stream(events())

    def _messages(self, body: dict[str, Any]) -> None:
        """Anthropic's Messages API (plain and streamed), for the router's litellm route."""
        owner = self.owner
        words = owner.reply_text(body.get("max_tokens"))
        system = body.get("system")
        messages = list(body.get("messages") or [])
        if system:
            messages.insert(0, {"role": "system", "content": system})
        usage = {"input_tokens": prompt_tokens(messages), "output_tokens": len(words)}
        if owner.cached_tokens or owner.cache_write_tokens:  # not part of input_tokens
            usage.update(cache_read_input_tokens=owner.cached_tokens,
                         cache_creation_input_tokens=owner.cache_write_tokens)
        message = {"id": "msg_standin", "type": "message", "role": "assistant",
                   "model": body.get("model"), "content": [], "stop_reason": None,
                   "stop_sequence": None}
        if not body.get("stream"):
            self._json(200, {**message, "stop_reason": "end_turn", "usage": usage,
                             "content": [{"type": "text", "text": "".join(words)}]})
            return

        def send(event: str, payload: dict[str, Any]) -> str:
            return f"event: {event}\ndata: {json.dumps({'type': event, **payload})}\n\n"

        def events() -> Any:
            yield send("message_start", {"message": {
                **message, "usage": {**usage, "output_tokens": 1}}})
            yield send("content_block_start", {"index": 0,
                                               "content_block": {"type": "text", "text": ""}})
            for word in owner.paced(body, words):
                yield send("content_block_delta", {"index": 0,
                                                   "delta": {"type": "text_delta", "text": word}})
            if owner.stalls(body, words):
                return
            yield send("content_block_stop", {"index": 0})
            yield send("message_delta", {"delta": {"stop_reason": "end_turn",
                                                   "stop_sequence": None},
                                         "usage": {"output_tokens": len(words)}})
            yield send("message_stop", {})

        self._sse_stream(events())

    def _embeddings(self, body: dict[str, Any]) -> None:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        tokens = sum(1 + len(str(x)) // 4 for x in items)
        self._json(200, {"object": "list", "model": body.get("model"), "data": [
            {"object": "embedding", "index": i, "embedding": [0.1] * 8}
            for i in range(len(items))],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})

    def _stream(self, body: dict[str, Any]) -> None:
        owner = self.owner
        words = owner.reply_text(body.get("max_completion_tokens") or body.get("max_tokens"))
        base = {"id": "chatcmpl-standin", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": body.get("model")}
        want_usage = bool((body.get("stream_options") or {}).get("include_usage"))

        def send(payload: dict[str, Any] | str) -> str:
            return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"

        def events() -> Any:
            yield send({**base, "choices": [{"index": 0, "finish_reason": None,
                                             "delta": {"role": "assistant", "content": ""}}]})
            for word in owner.paced(body, words):
                yield send({**base, "choices": [{"index": 0, "delta": {"content": word},
                                                 "finish_reason": None}]})
            if owner.stalls(body, words):
                return
            yield send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if want_usage and owner.stream_usage:
                yield send({**base, "choices": [], "usage": owner.usage(body, len(words))})
            yield send("[DONE]")

        self._sse_stream(events())


def main(argv: list[str] | None = None) -> None:
    """``python -m iron_sdk.standin --port 0``: serve until killed; prints the URL first."""
    import argparse

    parser = argparse.ArgumentParser(description="local stand-in OpenAI-compatible provider")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--reply-words", type=int, default=12)
    parser.add_argument("--chunk-delay", type=float, default=0.0)
    parser.add_argument("--fast", action="store_true",
                        help="serve plain chat completions and /models with uvicorn (for "
                             "benchmarks: the stdlib server limits concurrent throughput)")
    args = parser.parse_args(argv)
    provider = StandInProvider(port=args.port, reply_words=args.reply_words,
                               chunk_delay_s=args.chunk_delay)
    if args.fast:
        _serve_fast(provider)
        return
    print(provider.url, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        provider.server.serve_forever(poll_interval=0.05)


def _serve_fast(provider: StandInProvider) -> None:
    """The same answers from an ASGI app under uvicorn, on the provider's port."""
    import importlib.util

    import uvicorn

    sock = provider.server.socket  # already bound and listening: uvicorn takes it over

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        raw = b""
        while True:
            message = await receive()
            raw += message.get("body", b"")
            if not message.get("more_body"):
                break
        path = scope["path"].rstrip("/")
        if path.endswith("/models"):
            status, payload = 200, {"object": "list", "data": [
                {"id": "gpt-4o-mini", "object": "model", "owned_by": "stand-in"}]}
        elif path.endswith("/chat/completions") and not (body := json.loads(raw)).get("stream"):
            status, payload = 200, provider.chat_completion(body)
        else:
            status, payload = 404, {"error": {"message": "fast mode serves plain chat "
                                              "completions and /models only",
                                              "type": "invalid_request_error",
                                              "code": "not_found"}}
        data = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]})
        await send({"type": "http.response.body", "body": data})

    has = importlib.util.find_spec
    server = uvicorn.Server(uvicorn.Config(
        app, log_level="warning", access_log=False,
        http="httptools" if has("httptools") else "h11",
        loop="uvloop" if has("uvloop") else "asyncio"))
    print(provider.url, flush=True)
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
