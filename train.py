"""Train a TinyGPT: `python train.py --help`. The logic lives in tinygpt.training."""

import sys
import time

started_at = time.perf_counter()  # before the heavy imports, so the reported wall time includes them

from tinygpt.training import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(started_at=started_at))
