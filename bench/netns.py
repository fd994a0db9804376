"""Several "hosts" on one machine: Linux network namespaces on a bridge, for the tests and
the bench that run Ferry's workers as if on separate machines.

`host_network(n)` makes, in the root namespace, a bridge holding the `.1` address of a random
10.X.Y.0/24 subnet, and n namespaces, each joined to the bridge by a veth pair, with its own
address (`.11`, `.12`, ...) and `lo` up. Servers the hosts share (SeaweedFS, the Prefect
server, a relay to PostgreSQL) listen on the bridge address; a process in a namespace reaches
nothing else (not the root namespace's 127.0.0.1). `delay_ms` adds `netem` delay to every
host's own veth end (traffic from the host to the servers), as a network between machines
would. Everything made is removed in `finally`, also after a failure or Ctrl-C: the
processes still in a namespace are SIGKILLed, then the namespaces and the bridge deleted.

Names carry this process's pid (`ferry<pid>h<i>`), so parallel sessions never collide.
Needs root and `ip` (iproute2); `tc` and the kernel's sch_netem only for a delay.
`unavailable()` and `netem_missing()` say why not, in one line, before anything is made (the
tests skip with it; the bench delays in relays instead, bench/cluster.py).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from storage_core.errors import ConfigError

HOST_OFFSET = 10  # host i (from 1) has address .(10 + i); the bridge is .1


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise ConfigError(f"`ip {' '.join(args)}` failed: {result.stderr.strip() or result.returncode}")
    return result


def unavailable() -> str | None:
    """None when network namespaces can be made here, else the reason (one line)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (run the tests as root, or skip them)"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is missing"
    probe = f"ferry{os.getpid()}probe"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` is refused here: {made.stderr.strip() or made.returncode}"
    _ip("netns", "delete", probe, check=False)
    return None


def netem_missing() -> str | None:
    """None when `tc ... netem` delays work here, else why not (e.g. a kernel built without
    sch_netem: "Specified qdisc kind is unknown"). Call after `unavailable()` said None."""
    if shutil.which("tc") is None:
        return "the `tc` command (iproute2) is missing"
    probe = f"ferry{os.getpid()}netem"
    _ip("netns", "add", probe)
    try:
        added = subprocess.run(["ip", "netns", "exec", probe, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                               capture_output=True, text=True)
        return None if added.returncode == 0 else f"netem is refused: {added.stderr.strip() or added.returncode}"
    finally:
        _ip("netns", "delete", probe, check=False)


@dataclass(frozen=True)
class Host:
    """One namespace: its name, its address on the bridge and its veth ends."""

    namespace: str
    address: str
    veth: str  # the end in the root namespace, on the bridge
    inner: str  # the end inside the namespace

    def command(self, argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
        """`argv` run in this namespace with exactly `env` (nothing of the caller's)."""
        return ["ip", "netns", "exec", self.namespace, "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv]

    def start(self, argv: Sequence[str], env: Mapping[str, str], *, cwd: Path, log: Path) -> subprocess.Popen[bytes]:
        """Start `argv` in this namespace in `cwd`, stdout and stderr to `log`, as the leader
        of a new process group (what `kill_all` or a group signal stops)."""
        cwd.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            return subprocess.Popen(self.command(argv, env), cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)

    def pids(self) -> list[int]:
        """Every process running in this namespace now (whatever group or session it leads)."""
        found = _ip("netns", "pids", self.namespace, check=False)
        return [int(word) for word in found.stdout.split()]

    def kill_all(self) -> int:
        """SIGKILL every process in this namespace (a host losing power); how many there were.
        Prefect starts each flow run in a session of its own, so a group signal would miss them."""
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(pids)


@dataclass(frozen=True)
class HostNetwork:
    bridge: str
    bridge_ip: str  # where the shared servers listen
    subnet: str
    hosts: tuple[Host, ...]


def _free_subnet(rng: random.Random) -> ipaddress.IPv4Network:
    """A random 10.X.Y.0/24 that no route of this machine overlaps."""
    taken = []
    for line in _ip("-4", "route", "show", "table", "all", check=False).stdout.splitlines():
        for word in line.split()[:2]:  # "10.0.0.0/8 dev ..." or "local 127.0.0.1 dev ..."
            try:
                taken.append(ipaddress.ip_network(word, strict=False))
                break
            except ValueError:
                continue
    for _ in range(200):
        subnet = ipaddress.ip_network(f"10.{rng.randint(64, 254)}.{rng.randint(0, 254)}.0/24")
        if not any(subnet.overlaps(t) for t in taken):
            return subnet
    raise ConfigError("no free 10.X.Y.0/24 subnet found for the test hosts")


@contextmanager
def host_network(count: int, *, delay_ms: float | None = None, rng: random.Random | None = None) -> Iterator[HostNetwork]:
    """`count` hosts on a fresh bridge (see the module docstring); removed on exit."""
    reason = unavailable()
    if reason is not None:
        raise ConfigError(reason)
    if delay_ms and (missing := netem_missing()) is not None:
        raise ConfigError(f"no netem delay here: {missing}")
    subnet = _free_subnet(rng or random.Random())
    tag = f"ferry{os.getpid()}"
    bridge, bridge_ip = f"{tag}br", str(subnet.network_address + 1)
    hosts = tuple(
        Host(f"{tag}h{i}", str(subnet.network_address + HOST_OFFSET + i), f"{tag}v{i}", f"{tag}p{i}")
        for i in range(1, count + 1)
    )
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{bridge_ip}/{subnet.prefixlen}", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for host in hosts:
            _ip("netns", "add", host.namespace)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", host.inner)
            _ip("link", "set", host.inner, "netns", host.namespace)
            _ip("link", "set", host.veth, "master", bridge)
            _ip("link", "set", host.veth, "up")
            inside = ("netns", "exec", host.namespace, "ip")
            _ip(*inside, "link", "set", "lo", "up")
            _ip(*inside, "addr", "add", f"{host.address}/{subnet.prefixlen}", "dev", host.inner)
            _ip(*inside, "link", "set", host.inner, "up")
            if delay_ms:
                netem = ["ip", "netns", "exec", host.namespace, "tc", "qdisc", "add", "dev", host.inner,
                         "root", "netem", "delay", f"{delay_ms:g}ms"]
                done = subprocess.run(netem, capture_output=True, text=True)
                if done.returncode != 0:
                    raise ConfigError(f"netem delay on {host.inner} failed: {done.stderr.strip()}")
        yield HostNetwork(bridge, bridge_ip, str(subnet), hosts)
    finally:
        _remove(bridge, hosts)


def _remove(bridge: str, hosts: Sequence[Host]) -> None:
    """Kill what runs in each namespace, delete the namespaces (their veth pairs go with
    them) and the bridge. Each step is tried whatever the others did."""
    for host in hosts:
        host.kill_all()
        _ip("netns", "delete", host.namespace, check=False)
        _ip("link", "delete", host.veth, check=False)  # when the namespace never got its end
    _ip("link", "delete", bridge, check=False)


__all__ = ["Host", "HostNetwork", "host_network", "netem_missing", "unavailable"]
