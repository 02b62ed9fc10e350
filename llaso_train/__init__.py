"""Two-stage LLaSO-style training (align, instruct) streamed from shards; see README."""
