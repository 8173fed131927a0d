"""Train a TinyGPT from a checkout: `python train.py --help`. Installed, the same command is `tinygpt train` (or
`python -m tinygpt.training`); the logic lives in tinygpt.training."""

import sys
import time

started_at = time.perf_counter()  # before the heavy imports, so the reported wall time includes them

from tinygpt.training.trainer import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(started_at=started_at))
