"""The entry points hide exactly the known noise (torch's deprecated-collective warnings,
DeepSpeed's op-build line, Ray Data's notices, libmpg123's decoder messages) and keep every
other warning and line."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap

from llaso_data.convert.ray_local import _drop_known_notices
from llaso_train.quiet import DROPPED_LINES, LineFilter


def test_line_filter_drops_only_the_op_build_line_even_when_written_in_pieces():
    sink = io.StringIO()
    out = LineFilter(sink, DROPPED_LINES)
    print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully", file=out)
    out.write("step 1: loss 6.9")
    assert sink.getvalue() == ""                  # held until its newline arrives
    out.write("042\nDeepSpeed is not happy\n")
    print("training align: 24,704 trainable parameters", file=out)
    out.write("no newline at the end")
    out.close()
    assert sink.getvalue() == ("step 1: loss 6.9042\nDeepSpeed is not happy\n"
                               "training align: 24,704 trainable parameters\nno newline at the end")


def test_only_the_deprecated_collective_warnings_are_hidden():
    code = textwrap.dedent("""
        import warnings
        from llaso_train.quiet import hide_known_noise
        hide_known_noise()
        warnings.warn("`torch.distributed.all_gather_into_tensor` is deprecated. Please use x", FutureWarning)
        warnings.warn("`torch.distributed.reduce_scatter_tensor` is deprecated. Please use y", FutureWarning)
        warnings.warn("`torch.distributed.all_reduce_coalesced` is deprecated.", FutureWarning)
        warnings.warn("a real problem", UserWarning)
        print("DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully")
        print("kept")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "all_gather_into_tensor" not in result.stderr and "reduce_scatter_tensor" not in result.stderr
    assert "all_reduce_coalesced" in result.stderr and "a real problem" in result.stderr
    assert result.stdout == "kept\n"


def test_decoder_noise_is_dropped_from_native_stderr_and_other_lines_pass():
    code = textwrap.dedent("""
        import os
        from llaso_data.convert.ray_local import hide_decoder_noise
        hide_decoder_noise()
        os.write(2, b"[src/libmpg123/layer3.c:INT123_do_layer3():1774] error: part2_3_length too large\\n")
        os.write(2, b"Fatal Python error: a real one\\n")
        os.write(2, b"note: mentions [src/libmpg123/ mid-line\\n")
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert result.returncode == 0
    assert result.stderr == b"Fatal Python error: a real one\nnote: mentions [src/libmpg123/ mid-line\n"


def test_ray_data_notices_are_dropped_and_other_records_kept():
    def record(message, level=logging.WARNING):
        return logging.LogRecord("ray.data", level, __file__, 1, message, None, None)

    assert not _drop_known_notices(record("Progress bars disabled. To enable, set `...`"))
    assert not _drop_known_notices(record("✔️  Dataset d_0 execution finished in 2.42 seconds", logging.INFO))
    assert not _drop_known_notices(record("Warning: The Ray cluster currently does not have any available CPUs."))
    assert _drop_known_notices(record("Task failed: out of disk space"))
    assert _drop_known_notices(record("Operator MapBatches is spilling to disk"))
