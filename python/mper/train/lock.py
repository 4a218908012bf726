"""One training run per run folder: a lock file that names the run holding it.

``train.lock`` is created exclusively when a run starts and removed when it ends. A
second run into the same folder is refused with the first one's process id, host and
start time. A lock left by a process that no longer exists on this host (killed with
SIGKILL, a crashed machine) is taken over.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mper.errors import RunFolderError

log = logging.getLogger(__name__)

LOCK_FILE = "train.lock"


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _holder(lock: Path) -> dict[str, Any]:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}


def _is_stale(holder: dict[str, Any]) -> bool:
    return holder.get("host") == socket.gethostname() and not _process_exists(int(holder.get("pid", -1)))


def _try_create(lock: Path) -> bool:
    """Create ``lock`` naming this process; ``False`` if it already exists."""
    try:
        handle = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return False
    except OSError as error:
        raise RunFolderError(
            f"cannot write in {lock.parent} ({error.strerror}); choose another --out or fix its permissions"
        ) from error
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with os.fdopen(handle, "w") as stream:
        json.dump(owner, stream)
    return True


@contextmanager
def run_folder_lock(run_dir: str | Path) -> Iterator[dict[str, Any] | None]:
    """Hold ``run_dir/train.lock`` for the duration of the block; yields what the lock of a
    process that no longer exists said (pid, host, started), taken over, or ``None``.

    Raises :class:`~mper.errors.RunFolderError` naming the run that holds it.
    """
    lock = Path(run_dir) / LOCK_FILE
    stale: dict[str, Any] | None = None
    if not _try_create(lock):
        holder = _holder(lock)
        if not (holder and _is_stale(holder)):
            who = (
                f"process {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
                if holder
                else "a process that left no details"
            )
            raise RunFolderError(
                f"{run_dir} is in use by another training run ({who}); wait for it to finish or "
                f"choose another --out. If that run no longer exists, delete {lock}"
            )
        log.info("taking over %s from process %s, which no longer exists", lock, holder["pid"])
        lock.unlink(missing_ok=True)
        if not _try_create(lock):
            raise RunFolderError(f"{run_dir} was just taken by another training run; choose another --out")
        stale = holder
    try:
        yield stale
    finally:
        lock.unlink(missing_ok=True)
