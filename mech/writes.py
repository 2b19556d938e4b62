"""Writing result files safely: atomically, readable by the group, one clear error when a
write fails, and no leftovers of writers that died mid-write.

`atomic_write` writes through a unique temporary file in the target's folder, named by
its writer (``.<target>.<host>-<pid>.<random>.tmp``), then renamed over the target:
readers see the old file or the new one, never a part. `remove_leftovers` deletes the
temporary files whose writer is gone (its process has ended, on this host; older than
`STALE_ELSEWHERE_S`, from another host sharing the folder); `mech.store` calls it whenever it opens a folder, `studies.output` before it writes.
(Temporary files are not locked while written: HDF5 takes its own ``flock`` on the file it
writes, which a lock held here would refuse.)
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Callable

__all__ = ["WriteError", "atomic_write", "atomic_link", "remove_leftovers", "readable_mode", "write_error"]


class WriteError(OSError):
    """A result file could not be written; nothing partial was left behind."""


def readable_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# A temporary file's name says who writes it: ".<target>.<host>-<pid>.<random>.tmp".
_HOST = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"
_TEMPORARY = re.compile(r"\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^.]+\.tmp$")
STALE_ELSEWHERE_S = 3600  # a temporary file of another host: removed once unlocked and this old


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Write ``path`` through ``write(temporary_path)``: a unique temporary file in the same
    folder, named by this host and process, made readable as the umask allows (collaborators can read a shared run), then renamed
    over ``path``. On any failure the temporary file is removed and a `WriteError` names
    the path and the reason (e.g. the disk is full); one left by a killed writer is removed
    by `remove_leftovers`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise write_error(path, error) from None
    tmp = Path(tmp)
    try:
        os.fchmod(fd, readable_mode())
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, (OSError, RuntimeError)):
            raise write_error(path, error) from None
        raise
    return path


def atomic_link(path: Path, target: str) -> Path:
    """Make ``path`` a symbolic link to ``target`` (relative to its folder), replacing what
    is there in one rename; readers see the old link or the new one, never none."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{_HOST}-{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        os.symlink(target, tmp)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_error(path, error) from None
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _abandoned(path: Path) -> bool:
    """Whether temporary file ``path`` belongs to no live writer: its writer's process is
    gone (this host), or it is older than `STALE_ELSEWHERE_S` (another host, or a name
    that does not say)."""
    found = _TEMPORARY.search(path.name)
    if found and found["host"] == _HOST:
        return not _alive(int(found["pid"]))
    try:
        return time.time() - path.lstat().st_mtime > STALE_ELSEWHERE_S
    except OSError:
        return False


def remove_leftovers(folder: Path) -> list[Path]:
    """Remove from ``folder`` the temporary files of writers that died mid-write; returns
    what was removed."""
    folder = Path(folder)
    removed = []
    try:
        candidates = [p for p in folder.glob(".*.tmp") if _abandoned(p)]
    except OSError:
        return removed
    for path in candidates:
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def write_error(path: Path, error: BaseException) -> WriteError:
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    except OSError:
        free = None
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    full = (isinstance(error, OSError) and error.errno == errno.ENOSPC) or free == 0
    hint = "the disk is full: free space there and rerun (finished results are kept)" if full \
        else "rerun once that is fixed (finished results are kept)"
    space = f", {free} bytes free" if free is not None else ""
    code = error.errno if isinstance(error, OSError) and error.errno else errno.EIO
    return WriteError(code, f"could not write {path}: {reason}{space}; nothing partial was left; {hint}")
