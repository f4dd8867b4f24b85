"""Atomic file output and the checks on a stage's inputs.

Every stage writes to a temporary name and renames it into place. The temporary name starts with
:data:`TMP_PREFIX`, which the project's ``.gitignore`` ignores everywhere: a stage killed mid-write
(SIGKILL, a power cut) leaves patient-level files only where ``git add -A`` cannot pick them up,
and the next write of the same target removes what a dead writer left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ehrcxr.errors import EhrcxrError

# ``.gitignore``: ``.ehrcxr-tmp.*`` (tests/test_reliability.py checks the two agree).
TMP_PREFIX = ".ehrcxr-tmp."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Remove the temporary folders beside ``target`` whose writer is no longer running (its pid
    is part of the name); returns what was removed. A live writer's folder is left alone."""
    removed = []
    if not target.parent.is_dir():
        return removed
    for tmp in target.parent.glob(f"{TMP_PREFIX}{target.name}.*"):
        pid = tmp.name[len(TMP_PREFIX) + len(target.name) + 1 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success.

    Works for files and directories: whatever the caller creates at the yielded path replaces
    ``target`` (an existing directory is removed first), so readers never see half an output.
    The temporary folder is ``.ehrcxr-tmp.<name>.<pid>.<random>`` (git-ignored); leftovers of a
    killed writer of the same target are removed first.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    tmp_dir = Path(
        tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{target.name}.{os.getpid()}.", dir=target.parent)
    )
    tmp = tmp_dir / target.name
    try:
        yield tmp
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def write_bytes_atomic(target: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``target`` via a temporary file and a rename."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(target: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` via a temporary file and a rename."""
    write_bytes_atomic(target, text.encode("utf-8"))


def require_inputs(*paths: str | os.PathLike[str], made_by: str) -> None:
    """Stop with one line when an input file or folder is missing: which, and which stage makes
    it (``made_by``, e.g. ``ehrcxr extract``), before anything is read or written."""
    missing = [str(p) for p in paths if not Path(p).exists()]
    if missing:
        raise EhrcxrError(f"input {', '.join(missing)} not found: it is written by {made_by}")


def first_line(exc: BaseException) -> str:
    """An exception as one line: its type and the first line of its message."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def read_parquet(path: str | os.PathLike[str], what: str, columns: list[str] | None = None):
    """``pandas.read_parquet`` with one line naming ``what`` and ``path`` instead of a trace
    when the file is missing, truncated, not parquet, or lacks ``columns``."""
    import pandas as pd

    if not Path(path).is_file():
        raise EhrcxrError(f"{what} {path} not found")
    try:
        return pd.read_parquet(path, columns=columns)
    except (OSError, ValueError, KeyError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise EhrcxrError(f"{what} {path} is not readable: {first_line(exc)}") from None
