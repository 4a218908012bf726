"""What this machine offers a process: the CPU cores it may run on and the memory it may
still take; and how the machine asks it to stop: SIGTERM (a scheduler pre-empting the job,
``kill``) handled as Ctrl-C."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


def available_host_memory() -> int:
    """Bytes of RAM the system reports available (``MemAvailable``: free memory plus what
    the page cache would give back)."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Terminated(KeyboardInterrupt):
    """SIGTERM turned into a Ctrl-C by :func:`sigterm_as_interrupt`: what was running stops
    as on Ctrl-C, and the command ends as a terminated one (one line, exit status 143)."""

    signal_name = "SIGTERM"


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated`, a :class:`KeyboardInterrupt`,
    rather than ending the process silently; the previous handler is restored after it.
    Outside the main thread, where signals cannot be caught, it changes nothing.

    The training loop handles SIGTERM itself (:class:`mper.train.runtime.StopRequest`
    saves a checkpoint first); this covers the rest of a command and a sweep's pool of
    training processes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
