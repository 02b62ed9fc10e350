"""Connect to a Ray cluster, or start a private one on loopback (entry points only), with
the known noise of Ray Data and of the audio decoders kept off the console.

Exactly these lines are hidden, everything else Ray and the workers print stays visible:

* Ray Data's notice that progress bars are disabled (the CLI prints its own progress), its
  per-execution "execution finished in N seconds" INFO line, and its warning that the
  cluster "does not have any available CPUs", which it gives whenever the previous
  stage's write tasks still hold every CPU (the next stage waits for them; it does not
  hang);
* libmpg123's decoder messages (``[src/libmpg123/...] error: ...``), which it prints on a
  worker's stderr for an MP3 that conversion then rejects as ``audio_undecodable`` (the
  rejection names the file and the reason).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

DECODER_NOISE = r"^\[src/libmpg123/"
"""An extended regular expression for libmpg123's messages on a worker's stderr."""
_RAY_DATA_NOTICES = ("Progress bars disabled", "execution finished in", "does not have any available CPUs")


def init_ray(address: str | None, num_cpus: int | None = None, object_store_gb: float = 1.0) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``, as set by ``ray job submit``); without
    either, start a local Ray bound to 127.0.0.1 with no dashboard. Returns True when a
    local Ray was started (the caller shuts it down)."""
    import ray

    runtime_env = {"worker_process_setup_hook": "llaso_data.convert.ray_local.hide_decoder_noise"}
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True, runtime_env=runtime_env)
        _quiet_ray_data()
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray.init(
        num_cpus=num_cpus or os.cpu_count(),
        object_store_memory=int(object_store_gb * 2**30),
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        logging_level=logging.WARNING,
        configure_logging=True,
        runtime_env=runtime_env,
    )
    _quiet_ray_data()
    return True


def hide_decoder_noise() -> None:
    """Ray worker setup hook: route this process's native stderr (fd 2) through
    ``grep -v`` so libmpg123's messages are dropped and every other line passes, line by
    line. grep owns the pipe's read end, so it outlives the worker and drains what a dying
    worker wrote (nothing is lost on a crash). Without grep, stderr is left as it is."""
    grep = shutil.which("grep")
    if grep is None:
        return
    read_end, write_end = os.pipe()
    subprocess.Popen([grep, "-v", "--line-buffered", "-E", DECODER_NOISE], stdin=read_end, stdout=2,
                     stderr=subprocess.DEVNULL, close_fds=True, start_new_session=True)
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)


def _drop_known_notices(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(notice in message for notice in _RAY_DATA_NOTICES)


def _quiet_ray_data() -> None:
    """Filter Ray Data's console handlers (configured when ``ray.data`` is imported) so the
    notices above are dropped and its other records pass."""
    import ray.data  # noqa: F401  (configures the "ray.data" logger and its handlers)

    for handler in logging.getLogger("ray.data").handlers:
        if _drop_known_notices not in handler.filters:
            handler.addFilter(_drop_known_notices)
