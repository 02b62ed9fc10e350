"""Shards -> batches for training: the metadata-only planner (:mod:`.plan`), the tar
reader (:mod:`.shard_reader`), waveform decoding and 30 s windows (:mod:`.windows`), chat
rendering (:mod:`.chat`) and the worker-backed loader with exact resume (:mod:`.loader`).
No Ray."""
