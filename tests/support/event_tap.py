"""A loopback relay in front of a real Prefect API that notes every event POSTed through it.

Prefect stores an event id once (its events table ignores a repeated id) and forgets which
ids its triggers have seen when it restarts, so reading events back cannot show that one was
sent twice: the relay can. Point the senders' PREFECT_API_URL at `tap.url`; everything is
forwarded to the real API and answered with its answer.
"""

from __future__ import annotations

import json
import select
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


def _sender_gone(sock: socket.socket) -> bool:
    """Whether the sender closed its end (it gave up waiting): its socket reads as ended."""
    if not select.select([sock], [], [], 0)[0]:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


class EventTap:
    """`posted`: every event POSTed to /events and accepted by the real API, in order, with
    whether the API's answer reached the sender (`answered`: False when the sender had given
    up waiting, so it must send the event again). It listens on `host` (a free port): a
    bridge address when the senders run in network namespaces."""

    def __init__(self, api_url: str, *, host: str = "127.0.0.1") -> None:
        self.api_url = api_url.rstrip("/")
        self.posted: list[tuple[dict, bool]] = []
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=30)
        tap = self

        class Relay(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.removeprefix("/api")
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                answer = tap._http.request(self.command, tap.api_url + path, content=body, headers=headers)
                answered = self._answer(answer)
                if self.command == "POST" and path.rstrip("/") == "/events" and answer.is_success:
                    with tap._lock:
                        tap.posted.extend((event, answered) for event in json.loads(body))

            def _answer(self, answer: httpx.Response) -> bool:
                if _sender_gone(self.connection):
                    return False
                try:
                    self.send_response(answer.status_code)
                    self.send_header("Content-Length", str(len(answer.content)))
                    if "content-type" in answer.headers:
                        self.send_header("Content-Type", answer.headers["content-type"])
                    self.end_headers()
                    self.wfile.write(answer.content)
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return False
                return True

            do_GET = do_POST = _relay

            def log_message(self, *_args) -> None:  # quiet: the test reads `posted`, not a log
                pass

        self._server = ThreadingHTTPServer((host, 0), Relay)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}/api"
        self._thread = threading.Thread(target=self._server.serve_forever, name="event-tap", daemon=True)
        self._thread.start()

    def sent(self) -> Counter[str]:
        """How many times each event id was accepted."""
        with self._lock:
            return Counter(event["id"] for event, _answered in self.posted)

    def answered(self) -> Counter[str]:
        """How many times each event id was accepted and its sender told so. More than once
        is a sender sending an event it knew was delivered (two emitters of one event); an
        event accepted again after an answer that never reached its sender is not that."""
        with self._lock:
            return Counter(event["id"] for event, answered in self.posted if answered)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._http.close()


@contextmanager
def event_tap(api_url: str, *, host: str = "127.0.0.1") -> Iterator[EventTap]:
    tap = EventTap(api_url, host=host)
    try:
        yield tap
    finally:
        tap.close()


def read_events(api_url: str, *, resource_ids: list[str], name: str, page: int = 40) -> list[dict]:
    """The events named `name` about the resources `resource_ids`, as Prefect stored them
    (POST /events/filter, a chunk of resources per request: each answer is one page)."""
    events = []
    with httpx.Client(base_url=api_url.rstrip("/"), timeout=30) as http:
        for start in range(0, len(resource_ids), page):
            chunk = resource_ids[start:start + page]
            answer = http.post("/events/filter", json={
                "filter": {"resource": {"id": chunk}, "event": {"name": [name]}}, "limit": 50,
            })
            answer.raise_for_status()
            found = answer.json()
            assert found["total"] <= 50, "more events than one page: make `page` smaller"
            events.extend(found["events"])
    return events


__all__ = ["EventTap", "event_tap", "read_events"]
