"""``torchrun --nproc_per_node N -m llaso_train --config FILE [key=value ...]``."""

import argparse
import sys

from .config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llaso_train", description=__doc__)
    parser.add_argument("--config", required=True, help="a YAML recipe (see llaso_train/configs)")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. optim.lr=1e-4")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
    except (ValueError, TypeError, OSError) as error:
        print(f"llaso_train: invalid config: {error}", file=sys.stderr)
        return 2
    from .quiet import hide_known_noise
    from .recipe import train

    hide_known_noise()
    train(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
