"""Crash-safe file output: write to a temporary name beside the target, fsync, then rename.

A reader never sees a half-written file, an interrupted write leaves the old file intact, and once
a write returns its result survives a crash (of the process or of the machine): the data is
fsynced before the rename and the directory entry after it.
"""
from __future__ import annotations

import errno
import fcntl
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Replace `path` with `data`."""
    path = Path(path)
    tmp = _written_beside(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def _written_beside(path: Path, data: bytes) -> str:
    """A new file beside `path` holding `data`, fsynced, with the umask's mode: its name,
    `.NAME.PID.RANDOM.tmp`, carries the writer's pid so that a cleaner can tell a killed writer's
    leftover from a live writer's file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would make every file private
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


# What flock says on a filesystem that keeps no such locks (some network filesystems)
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS)


def lock_exclusively(fd: int) -> bool:
    """Take an advisory lock (flock) on the open file or directory `fd`, which the kernel lets go
    when the process ends, kill -9 too: True; BlockingIOError where another process holds it;
    False where the filesystem keeps no such locks, and keeping to one writer is the user's."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as e:
        if e.errno in NO_LOCKS:
            return False
        raise
    return True


def remove_dead_writers_temporaries(path: str | os.PathLike) -> None:
    """Remove what writers of `path` killed mid-write left beside it: atomic_write_bytes's
    temporaries, `.NAME.PID.RANDOM.tmp`, of a PID no longer running (a live writer's stay)."""
    path = Path(path)
    ours = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.\w+\.tmp")
    for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        found = ours.fullmatch(leftover.name)
        if found and leftover.is_file() and not leftover.is_symlink() and not process_alive(int(found.group(1))):
            leftover.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_create_text(path: str | os.PathLike, text: str) -> None:
    """Make `path` hold `text`, whole, only where nothing is there: FileExistsError where another
    writer got there first, between a check that it was free and now (a link, unlike a rename,
    refuses an existing name)."""
    path = Path(path)
    tmp = _written_beside(path, text.encode("utf-8"))
    try:
        os.link(tmp, path)
    finally:
        os.unlink(tmp)
    fsync_dir(path.parent)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of directory `path` (files created, renamed or removed in it) durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def unwritable(directory: str | os.PathLike) -> str | None:
    """Why no file can be created in `directory` (or, if it is yet to be made, in the directory
    that would hold it), told before any work; None when one can."""
    existing = Path(directory)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if os.statvfs(existing).f_flag & os.ST_RDONLY:
        return f"{existing} is on a read-only filesystem"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


@contextmanager
def scratch_dir(path: Path) -> Iterator[Path]:
    """Create the directory `path` for the block to fill (and usually rename away); if the block
    raises anything, KeyboardInterrupt and SystemExit included, remove whatever is left of it."""
    path.mkdir()
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def process_alive(pid: int) -> bool:
    """Whether a process with this pid is running: a temporary named for a live writer is not a
    leftover. Another user's process, or a number no process can have, counts as alive: not ours
    to clear up either way. A zombie, dead but not yet reaped by its parent (a writer killed under
    `timeout -s KILL` may stay one for long), is dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    """Linux: the state in /proc/PID/stat, the field after the command's closing parenthesis, is
    Z. Where there is no such file (another system, no /proc), kill's answer stands."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:].startswith(b"Z")
