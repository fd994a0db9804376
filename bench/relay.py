"""A TCP relay in this process: connections to `listen` are joined to `target`, byte for
byte, in both directions. It lets processes in network namespaces (bench/netns.py) reach
a server that listens only on 127.0.0.1 (the machine's PostgreSQL, whose configuration a
test must not edit), and can hold every chunk back `delay_s` seconds in each direction:
the latency of a network between machines where the kernel has no `netem` qdisc.

Threads, not asyncio: the callers are synchronous tests and benchmarks, and a handful of
connections per host. `close()` stops accepting and closes every open connection."""

from __future__ import annotations

import queue
import socket
import threading
import time
from dataclasses import dataclass, field

CHUNK = 256 * 1024


@dataclass
class TcpRelay:
    listen_host: str
    target: tuple[str, int]
    delay_s: float = 0.0
    port: int = 0  # 0: a free one, known after start()
    _server: socket.socket | None = field(default=None, init=False, repr=False)
    _open: set[socket.socket] = field(default_factory=set, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def start(self) -> TcpRelay:
        server = socket.create_server((self.listen_host, self.port), backlog=128)
        self.port = server.getsockname()[1]
        self._server = server
        threading.Thread(target=self._accept, name=f"relay-{self.port}", daemon=True).start()
        return self

    def __enter__(self) -> TcpRelay:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with self._lock:
            for sock in list(self._open):
                _close(sock)
            self._open.clear()

    def _accept(self) -> None:
        server = self._server
        while server is not None:
            try:
                client, _ = server.accept()
            except OSError:  # closed
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
                upstream.settimeout(None)
            except OSError:
                _close(client)
                continue
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._open.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        """Copy `source` to `sink` until either closes; with a delay, each chunk leaves
        `delay_s` after it arrived (order kept, throughput not capped by the delay)."""
        held: queue.SimpleQueue[tuple[float, bytes]] | None = None
        if self.delay_s > 0:
            held = queue.SimpleQueue()
            threading.Thread(target=self._release, args=(held, sink, source), daemon=True).start()
        try:
            while chunk := source.recv(CHUNK):
                if held is None:
                    sink.sendall(chunk)
                else:
                    held.put((time.monotonic() + self.delay_s, chunk))
        except OSError:
            pass
        if held is None:
            self._drop(source, sink)
        else:
            held.put((0.0, b""))  # the end, after what is still held back

    def _release(self, held: queue.SimpleQueue[tuple[float, bytes]], sink: socket.socket, source: socket.socket) -> None:
        try:
            while True:
                due, chunk = held.get()
                if not chunk:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                sink.sendall(chunk)
        except OSError:
            pass
        self._drop(source, sink)

    def _drop(self, *socks: socket.socket) -> None:
        with self._lock:
            for sock in socks:
                self._open.discard(sock)
                _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


__all__ = ["TcpRelay"]
