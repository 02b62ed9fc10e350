"""A deterministic synthetic corpus in the real LLaSO / LLaSM layout, for the demo, the
tests and the benchmarks: records (:mod:`.corpus`) and the audio they point at
(:mod:`.audio`). Not part of the library: ``llaso-shard synth`` imports it lazily."""
