"""bench/netns.py and bench/relay.py: hosts reach the bridge and nothing else, a killed host
loses every process in it, nothing is left behind after a failure, the relay joins and
delays. Skipped where namespaces cannot be made (conftest)."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from bench import netns
from bench.netns import HostNetwork
from bench.relay import TcpRelay

CONNECT = "import socket, sys\ntry:\n    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)\n    print(s.recv(16).decode())\nexcept OSError as exc:\n    print('refused', type(exc).__name__)\n"


def _greeter(host: str) -> tuple[socket.socket, int]:
    """A server on `host` that greets each connection with b"hello"."""
    server = socket.create_server((host, 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conn.sendall(b"hello")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def _connect_from(host: netns.Host, address: str, port: int) -> str:
    done = subprocess.run(host.command([sys.executable, "-c", CONNECT, address, str(port)], {"PATH": "/usr/bin:/bin"}),
                          capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or done.stderr.strip()


def test_hosts_reach_the_bridge_not_the_machines_loopback(three_hosts: HostNetwork):
    on_bridge, bridge_port = _greeter(three_hosts.bridge_ip)
    on_loopback, loopback_port = _greeter("127.0.0.1")
    try:
        for host in three_hosts.hosts:
            assert _connect_from(host, three_hosts.bridge_ip, bridge_port) == "hello"
            assert _connect_from(host, "127.0.0.1", loopback_port).startswith("refused")
        with TcpRelay(three_hosts.bridge_ip, ("127.0.0.1", loopback_port)) as relay:  # what the catalog's relay does
            assert _connect_from(three_hosts.hosts[0], three_hosts.bridge_ip, relay.port) == "hello"
    finally:
        on_bridge.close()
        on_loopback.close()


def test_kill_all_stops_every_process_of_a_host_whatever_its_session(three_hosts: HostNetwork, tmp_path):
    host = three_hosts.hosts[1]
    sleeper = "import subprocess, time; subprocess.Popen(['sleep', '300'], start_new_session=True); time.sleep(300)"
    leader = host.start([sys.executable, "-c", sleeper], {"PATH": "/usr/bin:/bin"}, cwd=tmp_path, log=tmp_path / "log")
    deadline = time.monotonic() + 30
    while len(host.pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(host.pids()) >= 2
    assert host.kill_all() >= 2
    leader.wait(timeout=10)
    deadline = time.monotonic() + 10
    while host.pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host.pids() == [] and three_hosts.hosts[0].pids() == []


def test_everything_is_removed_after_a_failure(tmp_path):
    if (reason := netns.unavailable()) is not None:
        pytest.skip(reason)
    with pytest.raises(RuntimeError, match="boom"):
        with netns.host_network(2) as network:
            network.hosts[0].start(["sleep", "300"], {"PATH": "/usr/bin:/bin"}, cwd=tmp_path, log=tmp_path / "log")
            raise RuntimeError("boom")
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert all(host.namespace not in namespaces for host in network.hosts)
    assert network.bridge not in links and not any(host.veth in links for host in network.hosts)


def test_the_relay_delays_each_direction():
    server, port = _greeter("127.0.0.1")
    try:
        with TcpRelay("127.0.0.1", ("127.0.0.1", port), delay_s=0.2) as relay:
            began = time.monotonic()
            with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as conn:
                assert conn.recv(16) == b"hello"
            assert time.monotonic() - began >= 0.2
    finally:
        server.close()
