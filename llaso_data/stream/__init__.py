"""Shards -> batches for training: the metadata-only planner (:mod:`.plan`), the tar
reader (:mod:`.shard_reader`), waveform decoding and 30 s windows (:mod:`.windows`), chat
rendering (:mod:`.chat`), the worker-backed loader with exact resume (:mod:`.loader`) and
the mixture preview (:mod:`.preview`).
No Ray."""
