"""Process-group start-up shared by training and generation: a collective timeout, and
rank processes that never outlive their launcher.

A rank that waits longer than ``timeout_s`` in a collective (a peer stopped, hung or
dead) gets an error from the backend instead of waiting forever; :func:`fail_on_timeout`
turns it into one line naming the rank, and the ranks that did not arrive, and exit
status 3. Those are found only after the failure, at no cost per step: each rank whose
collective failed checks in to the process group's key-value store (under ``torchrun``
its launcher holds it) and waits up to :data:`CHECK_IN_S` for the others; the ranks
that never check in are the ones named. Each rank asks the kernel to
kill it when its parent (``torchrun``) dies, so killing the launcher, even with SIGKILL,
leaves no rank behind.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from datetime import timedelta
from typing import Iterator

import torch

DEFAULT_TIMEOUT_S = 1800.0
"""Collective timeout (s): longer than any checkpoint save or first-step compile seen."""
TIMEOUT_EXIT_STATUS = 3
CHECK_IN_S = 10.0
"""After a failed collective, how long (s, at most the collective timeout) a rank waits for
the other ranks to check in before naming those that did not."""
_CHECK_IN_KEY = "llaso/failed-collective/rank"
_PR_SET_PDEATHSIG = 1


def init_distributed(timeout_s: float) -> None:
    """Start the default process group (NCCL on a GPU, else gloo) with ``timeout_s``
    seconds per collective, after tying this process's life to its launcher's."""
    import deepspeed

    die_with_parent()
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                               timeout=timedelta(seconds=timeout_s))


def shutdown_distributed() -> None:
    """Leave the default process group in order: wait for every rank, then destroy the group,
    so no backend thread is left running when the interpreter exits (an exit with the group
    alive can abort at teardown: "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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
        wait_s = min(CHECK_IN_S, timeout_s)
        absent = absent_ranks(rank, world, wait_s)
        if absent:
            waited = f"{'rank' if len(absent) == 1 else 'ranks'} {', '.join(map(str, absent))}"
        elif absent is None:  # the store did not answer: guess only where there is one peer
            waited = f"rank {1 - rank}" if world == 2 else "another rank"
        else:
            waited = "another rank (every rank checked in after the failure)"
        print(f"{program}: rank {rank} of {world}: gave up waiting for {waited} in a collective "
              f"(timeout {timeout_s:g} s): {first}", file=sys.stderr, flush=True)
        os._exit(TIMEOUT_EXIT_STATUS)


def absent_ranks(rank: int, world: int, wait_s: float) -> list[int] | None:
    """After a failed collective: check this rank in to the default process group's store
    and wait up to ``wait_s`` seconds for every other rank to do the same. Returns the
    ranks that did not (ascending; ``[]`` when all did), or ``None`` when the store could
    not be used. Runs in a daemon thread joined with a deadline, so a store that does not
    answer (held by a stopped process) costs ``wait_s + 2`` seconds at most."""
    found: dict[str, list[int]] = {}

    def check_in() -> None:
        from torch.distributed import distributed_c10d

        store = distributed_c10d._get_default_store()
        store.set_timeout(timedelta(seconds=wait_s + 1))
        store.set(f"{_CHECK_IN_KEY}{rank}", "alive")
        deadline = time.monotonic() + wait_s
        absent = [r for r in range(world) if r != rank]
        while True:
            absent = [r for r in absent if not store.check([f"{_CHECK_IN_KEY}{r}"])]
            if not absent or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        found["absent"] = absent

    def guarded() -> None:
        try:
            check_in()
        except Exception:  # any store failure: the caller falls back to what it knows
            pass

    thread = threading.Thread(target=guarded, name="check-in", daemon=True)
    thread.start()
    thread.join(wait_s + 2)
    return found.get("absent")


def _is_collective_failure(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.distributed.DistError) or any(
        word in text for word in ("timed out", "timeout", "connection closed", "connection reset", "gloo"))
