"""The warm interpreter (ehrcxr.warm): a command run through it is indistinguishable from a cold
run (outputs, exit status, logs), signals reach it, and it never serves stale code."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from ehrcxr import warm

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def runtime() -> Iterator[Path]:
    """A private runtime folder (so this test's server is its own), short enough for a socket's
    path; the server is stopped after."""
    folder = Path(tempfile.mkdtemp(prefix="ehrcxr-test-", dir="/tmp"))
    yield folder
    for pid in _servers(folder):
        os.kill(pid, signal.SIGTERM)
    shutil.rmtree(folder, ignore_errors=True)


def _servers(folder: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"ehrcxr.warm" in cmdline and any(str(folder).encode() in a for a in cmdline):
                found.append(int(entry.name))
    return found


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _env(runtime: Path, warm_on: bool) -> dict[str, str]:
    return {
        **os.environ,
        "XDG_RUNTIME_DIR": str(runtime),
        "WANDB_MODE": "disabled",
        "EHRCXR_WARM": "1" if warm_on else "0",
        "EHRCXR_WARM_IDLE": "60",
    }


def _train(data: dict[str, Path], out: Path, model: str = "lstm") -> list[str]:
    return [
        sys.executable, "-m", "ehrcxr.cli", "train", "--model", model, "--task", "mortality",
        "--cohort", "matched", "--extract", str(data["extract"]),
        "--features", str(data["features"]), "--images", str(data["images"]),
        "--out", str(out / "ckpt"), "--predictions", str(out / "pred.parquet"),
        "--curves", str(out / "curves.csv"), "--params", str(REPO / "params.yaml"),
    ]  # fmt: skip


def test_warm_run_is_a_cold_run(small_data: dict[str, Path], tmp_path: Path, runtime: Path) -> None:
    out = tmp_path / "out"
    runs = {}
    for mode in (False, True):
        for path in out.glob("**/*"):
            if path.is_file():
                path.unlink()
        done = subprocess.run(
            _train(small_data, out), env=_env(runtime, mode), capture_output=True, text=True
        )
        runs[mode] = (
            done.returncode,
            done.stderr,
            done.stdout.splitlines()[-1].split('"seconds"')[0],
            (out / "pred.parquet").read_bytes(),
            (out / "curves.csv").read_text(),
        )
    assert runs[False][0] == 0, runs[False][1]
    assert _servers(runtime), "the warm run did not start a server"
    cold, hot = runs[False], runs[True]
    assert hot[0] == cold[0]
    assert hot[1] == cold[1]  # the same log, line for line
    assert hot[2] == cold[2]
    assert hot[3] == cold[3]  # byte-identical predictions
    assert hot[4] == cold[4]


def test_warm_failure_is_a_cold_failure(
    small_data: dict[str, Path], tmp_path: Path, runtime: Path
) -> None:
    results = []
    for mode in (False, True):
        argv = _train(small_data, tmp_path, model="no_such_model")
        done = subprocess.run(argv, env=_env(runtime, mode), capture_output=True, text=True)
        results.append((done.returncode, done.stdout, done.stderr))
    assert results[0][0] == 2
    assert "no_such_model" in results[0][2]
    assert results[1] == results[0]
    assert _servers(runtime)


def _endless_training(data: dict[str, Path], tmp_path: Path) -> list[str]:
    """A training command that runs until stopped (500 epochs, no early stopping)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(max_epochs=500, max_batches=-1, min_epochs=500, patience=500)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = _train(data, tmp_path)
    argv[argv.index("--params") + 1] = str(tmp_path / "params.yaml")
    return argv


def _command_under(runtime: Path, caller: subprocess.Popen) -> int:
    """The pid of the command the warm server forked for ``caller``, once it runs."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and caller.poll() is None:
        for server in _servers(runtime):
            for child in _children(server):
                return child
        time.sleep(0.05)
    raise AssertionError("no command started under the warm server")


def _wait_gone(pid: int, seconds: float = 30) -> bool:
    deadline = time.monotonic() + seconds
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not Path(f"/proc/{pid}").exists()


def test_a_signal_to_the_caller_reaches_the_command(
    small_data: dict[str, Path], tmp_path: Path, runtime: Path
) -> None:
    caller = subprocess.Popen(
        _endless_training(small_data, tmp_path), env=_env(runtime, True), stderr=subprocess.PIPE
    )
    command = _command_under(runtime, caller)
    time.sleep(3)  # into the epochs
    assert caller.poll() is None
    caller.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = caller.communicate(timeout=60)
    assert caller.returncode != 0
    assert b"KeyboardInterrupt" in stderr or b"interrupt" in stderr.lower()
    assert _wait_gone(command)
    assert not (tmp_path / "pred.parquet").exists()


def test_a_caller_that_dies_takes_its_command_along(
    small_data: dict[str, Path], tmp_path: Path, runtime: Path
) -> None:
    caller = subprocess.Popen(
        _endless_training(small_data, tmp_path),
        env=_env(runtime, True),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    command = _command_under(runtime, caller)
    time.sleep(3)
    caller.kill()  # SIGKILL: nothing is forwarded; the server sees the connection close
    caller.wait(timeout=30)
    assert _wait_gone(command)
    assert not (tmp_path / "pred.parquet").exists()


def test_a_caller_that_hangs_up_before_its_pid_leaves_no_command_behind(
    small_data: dict[str, Path], tmp_path: Path, runtime: Path
) -> None:
    """A caller that is gone before the server replies with the command's pid (Ctrl-C at once):
    the command is killed rather than orphaned, and the server goes on serving. (The server
    used to die of the failed reply, leaving an endless command running without a caller.)"""
    started = subprocess.run(  # starts the server (a command that fails at once)
        _train(small_data, tmp_path, model="no_such_model"), env=_env(runtime, True)
    )
    assert started.returncode == 2
    (server,) = _servers(runtime)
    (path,) = runtime.glob("ehrcxr-warm-*/train-*.sock")
    argv = _endless_training(small_data, tmp_path)
    request = {
        "argv": argv[2:],
        "cwd": str(tmp_path),
        "env": _env(runtime, True),
        "affinity": sorted(os.sched_getaffinity(0)),
        "main_module": "ehrcxr.cli",
        "main_file": None,
    }
    payload = json.dumps(request).encode()
    with open(os.devnull, "rb") as null_in, open(os.devnull, "wb") as null_out:
        fds = [null_in.fileno(), null_out.fileno(), null_out.fileno()]
        for _ in range(3):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(str(path))
            socket.send_fds(conn, [len(payload).to_bytes(8, "big")], fds)
            conn.sendall(payload)
            conn.close()  # gone before the pid arrives
    deadline = time.monotonic() + 60
    while _children(server) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _children(server) == [], "a command outlived its caller"
    assert _servers(runtime) == [server]
    again = subprocess.run(
        _train(small_data, tmp_path, model="no_such_model"), env=_env(runtime, True)
    )
    assert again.returncode == 2 and _servers(runtime) == [server]  # served by the same server


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two CPUs to tell masks apart")
def test_the_command_runs_on_the_callers_cpus(
    small_data: dict[str, Path], tmp_path: Path, runtime: Path
) -> None:
    """A cold run inherits its caller's CPU affinity; so does a warm one, whatever the affinity
    of the caller that started the server (the training core sizes its threads by it)."""
    cpus = list(range(os.cpu_count() or 1))
    seen = []
    for mask in (cpus, cpus[-1:]):  # the first caller starts the server on every CPU
        caller = subprocess.Popen(
            _endless_training(small_data, tmp_path),
            env=_env(runtime, True),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda mask=mask: os.sched_setaffinity(0, mask),
        )
        try:
            command = _command_under(runtime, caller)
            # The fork has the server's mask until the command applies the caller's: poll.
            deadline = time.monotonic() + 60
            while os.sched_getaffinity(command) != set(mask) and time.monotonic() < deadline:
                time.sleep(0.05)
            seen.append((os.sched_getaffinity(command), set(mask)))
            # Stop it once it trains: a SIGINT in the first moments after the fork can be lost
            # when the caller's parent ignores SIGINT (as pytest-xdist workers do) — a known,
            # open defect of the warm interpreter (README), not what this test is about.
            time.sleep(3)
        finally:
            caller.send_signal(signal.SIGINT)
            caller.wait(timeout=60)
        assert _wait_gone(command)
    servers = _servers(runtime)
    assert len(servers) == 1 and os.sched_getaffinity(servers[0]) == set(cpus)
    assert [got for got, _ in seen] == [want for _, want in seen]


def test_the_server_key_changes_with_what_a_fork_would_freeze(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    package = tmp_path / "ehrcxr"
    (package / "models").mkdir(parents=True)
    (package / "warm.py").write_text("")
    (package / "models" / "lstm.py").write_text("A = 1\n")
    monkeypatch.setattr(warm, "__file__", str(package / "warm.py"))
    key = warm.server_key()
    (package / "models" / "lstm.py").write_text("A = 2\n")  # an edited model: a new server
    assert warm.server_key() != key
    key = warm.server_key()
    assert warm.server_key() == key
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert warm.server_key() != key
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("WANDB_MODE", "offline")  # read per run, not at import: same server
    assert warm.server_key() == key


def test_which_commands_run_warm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EHRCXR_WARM", raising=False)
    for name in warm._DDP_ENV:
        monkeypatch.delenv(name, raising=False)
    assert warm.enabled("train") and warm.enabled("evaluate")
    assert not warm.enabled("extract") and not warm.enabled(None)
    monkeypatch.setenv("LOCAL_RANK", "1")  # a DDP worker: Lightning launched it, cold
    assert not warm.enabled("train")
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("EHRCXR_WARM", "0")
    assert not warm.enabled("train")


def test_both_replies_in_one_packet_are_two_lines() -> None:
    # A command that ends at once: the pid and the exit status reach the caller together.
    server, caller = socket.socketpair()
    with server, caller, caller.makefile("rb") as replies:
        server.sendall(b"4321\n2\n")
        server.close()
        assert warm._read_line(replies) == "4321"
        assert warm._read_line(replies) == "2"
        with pytest.raises(OSError):
            warm._read_line(replies)
