"""A loopback HTTP proxy in front of the real gateway that fails on purpose.

Nothing of ours is replaced: every request it lets through reaches the real gateway over real
HTTP. A test gives it a plan: which requests to answer 503 itself (the gateway never sees
them), and which to forward and then drop the connection before the answer (the gateway acted;
the client never hears of it).
"""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


@dataclass
class Plan:
    """What to do with requests whose ``METHOD /path`` starts with a prefix, in order."""

    unavailable: dict[str, int] = field(default_factory=dict)  # prefix -> how many 503s
    drop_after_forwarding: dict[str, int] = field(default_factory=dict)  # prefix -> how many
    seen: list[str] = field(default_factory=list)
    forwarded: list[str] = field(default_factory=list)

    def _take(self, table: dict[str, int], line: str) -> bool:
        for prefix, left in table.items():
            if line.startswith(prefix) and left > 0:
                table[prefix] = left - 1
                return True
        return False


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        while True:
            request = self._read_request()
            if request is None:
                return
            method, target, headers, body = request
            line = f"{method} {target}"
            plan = self.server.plan
            with self.server.lock:
                plan.seen.append(line)
                refuse = plan._take(plan.unavailable, line)
                drop = not refuse and plan._take(plan.drop_after_forwarding, line)
            if refuse:
                problem = (
                    b'{"type":"about:blank","title":"decision unavailable","status":503,'
                    b'"detail":"injected by the test proxy"}'
                )
                self._answer(503, {"content-type": "application/problem+json"}, problem)
                continue
            answer = self.server.upstream.request(method, target, headers=headers, content=body)
            with self.server.lock:
                plan.forwarded.append(line)
            if drop:
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
            self._answer(answer.status_code, kept, answer.content)

    def _read_request(self) -> tuple[str, str, dict[str, str], bytes] | None:
        first = self.rfile.readline()
        if not first.strip():
            return None
        method, target, _ = first.decode().split(" ", 2)
        headers: dict[str, str] = {}
        while (raw := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = raw.decode().partition(":")
            headers[name.strip()] = value.strip()
        length = int(headers.get("Content-Length", headers.get("content-length", "0")))
        body = self.rfile.read(length) if length else b""
        forwarded = {k: v for k, v in headers.items() if k.lower() not in _HOP | {"host"}}
        return method, target, forwarded, body

    def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
        head = [f"HTTP/1.1 {status} X"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head += [f"Content-Length: {len(body)}", "Connection: keep-alive", "", ""]
        self.wfile.write("\r\n".join(head).encode() + body)
        self.wfile.flush()


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, upstream: str, plan: Plan) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.upstream = httpx.Client(base_url=upstream, timeout=30.0)
        self.plan = plan
        self.lock = threading.Lock()


@contextmanager
def faulty_proxy(upstream: str, plan: Plan) -> Iterator[str]:
    """Serve the proxy on a free loopback port; yields its URL."""
    server = _Server(upstream, plan)
    thread = threading.Thread(target=server.serve_forever, name="faulty-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        server.upstream.close()
