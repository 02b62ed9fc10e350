"""The dtype policy: one compute dtype for every parameter of the speech LM.

Checkpoints load in whatever dtype they were saved in (transformers 5 keeps it: a Whisper
saved in fp16 next to a Llama saved in bf16), and DeepSpeed requires one dtype for all the
parameters it manages. So every parameter (encoder, projector, LM) is put in the compute
dtype before DeepSpeed sees the model and before an exported model runs:

- ``bf16`` on: ``torch.bfloat16`` (DeepSpeed keeps fp32 master weights in the optimizer);
  ``bf16`` off: ``torch.float32``, on CPU and GPU alike.
- the projector follows the LM (same dtype as the LM's embeddings);
- the log-mel front end computes in float32 and its output is cast once, to the encoder's
  dtype, in :meth:`llaso_train.model.SpeechLM.embed`.
"""

from __future__ import annotations

import torch
from torch import nn


def resolve_bf16(setting, cuda: bool | None = None) -> bool:
    """``bf16`` setting (``"auto"``, ``True``, ``False``) -> on or off; ``auto`` = on a GPU only."""
    if setting == "auto":
        return torch.cuda.is_available() if cuda is None else cuda
    if setting not in (True, False):
        raise ValueError(f"bf16 must be auto, true or false, not {setting!r}")
    return bool(setting)


def compute_dtype(bf16: bool) -> torch.dtype:
    """``torch.bfloat16`` when ``bf16`` else ``torch.float32``."""
    return torch.bfloat16 if bf16 else torch.float32


def check_compute_dtype(module: nn.Module, dtype: torch.dtype) -> None:
    """Raise ValueError, naming the first offenders, unless every floating-point parameter
    of ``module`` is ``dtype``."""
    wrong = [f"{name} ({p.dtype})" for name, p in module.named_parameters() if p.is_floating_point() and p.dtype != dtype]
    if wrong:
        raise ValueError(f"{len(wrong)} parameters not in {dtype}: {', '.join(wrong[:4])}")
