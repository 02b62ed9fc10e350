"""One conversion at a time per output folder: an advisory lock on ``OUT/.state/lock``.

The lock is a ``flock`` held on an open file for as long as the conversion runs; the
kernel drops it when the process ends, however it ends, so a lock left by a killed run is
taken over without a step. The file names the holder (PID and host) for the message a
second conversion gets.
"""

from __future__ import annotations

import fcntl
import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_FILE = "lock"


class OutputBusyError(RuntimeError):
    """Another live conversion holds the output folder."""


@contextmanager
def out_lock(state_dir: Path) -> Iterator[None]:
    """Hold the lock of the output folder whose state folder is ``state_dir`` (created
    by the caller); raises :class:`OutputBusyError` naming the holder when it is taken."""
    path = state_dir / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 4096, 0).decode("utf-8", "replace").strip() or "another process"
            raise OutputBusyError(f"{state_dir.parent} is being converted into by {holder}; "
                                  "wait for it to finish or choose another output folder") from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"PID {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(descriptor, 0)  # an idle OUT names no holder
    finally:
        os.close(descriptor)
