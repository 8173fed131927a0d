"""Chat with a TinyGPT model in the browser: `python app.py [--model DIR_OR_REPO] [--port 7860]` (`--help` lists
the flags). Thin on purpose: tinygpt.app.page parses the flags, builds the page and serves it."""

import sys

from tinygpt.app.page import main

if __name__ == "__main__":
    sys.exit(main())
