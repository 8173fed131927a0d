"""Train a TinyGPT: `python train.py --help`. The logic lives in tinygpt.training."""

import sys

from tinygpt.training import main

if __name__ == "__main__":
    sys.exit(main())
