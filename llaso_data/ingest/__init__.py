"""Annotation files -> samples and rejections: streaming JSON / JSONL readers
(:mod:`.readers`), record validation (:mod:`.validate`), audio path confinement
(:mod:`.paths`) and corpus walking and scanning (:mod:`.corpus`). No torch, no Ray."""
