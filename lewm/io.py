"""Atomic writes: everything goes to a temporary sibling path first and is renamed into place,
so an interrupted or failing job never leaves half-written data where a finished result is expected.

A temporary path is `.<name>.tmp-<pid>-<random>` beside its target, locked (`flock`) by the writing process
until it is renamed. A writer killed outright (SIGKILL, power loss) cannot remove its temporary path, so
every atomic write first removes the temporary siblings of its target that no live writer holds
(`sweep_stale`): a re-run cleans up after the run that was killed instead of letting leftovers accumulate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # POSIX only: without it, stale temporary paths are told by their writer's pid alone
    fcntl = None


def _temp_prefix(target: Path) -> str:
    return f".{target.name}.tmp-"


def _pid_alive(pid: int) -> bool:
    """True when a process `pid` exists here (it may be another process that reuses a dead writer's pid:
    then its leftovers wait for a later sweep)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _lock(fd: int) -> bool:
    """Try to take the exclusive lock of `fd` without waiting; False when another process holds it."""
    if fcntl is None:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _is_stale(path: Path, prefix: str) -> bool:
    """A temporary path is stale when its writer (pid in its name) is gone and no process holds its lock.
    Both are checked: the pid closes the moment between creating a path and locking it, the lock covers a
    writer whose pid this process cannot see (another PID namespace on the same files)."""
    pid = path.name[len(prefix):].split("-", 1)[0]
    if pid.isdigit() and (int(pid) == os.getpid() or _pid_alive(int(pid))):
        return False
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # removed meanwhile, or unreadable: leave it
        return False
    try:
        return _lock(fd)
    finally:
        os.close(fd)


def sweep_stale(target: str | Path) -> list[Path]:
    """Remove the temporary siblings of `target` that killed writers left behind (`.<name>.tmp-*` no live
    process holds, and `.<name>.old-*`, a replaced result awaiting removal); return what was removed."""
    target = Path(target)
    prefix, old_prefix = _temp_prefix(target), f".{target.name}.old-"
    try:
        entries = list(os.scandir(target.parent))
    except FileNotFoundError:
        return []
    removed = []
    for entry in entries:
        path = Path(entry.path)
        if entry.name.startswith(old_prefix) or (entry.name.startswith(prefix) and _is_stale(path, prefix)):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_dir(target: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary directory next to `target`; on success rename it to `target`.

    On any exception the temporary directory is removed and `target` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists")
    sweep_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_temp_prefix(target)}{os.getpid()}-", dir=target.parent))
    fd = os.open(tmp, os.O_RDONLY)
    try:
        _lock(fd)
        try:
            yield tmp
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary file path next to `target`; on success rename it to `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(target)
    fd, name = tempfile.mkstemp(prefix=f"{_temp_prefix(target)}{os.getpid()}-", dir=target.parent,
                                suffix=target.suffix)
    tmp = Path(name)
    if fcntl is None:  # nothing to hold; and Windows cannot rename a file that is still open
        os.close(fd)
        fd = -1
    try:
        _lock(fd)
        try:
            yield tmp
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)
    finally:
        if fd >= 0:
            os.close(fd)


def write_json(path: str | Path, data: Any) -> None:
    """Write `data` as pretty JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def file_sha256(path: str | Path) -> str:
    """The SHA-256 (hex) of the file at `path`."""
    with Path(path).open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()
