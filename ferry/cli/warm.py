"""The warm `ferry`: flow commands run in a process that has already imported Prefect and the
flows, instead of paying ~4 s of imports each time.

    PREFECT_HOME/ferry-warm.sock    the warm process's socket (mode 0600)
    PREFECT_HOME/ferry-warm.json    {"pid", "code", "prefect", "listening", "started_at"}: who
                                    listens there (or is starting to)
    PREFECT_HOME/ferry-warm.lock    held while one is checked or started
    PREFECT_HOME/ferry-warm.log     its log: one line per command it ran

The first flow command of a PREFECT_HOME (unless FERRY_WARM=0) starts the warm process in
the background and runs itself as before; later flow commands (`ingest`, `summarize`,
`derive`, `reconcile`, `demo`, `transactions resume`) and `download` connect to it. It forks one child
per command, a fork server: the child takes the caller's stdin, stdout and stderr (passed
over the socket), working folder, umask, environment and arguments, runs the command
exactly as `ferry` would, and sends back its exit code. Ctrl-C (SIGINT, SIGTERM) is passed
on to the child; a caller that dies takes its child down with it.

The caller runs the command itself instead when the warm process is absent, busy starting,
runs other code (a fingerprint of every source file's size and mtime), has other Prefect
settings (Prefect reads them once, on import), or its local server is gone. The warm
process exits after FERRY_WARM_IDLE seconds without a command (default 1800) and with
`ferry server stop`.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

SOCKET_NAME = "ferry-warm.sock"
STATE_NAME = "ferry-warm.json"
LOCK_NAME = "ferry-warm.lock"
LOG_NAME = "ferry-warm.log"
# the flow commands, and `download` (boto3 and the restore machinery: ~1.5 s of imports)
WARM_COMMANDS = {("ingest",), ("summarize",), ("derive",), ("reconcile",), ("demo",), ("transactions", "resume"),
                 ("download",)}
ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("ferry", "storage_core", "flows", "tasks", "deployments")
CONNECT_TIMEOUT = 2.0
FIRST_ANSWER_TIMEOUT = 60.0  # a fork and a few system calls, on however busy a machine
DEFAULT_IDLE = 1800.0
_in_child = False  # set in a forked child: it runs its command itself


def _command(argv: list[str]) -> tuple[str, ...]:
    words = [a for a in argv if not a.startswith("-")]
    return tuple(words[:2]) if words[:1] == ["transactions"] else tuple(words[:1])


def wanted(argv: list[str]) -> bool:
    """Whether `ferry ARGV` is a command the warm process may run."""
    return (os.environ.get("FERRY_WARM", "1") != "0" and _command(argv) in WARM_COMMANDS
            and not {"--help", "-h"} & set(argv))


def code_fingerprint(root: Path = ROOT) -> str:
    """What code a process runs: every source file's path, size and mtime (~300 stats)."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            try:
                info = path.stat()
            except OSError:  # removed while we looked: it is not part of the code any more
                continue
            digest.update(f"{path.relative_to(root)}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def prefect_settings(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k.startswith("PREFECT_")}


def socket_path(home: Path) -> Path:
    """Where the warm process of `home` listens: in `home` when that path fits a Unix socket
    address (108 bytes), else in this user's private folder under the temp folder (mode 0700,
    refused if anyone else owns or can enter it), named by a hash of `home`."""
    path = home / SOCKET_NAME
    if len(os.fsencode(path)) < 90:  # room for the name it is bound under first (.PID.)
        return path
    import tempfile  # here: every `ferry` command imports this module before it delegates

    folder = Path(tempfile.gettempdir()) / f"ferry-warm-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(f"{folder} is not a private folder of this user")
    return folder / f"{hashlib.sha256(os.fsencode(home.resolve())).hexdigest()[:24]}.sock"


def read_state(home: Path) -> dict[str, Any] | None:
    try:
        return json.loads((home / STATE_NAME).read_text())
    except (OSError, ValueError):
        return None


def is_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, exited but not yet waited for, does not)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


# --- the caller's side ------------------------------------------------------------------------


def _local_server_url(home: Path) -> str | None:
    """The API of the local server of `home` if its process is alive (no request made)."""
    from deployments.local_server import is_server_process
    from deployments.local_server import read_state as server_state

    server = server_state(home)
    return server.api_url if server is not None and is_server_process(server.pid, server.port) else None


def delegate(argv: list[str], home: Path) -> int | None:
    """Run `ferry ARGV` in the warm process of `home`: its exit code, or None when this
    process should run it itself (see the module docstring)."""
    state = None if _in_child else read_state(home)
    if not wanted(argv) or state is None or not is_alive(int(state.get("pid", 0))):
        return None
    env = dict(os.environ)
    if "PREFECT_API_URL" not in env:  # the local server's, as use_prefect_api would find it
        url = _local_server_url(home)
        if url is None:
            return None
        env["PREFECT_API_URL"] = url
    if state.get("prefect") != prefect_settings(env) or state.get("code") != code_fingerprint():
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(str(socket_path(home)))
        umask = os.umask(0)
        os.umask(umask)
        request = {"argv": argv, "cwd": os.getcwd(), "env": env, "umask": umask}
        socket.send_fds(sock, [b"F"], [0, 1, 2])
        sock.sendall(json.dumps(request).encode() + b"\n")
        replies = sock.makefile("rb")
    except OSError:
        sock.close()
        return None  # nothing ran: run here
    try:  # its child names itself before it runs anything; no answer at all means none ran
        sock.settimeout(FIRST_ANSWER_TIMEOUT)
        first = json.loads(replies.readline() or b"{}")
    except TimeoutError:  # a child may be running it: never run it a second time here
        sock.close()
        sys.stderr.write(f"error: the warm ferry process did not answer in {FIRST_ANSWER_TIMEOUT:.0f} s; "
                         f"see {home / LOG_NAME} (FERRY_WARM=0 runs commands without it)\n")
        return 1
    except (OSError, ValueError):
        first = {}
    if "pid" not in first:
        sock.close()
        return None  # refused (other settings) or gone before its child ran anything: run here
    sock.settimeout(None)
    child = int(first["pid"])

    def forward(signum: int, _frame: Any) -> None:
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        last = json.loads(replies.readline() or b"{}")
    except (OSError, ValueError):
        last = {}
    finally:
        sock.close()
    if os.environ.get("FERRY_WARM_REPORT") and "exit" in last:
        Path(os.environ["FERRY_WARM_REPORT"]).write_text(json.dumps({"pid": child, **last}))
    if "exit" not in last:
        sys.stderr.write(f"error: the warm ferry process's command (pid {child}) ended without an exit code; "
                         f"see {home / LOG_NAME}\n")
        return 1
    return int(last["exit"])


# --- starting and stopping --------------------------------------------------------------------


def ensure_started(home: Path) -> None:
    """Start the warm process of `home` in the background unless one (listening or still
    importing) runs this code with these Prefect settings; an outdated one is stopped first.
    Never waits for it; two commands at once start one. Nothing to do in its own children."""
    if _in_child or os.environ.get("FERRY_WARM", "1") == "0":
        return
    import fcntl
    import subprocess

    code, settings = code_fingerprint(), prefect_settings(dict(os.environ))
    home.mkdir(parents=True, exist_ok=True)
    with (home / LOCK_NAME).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = read_state(home)
        if state is not None and is_alive(int(state.get("pid", 0))):
            if (state.get("code"), state.get("prefect")) == (code, settings):
                return
            stop(home)
        with (home / LOG_NAME).open("ab") as log:
            child = subprocess.Popen(  # noqa: S603 - our own module, by the interpreter running us
                [sys.executable, "-m", "ferry.cli.warm", str(home)], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, cwd=str(home), env={**os.environ, "PYTHONPATH": os.pathsep.join(
                    p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)},
            )
        _write_state(home, {"pid": child.pid, "code": code, "prefect": settings, "listening": False})


def _write_state(home: Path, state: dict[str, Any]) -> None:
    path = home / STATE_NAME
    tmp = path.with_name(f".{STATE_NAME}.{os.getpid()}")
    tmp.write_text(json.dumps({**state, "started_at": _now()}))
    os.replace(tmp, path)


def stop(home: Path, *, timeout: float = 10.0) -> bool:
    """Stop the warm process of `home` (commands it is running finish on their own);
    True if one was running."""
    state = read_state(home)
    pid = int(state.get("pid", 0)) if state else 0
    running = pid > 0 and is_alive(pid)
    if running:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while is_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    for path in (_socket_or_none(home), home / STATE_NAME):
        if path is not None:
            path.unlink(missing_ok=True)
    return running


# --- the warm process -------------------------------------------------------------------------


def wait_listening(home: Path, *, timeout: float) -> int:
    """The pid of the warm process of `home` once it listens (it imports Prefect first);
    TimeoutError quoting the end of its log after `timeout` seconds."""
    from storage_core.retry import poll

    def listening() -> int | None:
        state = read_state(home) or {}
        pid = int(state.get("pid", 0))
        return pid if state.get("listening") and is_alive(pid) and socket_path(home).exists() else None

    try:
        return poll(listening, timeout=timeout, what=f"the warm ferry process of {home}", every=0.1)
    except TimeoutError as exc:
        log = home / LOG_NAME
        tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
        raise TimeoutError(f"{exc}; {log} ends:\n{tail}") from None


def _socket_or_none(home: Path) -> Path | None:
    try:
        return socket_path(home)
    except OSError:
        return None


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _log(message: str) -> None:
    sys.stderr.write(f"{_now()} {message}\n")
    sys.stderr.flush()


def _run_child(conn: socket.socket, fds: list[int], request: dict[str, Any]) -> None:
    """In the forked child: become the caller's command, then exit with its code."""
    global _in_child
    _in_child = True
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    log = os.dup(2)  # this process's log, for what it says once the caller has gone
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115 - the caller's streams, for this process's life
    sys.stdout = open(1, "w", buffering=1 if os.isatty(1) else -1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    os.chdir(request["cwd"])
    os.umask(request["umask"])
    os.environ.clear()
    os.environ.update(request["env"])
    conn.sendall(json.dumps({"pid": os.getpid()}).encode() + b"\n")

    def caller_gone() -> None:  # the caller closes the socket only once it has our exit code
        try:
            while conn.recv(1):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGINT)  # ignored once the command has ended

    threading.Thread(target=caller_gone, daemon=True).start()
    sys.argv = ["ferry", *request["argv"]]
    code = 1
    try:
        from ferry.cli import main

        main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException as exc:  # noqa: BLE001 - reported as the CLI would, never a traceback
        sys.stderr.write(f"error: unexpected {type(exc).__name__}: {exc}\n")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the caller may leave once it has the code
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except OSError:
                pass
        try:
            conn.sendall(json.dumps({"exit": code, **_usage()}).encode() + b"\n")
        except OSError:
            pass
        _let_the_caller_go(log)
        _drain_prefect()
        os._exit(code)


def _let_the_caller_go(log: int) -> None:
    """Give the caller's streams back (stdin and stdout pointed at /dev/null, stderr at the
    warm process's log): a caller reading our output through a pipe sees its end now, not
    after the Prefect drain that follows (~40 ms of a one-file ingest, once its outcome is
    decided and sent)."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for target, fd in ((0, devnull), (1, devnull), (2, log)):
        os.dup2(fd, target)
    os.close(devnull)


def _usage() -> dict[str, float]:
    """This command's peak RSS and CPU seconds, its own subprocesses' included (the caller's
    own figures do not show them: a benchmark asks for them with FERRY_WARM_REPORT)."""
    import resource

    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"maxrss_kib": max(me.ru_maxrss, children.ru_maxrss),
            "cpu_s": round(me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime, 3)}  # not the interpreter's exit: its at-exit drains wait without a bound


def _drain_prefect(timeout: float = 10.0) -> None:
    """Send the run's last logs and events to the Prefect API (what Prefect does at exit), for
    at most `timeout` seconds each. A child does this once its caller has the exit code: a
    warning goes to the warm process's log."""
    try:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for service in (APILogWorker, EventsWorker):
            service.drain_all(timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - the command's outcome is already decided
        _log(f"pid {os.getpid()}: Prefect's last logs may be missing: {exc}")


def _preload() -> None:
    """Import and build once, here, what every command's child would otherwise do again on
    its first flow run: measured in a child, ~0.65 CPU-s of a 1,000-file ingest's ~2.4
    (fastapi and Prefect's engines, imported by the first flow call; SQLAlchemy's mapper
    configuration, at the first ORM query; S3's models, parsed for each boto3 client), and
    ~0.15 s more of each one-file ingest (its two S3 clients, the heartbeat-less copy of
    Prefect's settings, anyio's asyncio backend and flows.ingest_fanout, the click command).
    Not flows.derive: its +30 MiB (pyarrow) would count in every child's resident set, and
    derive imports it in a fraction of a second."""
    import anyio._backends._asyncio  # noqa: F401 - loaded by the first anyio call (a flow run's client)
    import anyio.from_thread  # noqa: F401 - Prefect's sync engines run their client calls through it
    import fastapi.encoders  # noqa: F401 - a flow run's parameters are serialized with it
    import flows.ingest  # noqa: F401
    import flows.ingest_fanout  # noqa: F401 - `ingest` imports it to choose between one run and a fan-out
    import flows.summarize  # noqa: F401
    import prefect  # noqa: F401
    import prefect.context
    import prefect.flow_engine  # noqa: F401
    import prefect.task_engine  # noqa: F401
    import prefect.utilities.visualization  # noqa: F401 - imported by every flow call
    import rich.progress  # noqa: F401 - the progress bars of ingest and download
    import storage_core.retrieve  # noqa: F401 - `download` (no flow: straight to storage_core)
    from ferry.cli import click_command
    from ferry.cli.common import without_heartbeats
    from storage_core.catalog.models import configure_mappers
    from storage_core.stores.registry import preload_clients
    from storage_core.stores.s3 import preload_models

    click_command()
    configure_mappers()
    preload_models()
    preload_clients()
    without_heartbeats(prefect.context.get_settings_context().settings)
    _complete_prefect_models()
    _share_verified_tls_contexts()


def _share_verified_tls_contexts() -> None:
    """One TLS context per CA file for this process and its children, built here.

    Each Prefect client a command's flow run opens (its API client and the httpx client
    inside it, the log and event workers' clients, the events client's version check: five
    in a one-file ingest) builds `ssl.create_default_context(cafile=...)` (certifi's bundle,
    or SSL_CERT_FILE for httpx), which parses the whole CA bundle: 20-28 ms of CPU each,
    measured in a child, even for an http:// API. Those calls (a CA file and nothing else)
    now share one context per file, size and mtime. Neither configures such a context
    further (Prefect's unverified one is a call without a CA file, left alone), except
    httpcore setting its ALPN list per TLS connection: the same for every Prefect client of
    a process (one PREFECT_API_ENABLE_HTTP2). A context is safe to share between connections
    and threads."""
    import ssl

    import certifi

    build = ssl.create_default_context
    shared: dict[tuple[str, int, int], ssl.SSLContext] = {}
    lock = threading.Lock()

    def create_default_context(purpose: ssl.Purpose = ssl.Purpose.SERVER_AUTH, *, cafile: str | None = None,
                               capath: str | None = None, cadata: Any = None) -> ssl.SSLContext:
        if cafile is None or capath is not None or cadata is not None or purpose != ssl.Purpose.SERVER_AUTH:
            return build(purpose, cafile=cafile, capath=capath, cadata=cadata)
        try:
            info = os.stat(cafile)
        except OSError:
            return build(purpose, cafile=cafile)  # raises as it would have
        key = (os.fspath(cafile), info.st_size, info.st_mtime_ns)
        with lock:
            if key not in shared:
                shared[key] = build(purpose, cafile=cafile)
            return shared[key]

    ssl.create_default_context = create_default_context
    # the children inherit these built: Prefect's (certifi's bundle) and httpx's (SSL_CERT_FILE, when set)
    for cafile in {certifi.where(), os.environ.get("SSL_CERT_FILE") or certifi.where()}:
        try:
            create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError):
            pass  # a bad SSL_CERT_FILE: each command raises it as it would have


def _complete_prefect_models() -> None:
    """Build the validators of Prefect's API models that it leaves to their first use (a flow
    run's creation, an artifact's), each otherwise rebuilt in every child. A model whose
    references cannot be resolved yet is left as it is."""
    import pydantic
    import prefect.artifacts
    import prefect.client.schemas.actions
    import prefect.client.schemas.objects
    import prefect.client.schemas.responses

    for module in (prefect.client.schemas.objects, prefect.client.schemas.actions,
                   prefect.client.schemas.responses, prefect.artifacts):
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, pydantic.BaseModel)
                    and value.__module__ == module.__name__ and not value.__pydantic_complete__):
                try:
                    value.model_rebuild()
                except pydantic.PydanticUserError:
                    pass


def serve(home: Path, *, idle: float | None = None) -> None:
    """Import everything a flow command needs, then fork one child per command until idle."""
    from ferry.cli import load_commands

    load_commands()
    _preload()

    if threading.active_count() != 1:  # a fork copies no thread but ours: none may be running
        _log(f"not serving: {threading.active_count()} threads after the imports")
        return
    idle = float(os.environ.get("FERRY_WARM_IDLE", DEFAULT_IDLE)) if idle is None else idle
    state_path = home / STATE_NAME
    try:
        sock_path = socket_path(home)
    except OSError as exc:
        _log(f"not serving: {exc}")
        return
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children reap themselves

    def forget() -> None:
        if (read_state(home) or {}).get("pid") == os.getpid():
            for path in (sock_path, state_path):
                path.unlink(missing_ok=True)

    def stop_now(*_: Any) -> None:  # nothing to finish: skip the slow exit of a big interpreter
        forget()
        os._exit(0)

    signal.signal(signal.SIGTERM, stop_now)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    staging = sock_path.with_name(f".{os.getpid()}.{sock_path.name}")
    staging.unlink(missing_ok=True)
    old = os.umask(0o077)
    try:
        listener.bind(str(staging))
    finally:
        os.umask(old)
    listener.listen(64)
    os.replace(staging, sock_path)
    fingerprint, settings = code_fingerprint(), prefect_settings(dict(os.environ))
    _write_state(home, {"pid": os.getpid(), "code": fingerprint, "prefect": settings, "listening": True})
    _log(f"serving pid {os.getpid()} for {settings.get('PREFECT_API_URL')}")
    listener.settimeout(idle)
    while True:
        try:
            conn, _ = listener.accept()
        except TimeoutError:
            _log(f"idle for {idle:.0f} s: exiting")
            stop_now()
        _handle(conn, fingerprint, settings, listener)


def _handle(conn: socket.socket, fingerprint: str, settings: dict[str, str], listener: socket.socket) -> None:
    fds: list[int] = []
    try:
        conn.settimeout(CONNECT_TIMEOUT)
        _, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        if uid != os.getuid():  # the socket's mode says so already; a command runs as this user
            conn.sendall(b'{"refused": "another user"}\n')
            return
        _, fds, _, _ = socket.recv_fds(conn, 1, 3)
        request = json.loads(conn.makefile("rb").readline())
        if len(fds) != 3 or prefect_settings(request["env"]) != settings:
            conn.sendall(b'{"refused": "other Prefect settings"}\n')
            return
        pid = os.fork()
        if pid == 0:
            listener.close()
            conn.settimeout(None)
            _run_child(conn, fds, request)
        _log(f"pid {pid}: ferry {' '.join(request['argv'])}")
    except (OSError, ValueError, KeyError) as exc:
        _log(f"a request failed: {exc}")
    finally:
        for fd in fds:
            os.close(fd)
        conn.close()


if __name__ == "__main__":  # as ferry.cli.warm, not __main__: the children's `main()` imports that module
    from ferry.cli import warm

    warm.serve(Path(sys.argv[1]))
