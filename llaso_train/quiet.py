"""Known noise of torch, DeepSpeed and transformers, kept off the console by the entry
points (``python -m llaso_train`` and ``llaso-eval generate``), never by library code.

Exactly these are hidden; every other warning and line stays visible:

* torch's ``FutureWarning`` that ``torch.distributed.reduce_scatter_tensor`` and
  ``all_gather_into_tensor`` are deprecated, raised from inside DeepSpeed's ZeRO-3
  collectives on every step of every rank (four lines per step and rank);
* DeepSpeed's ``DeepSpeed deepspeed.ops.comm.<op> built successfully``, printed by each
  rank when it loads its CPU communication op;
* transformers' progress bars (``Loading weights``, ``Writing model shards``), which
  redraw for a few milliseconds per call on a tiny model.
"""

from __future__ import annotations

import io
import re
import sys
import warnings

DEPRECATED_COLLECTIVES = r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated"
DROPPED_LINES = re.compile(r"^DeepSpeed deepspeed\.ops\.\S+ built successfully$")


class LineFilter(io.TextIOBase):
    """A text stream that passes whole lines on to ``stream`` except those matching
    ``dropped``; a line is held until its newline arrives (or until :meth:`close`)."""

    def __init__(self, stream, dropped: re.Pattern):
        self.stream, self.dropped, self.pending = stream, dropped, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.pending += text
        *lines, self.pending = self.pending.split("\n")
        kept = [line + "\n" for line in lines if not self.dropped.match(line)]
        if kept:
            self.stream.write("".join(kept))
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def close(self) -> None:
        if self.pending and not self.dropped.match(self.pending):
            self.stream.write(self.pending)
        self.pending = ""
        self.stream.flush()

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        return self.stream.isatty()


def hide_known_noise() -> None:
    """Install the filters above for this process (call once, first thing in ``main``)."""
    warnings.filterwarnings("ignore", message=DEPRECATED_COLLECTIVES, category=FutureWarning)
    if not isinstance(sys.stdout, LineFilter):
        sys.stdout = LineFilter(sys.stdout, DROPPED_LINES)
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
