"""The data half of llaso-stream, laid out along the data flow:

* the contract, here at the top: :mod:`~llaso_data.records` (the one sample type and the
  rejection catalogue), :mod:`~llaso_data.tasks` (the task catalogue),
  :mod:`~llaso_data.manifest` (the on-disk tables) and :mod:`~llaso_data.frontend` (the
  Whisper front end's 16 kHz / 30 s / 50 frames-per-second geometry);
* :mod:`llaso_data.ingest`: annotation files -> samples and rejections;
* :mod:`llaso_data.convert`: samples + audio -> WebDataset shards (Ray), verify, stats;
* :mod:`llaso_data.stream`: shards -> planned, rendered batches for training.

A sub-package imports the contract and the sub-packages before it, never one after it;
:mod:`llaso_data.cli` (``llaso-shard``) is the entry point that drives them all.
"""
