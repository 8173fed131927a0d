"""Chat with a TinyGPT model in the browser: `python app.py [--model DIR_OR_REPO] [--port 7860]`; the same server
answers OpenAI-compatible API requests under /v1.

Thin on purpose: parse the flags, then tinygpt.webui builds and serves the page.
"""

import argparse
import sys

from tinygpt.cli import add_decoding_arguments, add_server_arguments, check_decoding_arguments
from tinygpt.hub import HubError
from tinygpt.loading import ModelLoadError
from tinygpt.webui import launch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="model folder or Hub repo id (default: the first in --models_dir)"
    )
    parser.add_argument(
        "--models_dir", default="runs", help="folder whose subfolders are offered as models (default: runs)"
    )
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs the internet)")
    parser.add_argument(
        "--allow_server_token",
        action="store_true",
        help="let a blank token box in the page use this server's HF_TOKEN / `hf auth login` token (default: never; "
        "with it, every visitor can push and read private repos as you)",
    )
    add_server_arguments(parser, default_port=7860)
    add_decoding_arguments(parser)
    args = parser.parse_args(argv)
    check_decoding_arguments(parser, args)
    try:
        launch(
            model=args.model,
            models_dir=args.models_dir,
            host=args.host,
            port=args.port,
            share=args.share,
            compile=args.compile,
            int8_weights=args.int8,
            allow_server_token=args.allow_server_token,
            allowed_hosts=args.allowed_host,
            max_batch=args.max_batch,
            api_key=args.api_key,
        )
    except (HubError, ModelLoadError, OSError) as error:  # OSError: the port is taken
        print(f"app.py: error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
