"""Ray job: convert a LLaSO/LLaSM corpus into stratified WebDataset shards.

The same job as ``llaso-shard convert``, as a script for a Ray cluster:

    ray job submit --address http://HEAD:8265 --working-dir . -- \\
        python pipelines/shard_corpus.py SRC OUT [--audio-root DIR | --audio-archives 'GLOB' ...] \\
        [--audio flac16k] [--samples-per-shard N] [--seed N]

Under ``ray job submit`` it joins the cluster through ``RAY_ADDRESS``; run directly, it
starts a local Ray on 127.0.0.1. SRC and the audio root (or the zip parts) must be paths
every node can read (a shared file system); OUT is such a path or an object-store prefix
(``s3://bucket/prefix``, reached with the ``AWS_*`` variables of the job's environment).
"""

import sys

from llaso_data.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))
