"""A loopback relay in front of a real Prefect API that notes every event POSTed through it.

Prefect stores an event id once (its events table ignores a repeated id) and forgets which
ids its triggers have seen when it restarts, so reading events back cannot show that one was
sent twice: the relay can. Point the senders' PREFECT_API_URL at `tap.url`; everything is
forwarded to the real API and answered with its answer.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class EventTap:
    """`posted`: every event POSTed to /events and accepted by the real API, in order. It
    listens on `host` (a free port): a bridge address when the senders run in network
    namespaces."""

    def __init__(self, api_url: str, *, host: str = "127.0.0.1") -> None:
        self.api_url = api_url.rstrip("/")
        self.posted: list[dict] = []
        self._lock = threading.Lock()
        self._http = httpx.Client(timeout=30)
        tap = self

        class Relay(BaseHTTPRequestHandler):
            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.removeprefix("/api")
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("content-type", "authorization")}
                answer = tap._http.request(self.command, tap.api_url + path, content=body, headers=headers)
                if self.command == "POST" and path.rstrip("/") == "/events" and answer.is_success:
                    with tap._lock:
                        tap.posted.extend(json.loads(body))
                self.send_response(answer.status_code)
                self.send_header("Content-Length", str(len(answer.content)))
                if "content-type" in answer.headers:
                    self.send_header("Content-Type", answer.headers["content-type"])
                self.end_headers()
                self.wfile.write(answer.content)

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
            return Counter(event["id"] for event in self.posted)

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
