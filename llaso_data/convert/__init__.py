"""Samples + audio -> stratified WebDataset shards: audio checks and transcoding
(:mod:`.transcode`), the tar writer (:mod:`.shard_writer`), the Ray Data pipeline
(:mod:`.pipeline`), a private local Ray (:mod:`.ray_local`), shard verification
(:mod:`.verify`) and corpus statistics (:mod:`.stats`). No torch."""
