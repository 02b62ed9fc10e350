"""Under torchrun: rank ``STOPPED`` (argv[2], default the last) stops itself (SIGSTOP)
after the process group is up; the other ranks then wait in an all_reduce and must give
up after the configured timeout (argv[1], seconds), naming it."""

import os
import signal
import sys

import torch
import torch.distributed as dist

from llaso_train.distributed import fail_on_timeout, init_distributed

timeout = float(sys.argv[1])
init_distributed(timeout)
rank, world = dist.get_rank(), dist.get_world_size()
stopped = int(sys.argv[2]) if len(sys.argv) > 2 else world - 1
with fail_on_timeout("stopped_rank", rank, world, timeout):
    dist.barrier()
    if rank == stopped:
        os.kill(os.getpid(), signal.SIGSTOP)
    dist.all_reduce(torch.ones(1))
print(f"rank {rank}: the all_reduce completed", flush=True)
