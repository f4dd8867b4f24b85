"""A warm interpreter for the heavy subcommands (``ehrcxr train``, ``ehrcxr evaluate``).

Why: importing Lightning, torch, pandas and scikit-learn costs ≈ 8 s on 2 CPU cores, and the
benchmark grid runs one ``train@``/``robustness@``/``evaluate@`` DVC stage per cell — over a
hundred fresh interpreters. A server process imports those libraries once; each invocation of
``ehrcxr train …`` connects to it, and the server *forks* a child that runs the command exactly as
a cold interpreter would:

- the child gets the caller's stdin/stdout/stderr (the file descriptors are passed over a Unix
  socket), working directory, environment and ``sys.argv``, so logs go where they would go;
- it runs :func:`ehrcxr.cli.main` with fresh ``random``/NumPy global seeds, then the same shutdown
  a cold interpreter runs (non-daemon threads joined, ``atexit`` handlers such as W&B's), and its
  exit status becomes the caller's (a child killed by a signal kills the caller with that signal);
- SIGINT/SIGTERM/SIGHUP sent to the caller are forwarded to the child, and a caller that dies takes
  its child with it.

The server is keyed by everything that a fork would otherwise freeze: the Python executable, the
modification times and sizes of this package's files (an edited source file gets a new server),
and the environment variables read when the preloaded libraries load (threads, CUDA devices,
hash seed). It starts on first use, detached, and exits after ``EHRCXR_WARM_IDLE`` seconds without
a request (default 120). ``EHRCXR_WARM=0`` runs every command cold; DDP worker processes
(``LOCAL_RANK`` set) always run cold. If the server cannot start, the command runs cold.

This module imports only the standard library: the caller's own start-up stays ≈ 0.1 s.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import hashlib
import importlib
import importlib.util
import io
import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path

# Subcommands served warm, and the modules their server imports: modules the subcommand imports
# anyway, so a warm run holds the same modules as a cold one (and its DVC deps cover them).
PRELOAD: dict[str, tuple[str, ...]] = {
    "train": (
        "ehrcxr.stages.train",
        "ehrcxr.training",
        "ehrcxr.tasks",
        "ehrcxr.io",
        "ehrcxr.data.datamodule",
        # W&B's own imports at `wandb.init` (≈ 2.9 s here: the SDK, then its launch-inputs
        # module, which every run imports); with `wandb.mode: disabled` they go unused.
        "wandb",
        "wandb.sdk.launch.inputs.internal",
    ),
    "evaluate": (
        "ehrcxr.stages.evaluate",
        "ehrcxr.evaluation.fairness",
        "ehrcxr.evaluation.runs",
    ),
}

# Read by the preloaded native libraries when they load (OpenMP/MKL/BLAS thread pools, CUDA, the
# allocator) or by the interpreter at start-up: a fork would freeze them, so they key the server.
_KEY_ENV_PREFIXES = (
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "KMP_",
    "GOMP_",
    "CUDA_",
    "NCCL_",
    "PYTORCH_",
    "TORCH_",
    "PYTHON",
    "LD_",
    "MALLOC_",
    "LANG",
    "LC_",
)
_DDP_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE")
_MAX_BASE = 40
_FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def enabled(command: str | None) -> bool:
    """Whether ``command`` runs through the warm server in this environment."""
    if command not in PRELOAD or os.environ.get("EHRCXR_WARM", "1") == "0":
        return False
    return not any(v in os.environ for v in _DDP_ENV)


def server_key() -> str:
    """16 hex digits naming the server that may run this caller's commands."""
    package = Path(__file__).resolve().parent
    h = hashlib.sha256()
    h.update(sys.executable.encode())
    h.update(str(package).encode())
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".csv", ".sql") and "__pycache__" not in path.parts:
            st = path.stat()
            h.update(f"{path.relative_to(package)}:{st.st_mtime_ns}:{st.st_size}".encode())
    for name in sorted(os.environ):
        if name.startswith(_KEY_ENV_PREFIXES):
            h.update(f"{name}={os.environ[name]}".encode())
    return h.hexdigest()[:16]


def _runtime_dir() -> Path:
    """A folder only this user can enter (so only this user reaches the server)."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    if len(base) > _MAX_BASE:  # a Unix socket's path holds ≤ 107 bytes
        base = tempfile.gettempdir()
    path = Path(base) / f"ehrcxr-warm-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    if path.stat().st_uid != os.getuid() or path.stat().st_mode & 0o077:
        raise OSError(errno.EPERM, f"{path} is not private to this user")
    return path


def socket_path(command: str, key: str) -> Path:
    """One server per subcommand: each imports only what its subcommand imports."""
    return _runtime_dir() / f"{command}-{key}.sock"


# ---- caller ---------------------------------------------------------------------------------


def run(command: str, argv: list[str], cold: Callable[[list[str]], int]) -> int:
    """Run ``ehrcxr argv`` (whose subcommand is ``command``) in a child of the warm server;
    ``cold(argv)`` when that is impossible."""
    try:
        conn = _connect_or_start(command, server_key())
    except OSError:
        conn = None
    if conn is None:
        return cold(argv)
    with conn, conn.makefile("rb") as replies:
        main = sys.modules["__main__"]
        spec = getattr(main, "__spec__", None)
        request = {
            "argv": [sys.argv[0], *argv],
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            # the CPUs this caller may run on: a cold run would inherit them, and the server's
            # own (from whichever caller started it) may be others
            "affinity": sorted(os.sched_getaffinity(0)),
            # how this interpreter was started (`-m module` or a script): launchers that re-run
            # the command (Lightning's DDP workers) read it from `__main__`
            "main_module": spec.name if spec is not None else None,
            "main_file": getattr(main, "__file__", None),
        }
        payload = json.dumps(request).encode()
        try:
            fds = [0, 1, 2]
            for fd in fds:
                os.fstat(fd)  # a closed standard stream: run cold, where it stays closed
            socket.send_fds(conn, [len(payload).to_bytes(8, "big")], fds)
            conn.sendall(payload)
            pid = int(_read_line(replies))
        except (OSError, ValueError):
            return cold(argv)
        forward = lambda sig, _frame: _kill(pid, sig)  # noqa: E731
        previous = {s: signal.signal(s, forward) for s in _FORWARDED_SIGNALS}
        try:
            status = int(_read_line(replies))
        except (OSError, ValueError):
            status = 1  # the server died under us: report failure, as a crash would
            print("ehrcxr: the warm interpreter ended before the command did", file=sys.stderr)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    if status < 0:  # killed by a signal: die the same way, so the caller sees the same status
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
    return status


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _read_line(replies: io.BufferedReader) -> str:
    """One reply line (the child's pid, then its exit status). Read through one buffered reader:
    both lines may arrive in one packet when the command ends at once."""
    line = replies.readline()
    if not line.endswith(b"\n"):
        raise OSError(errno.ECONNRESET, "warm server closed the connection")
    return line.decode().strip()


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
    except OSError:
        conn.close()
        return None
    return conn


def _connect_or_start(command: str, key: str, start_timeout: float = 120.0) -> socket.socket | None:
    path = socket_path(command, key)
    conn = _connect(path)
    if conn is not None:
        return conn
    # One caller starts the server; the others wait for it behind the lock.
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect(path)
        if conn is not None:
            return conn
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        log = open(path.with_suffix(".log"), "ab")  # the server's own errors, for debugging
        server = subprocess.Popen(
            [sys.executable, "-m", "ehrcxr.warm", command, str(path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
        log.close()
        deadline = time.monotonic() + start_timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                return None
            conn = _connect(path)
            if conn is not None:
                return conn
            time.sleep(0.05)
    return None


# ---- server ---------------------------------------------------------------------------------


def serve(command: str, path: Path, idle_seconds: float) -> None:
    """Import ``command``'s preloaded modules, then fork one child per request until idle."""
    for module in PRELOAD[command]:
        importlib.import_module(module)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    listener.bind(str(tmp))
    listener.listen(16)
    os.replace(tmp, path)  # callers connect only once the imports are done
    children: dict[int, socket.socket] = {}
    last = time.monotonic()
    try:
        while children or time.monotonic() - last < idle_seconds:
            ready, _, _ = select.select([listener, *children.values()], [], [], 0.1)
            for sock in ready:
                if sock is listener:
                    conn, _ = listener.accept()
                    pid = _spawn(conn, listener)
                    if pid is not None:
                        children[pid] = conn
                else:  # a caller hung up before its command ended: end the command too
                    pid = next(p for p, c in children.items() if c is sock)
                    _kill(pid, signal.SIGKILL)
            for pid in list(children):
                done, wait_status = os.waitpid(pid, os.WNOHANG)
                if done:
                    conn = children.pop(pid)
                    status = os.waitstatus_to_exitcode(wait_status)
                    with contextlib.suppress(OSError):
                        conn.sendall(f"{status}\n".encode())
                    conn.close()
                    last = time.monotonic()
    finally:
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(listener.fileno()).st_ino:
                path.unlink()
        listener.close()


def _spawn(conn: socket.socket, listener: socket.socket) -> int | None:
    try:
        header, fds, _, _ = socket.recv_fds(conn, 8, 3)
        size = int.from_bytes(header, "big")
        payload = b""
        while len(payload) < size:
            chunk = conn.recv(size - len(payload))
            if not chunk:
                raise OSError(errno.ECONNRESET, "caller hung up")
            payload += chunk
        request = json.loads(payload)
    except (OSError, ValueError):
        conn.close()
        return None
    pid = os.fork()
    if pid == 0:
        listener.close()
        conn.close()
        _child(request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    try:
        conn.sendall(f"{pid}\n".encode())
    except OSError:  # the caller is gone already: its command must not outlive it
        _kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        conn.close()
        return None
    return pid


def _child(request: dict, fds: list[int]) -> None:
    status = 1
    try:
        for s in _FORWARDED_SIGNALS:
            signal.signal(s, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # KeyboardInterrupt, as cold
        os.setsid()  # out of the server's session: the caller's signals reach it by forwarding
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        _reopen_standard_streams()
        os.chdir(request["cwd"])
        os.sched_setaffinity(0, request["affinity"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.argv = list(request["argv"])
        sys.modules["__main__"] = _caller_main(request["main_module"], request["main_file"])
        random.seed()
        numpy = sys.modules.get("numpy")
        if numpy is not None:
            numpy.random.seed()
        from ehrcxr import cli

        try:
            status = cli.main(sys.argv[1:], warm=False)
        except SystemExit as exc:
            status = _exit_code(exc)
        except BaseException as exc:
            # The traceback a cold run prints: from cli.main down, without this frame.
            sys.excepthook(type(exc), exc, exc.__traceback__.tb_next)
            status = 1
        # What a cold interpreter does on its way out.
        threading._shutdown()  # type: ignore[attr-defined]  # joins non-daemon threads
        atexit._run_exitfuncs()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(status)


def _caller_main(module: str | None, file: str | None) -> types.ModuleType:
    """A ``__main__`` that says what the caller's says: the server's own ``__main__`` is this
    module, and a child that re-executes ``__main__`` must run the caller's command instead."""
    main = types.ModuleType("__main__")
    main.__spec__ = importlib.util.find_spec(module) if module else None
    if file is not None:
        main.__file__ = file
    return main


def _exit_code(exc: SystemExit) -> int:
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def _reopen_standard_streams() -> None:
    """New ``sys.std*`` over the caller's descriptors, buffered as a cold start buffers them."""
    encoding, errors = sys.stdout.encoding, sys.stdout.errors  # the locale's, as the caller's
    sys.stdin = io.TextIOWrapper(open(0, "rb", closefd=False), encoding=encoding, errors=errors)
    out = open(1, "wb", closefd=False)
    sys.stdout = io.TextIOWrapper(
        out, encoding=encoding, errors=errors, line_buffering=os.isatty(1)
    )
    err = open(2, "wb", closefd=False)
    sys.stderr = io.TextIOWrapper(
        err, encoding=encoding, errors="backslashreplace", line_buffering=True
    )
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr


def _idle_seconds() -> float:
    return float(os.environ.get("EHRCXR_WARM_IDLE", "120"))


if __name__ == "__main__":
    serve(sys.argv[1], Path(sys.argv[2]), _idle_seconds())
