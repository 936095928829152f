"""File-system helpers shared by the command line and the nnU-Net integration."""

from __future__ import annotations

import os
import threading

_LOCK = threading.Lock()


def new_file_mode() -> int:
    """The permission bits ``open(path, "w")`` would give a new file: ``0o666`` less the umask.

    Read from ``/proc/self/status`` where it exists, without touching the umask: the only portable
    way (``os.umask``) sets it to read it, and a thread writing a file in that moment (Dask workers
    run tasks in threads) would create it world-writable. Elsewhere the swap is made under a lock.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return 0o666 & ~mask
