"""Under torchrun with 2 ranks: rank 1 stops itself (SIGSTOP) after the process group is up;
rank 0 then waits in an all_reduce and must give up after the configured timeout."""

import os
import signal
import sys

import torch
import torch.distributed as dist

from llaso_train.distributed import fail_on_timeout, init_distributed

timeout = float(sys.argv[1])
init_distributed(timeout)
rank, world = dist.get_rank(), dist.get_world_size()
with fail_on_timeout("stopped_rank", rank, world, timeout):
    dist.barrier()
    if rank == 1:
        os.kill(os.getpid(), signal.SIGSTOP)
    dist.all_reduce(torch.ones(1))
print(f"rank {rank}: the all_reduce completed", flush=True)
