"""Evaluation in LLaSO's way: answer an eval corpus's shards with a trained model
(:mod:`llaso_eval.generate`), then per-task metrics, abstention, normalised score and report.

Library modules are pure (no printing, no exit codes); :mod:`llaso_eval.cli` is the entry
point (``llaso-eval``), and :func:`llaso_eval.generate.generate` the torchrun entry of
generation. Only ``generate`` imports torch (and ``llaso_train``, when it runs): scoring is
fast to import and runs on any machine. :class:`llaso_eval.judge.HFJudge` imports
``transformers`` only when it is built.
"""
