"""An example webhook receiver: what an executor's endpoint should do with Mandate's calls.

It refuses a request whose ``Mandate-Signature`` does not verify or is older than the
tolerance (a forged or replayed call), and carries out each ``Idempotency-Key`` once: a retry
of an action it already did is answered 200 without doing it again, and one that arrives while
the first call is still being carried out is answered 409 (retry later), as the IETF
Idempotency-Key draft asks.

Run it: ``python -m adapters.examples.receiver --port 9000 --secret-file
.mandate/webhook-secret``. The tests use it as the real receiver on loopback.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from adapters.signing import SIGNATURE_HEADER, verify

__all__ = ["Receiver", "running_receiver"]


@dataclass
class Receiver:
    """What the receiver saw. ``fail_rate`` answers that share of valid calls with 503."""

    secret: bytes
    tolerance: int = 300
    fail_rate: float = 0.0
    delay: float = 0.0
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # idempotency key → payload
    calls: Counter[str] = field(default_factory=Counter)  # idempotency key → calls received
    refused: list[str] = field(default_factory=list)
    in_progress: set[str] = field(default_factory=set)  # keys being carried out right now
    lock: threading.Lock = field(default_factory=threading.Lock)
    _random: random.Random = field(default_factory=lambda: random.Random(2))  # noqa: S311

    def handle(self, headers: dict[str, str], body: bytes) -> tuple[int, str]:
        """Decide the answer to one call (status, text)."""
        signature = headers.get(SIGNATURE_HEADER.lower(), "")
        key = headers.get("idempotency-key", "")
        if not verify(self.secret, signature, body, int(time.time()), self.tolerance):
            with self.lock:
                self.refused.append(key)
            return 401, "bad or stale signature"
        if not key:
            return 400, "no Idempotency-Key"
        with self.lock:
            self.calls[key] += 1
            if key in self.done:
                return 200, "already done"
            if key in self.in_progress:  # a retry overtook the first call: never do it twice
                return 409, "in progress; try again later"
            if self.fail_rate and self._random.random() < self.fail_rate:
                return 503, "try again"
            self.in_progress.add(key)
        try:
            if self.delay:
                time.sleep(self.delay)
            with self.lock:
                self.done[key] = json.loads(body)
        finally:
            with self.lock:
                self.in_progress.discard(key)
        return 200, "done"


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            headers = {k.lower(): v for k, v in self.headers.items()}
            if len(body) < length:
                # The sender went away mid-request (a gateway killed while it delivered): not a
                # bad signature, and nothing to carry out.
                status, text = 400, "incomplete body"
            else:
                status, text = receiver.handle(headers, body)
            payload = text.encode()
            self.send_response(status)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            return

    return Handler


class _Server(ThreadingHTTPServer):
    # socketserver listens with a backlog of 5; a gateway delivering 16 at once would see
    # connections refused and retried.
    request_queue_size = 128


@contextmanager
def running_receiver(receiver: Receiver, port: int = 0) -> Iterator[str]:
    """Serve ``receiver`` on loopback; yield its URL."""
    server = _Server(("127.0.0.1", port), _handler(receiver))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    """Run the example receiver until interrupted, printing each action it carries out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret-file", type=Path, required=True)
    args = parser.parse_args()
    receiver = Receiver(args.secret_file.read_bytes().strip())
    with running_receiver(receiver, args.port) as url:
        print(f"receiving at {url}; Ctrl-C to stop", flush=True)
        seen = 0
        try:
            while True:
                time.sleep(0.5)
                with receiver.lock:
                    new = list(receiver.done.items())[seen:]
                for key, payload in new:
                    print(f"{key}: {payload.get('action_type')} {payload.get('resource')}")
                seen += len(new)
        except KeyboardInterrupt:
            return


if __name__ == "__main__":
    main()
