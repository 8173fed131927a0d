"""`python -m tinygpt.training [flags]`: train.py's command line, from an installed package."""

import sys
import time

started_at = time.perf_counter()  # before the heavy imports, so the reported wall time includes them

from tinygpt.training.trainer import main  # noqa: E402

sys.exit(main(started_at=started_at))
