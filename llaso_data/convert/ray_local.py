"""Connect to a Ray cluster, or start a private one on loopback (entry points only)."""

from __future__ import annotations

import logging
import os


def init_ray(address: str | None, num_cpus: int | None = None, object_store_gb: float = 1.0) -> bool:
    """Connect to ``address`` (or ``RAY_ADDRESS``, as set by ``ray job submit``); without
    either, start a local Ray bound to 127.0.0.1 with no dashboard. Returns True when a
    local Ray was started (the caller shuts it down)."""
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=True)
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
    )
    _quiet_ray_data()
    return True


def _quiet_ray_data() -> None:
    """Ray Data logs every finished execution at INFO; the CLI prints its own progress."""
    logging.getLogger("ray.data").setLevel(logging.ERROR)
