"""Evaluation of LLaSO-style prediction files: per-task metrics, abstention, normalised score, report.

Library modules are pure (no printing, no exit codes); :mod:`llaso_eval.cli` is the entry
point (``llaso-eval``). Nothing here imports torch or ``llaso_train``: scoring is fast to
import and runs on any machine. :class:`llaso_eval.judge.HFJudge` imports ``transformers``
only when it is built.
"""
