"""``python -m llaso_eval ...``: the ``llaso-eval`` command, also under
``torchrun --nproc_per_node N -m llaso_eval generate ...``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
