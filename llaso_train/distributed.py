"""Process-group start-up shared by training and generation: a collective timeout, and
rank processes that never outlive their launcher.

A rank that waits longer than ``timeout_s`` in a collective (a peer stopped, hung or
dead) gets an error from the backend instead of waiting forever; :func:`fail_on_timeout`
turns it into one line naming the rank and exit status 3. Each rank asks the kernel to
kill it when its parent (``torchrun``) dies, so killing the launcher, even with SIGKILL,
leaves no rank behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

import torch

DEFAULT_TIMEOUT_S = 1800.0
"""Collective timeout (s): longer than any checkpoint save or first-step compile seen."""
TIMEOUT_EXIT_STATUS = 3
_PR_SET_PDEATHSIG = 1


def init_distributed(timeout_s: float) -> None:
    """Start the default process group (NCCL on a GPU, else gloo) with ``timeout_s``
    seconds per collective, after tying this process's life to its launcher's."""
    import deepspeed

    die_with_parent()
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                               timeout=timedelta(seconds=timeout_s))


def die_with_parent() -> None:
    """Have the kernel send SIGKILL to this process when its parent exits (Linux; a no-op
    elsewhere). Does nothing when not started by a launcher (no ``LOCAL_RANK``)."""
    if "LOCAL_RANK" not in os.environ or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() == 1:  # the launcher died before prctl took effect
        os._exit(TIMEOUT_EXIT_STATUS)


@contextmanager
def fail_on_timeout(program: str, rank: int, world: int, timeout_s: float) -> Iterator[None]:
    """Run the body; a collective that fails (timed out, or a peer's connection lost)
    ends this rank at once with one line on stderr and :data:`TIMEOUT_EXIT_STATUS`
    (``os._exit``: a normal exit would wait in the process group's teardown)."""
    try:
        yield
    except (RuntimeError, torch.distributed.DistError) as error:
        if not _is_collective_failure(error):
            raise
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        print(f"{program}: rank {rank} of {world}: gave up waiting for "
              f"{'rank ' + str(1 - rank) if world == 2 else 'another rank'} in a collective "
              f"(timeout {timeout_s:g} s): {first}", file=sys.stderr, flush=True)
        os._exit(TIMEOUT_EXIT_STATUS)


def _is_collective_failure(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.distributed.DistError) or any(
        word in text for word in ("timed out", "timeout", "connection closed", "connection reset", "gloo"))
