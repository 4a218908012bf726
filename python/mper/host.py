"""What this machine offers a process: the CPU cores it may run on and the memory it may still take."""

from __future__ import annotations

import os


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
