"""The SDK's HTTP transport to the router's runtime API: one keep-alive HTTP/1.1
connection per thread, written by hand because it runs twice per LLM call (see
:class:`Connection`)."""

from __future__ import annotations

import os
import socket


class ProtocolError(Exception):
    """The peer's answer is not HTTP/1.1 as the router speaks it."""


class Connection:
    """One keep-alive HTTP/1.1 connection to the router, used by one thread.

    Why not httpx or http.client: this runs twice per LLM call, and on loopback their
    request/response machinery costs several times the router's own work (measured round
    trip to a trivial route of the same uvicorn app: httpx ~700 µs, http.client ~270 µs,
    this ~90 µs). The runtime API answers JSON with a Content-Length, all this reads;
    anything else is reported as "not an iron runtime".
    """

    __slots__ = ("sock", "pid", "used", "busy", "keep")

    def __init__(self, address: tuple[str, int], tls: bool, connect_timeout_s: float,
                 timeout_s: float, keep: bool = True) -> None:
        self.sock: socket.socket | None = None
        self.pid = os.getpid()
        self.used = self.busy = False
        self.keep = keep  # False: closed after one exchange
        sock = socket.create_connection(address, timeout=connect_timeout_s)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if tls:
                import ssl

                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=address[0])
            sock.settimeout(timeout_s)
        except BaseException:
            sock.close()
            raise
        self.sock = sock

    def exchange(self, request: bytes) -> tuple[int, bytes]:
        """Send one request, return (status, body). Whatever interrupts it (an error, a
        timeout, KeyboardInterrupt) closes the connection: its stream is out of step."""
        self.used = self.busy = True
        try:
            status, body = self._exchange(request)
        except BaseException:
            self.close()
            raise
        finally:
            self.busy = False
        if not self.keep:
            self.close()
        return status, body

    def _exchange(self, request: bytes) -> tuple[int, bytes]:
        sock = self.sock
        assert sock is not None
        sock.sendall(request)
        buf = b""
        while (end := buf.find(b"\r\n\r\n")) < 0:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("the router closed the connection")
            buf += chunk
            if len(buf) > 65536 and buf.find(b"\r\n\r\n") < 0:
                raise ProtocolError("response headers too large")
        lines = buf[:end].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
            raise ProtocolError(f"not an HTTP/1.1 response: {lines[0][:40]!r}")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = headers.get("content-length")
        if length is None or not length.isdigit() or "transfer-encoding" in headers:
            raise ProtocolError("response without a Content-Length")
        body, size = buf[end + 4:], int(length)
        while len(body) < size:
            chunk = sock.recv(max(size - len(body), 65536))
            if not chunk:
                raise ConnectionResetError("the router closed the connection mid-response")
            body += chunk
        if headers.get("connection", "").lower() == "close" or version == "HTTP/1.0":
            self.keep = False
        return int(rest[:3]), body[:size]

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    __del__ = close  # a thread's connection ends with the thread
