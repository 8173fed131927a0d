"""The command-line flags that say where a server listens, for whom, and how many replies it batches: `tinygpt serve`
and app.py share them. No web framework is imported here, so `tinygpt --help` works without the app extra.
"""

import argparse
import os

from tinygpt.decoding.flags import positive_int


def add_server_arguments(parser: argparse.ArgumentParser, default_port: int) -> None:
    """Where and for whom a server listens, and how many replies it batches: `tinygpt serve` and app.py."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=default_port, help=f"port to serve on (default {default_port})")
    parser.add_argument(
        "--allowed_host",
        action="append",
        default=[],
        metavar="NAME",
        help="also accept requests whose Host header is NAME (repeatable; default: the --host address, localhost, "
        "127.0.0.1 and, with --host 0.0.0.0, this machine's name); other Host headers get a 400",
    )
    parser.add_argument(
        "--max_batch",
        type=positive_int,
        default=16,
        help="replies decoded together in one batch (default 16); more wait for a free slot",
    )
    parser.add_argument(
        "--max_tokens",
        type=positive_int,
        default=None,
        help="the longest reply an API request may ask for, in tokens (default: 4 times the model's "
        "max_new_tokens); a reply that reaches it ends with finish_reason 'length'",
    )
    parser.add_argument(
        "--max_client_requests",
        type=positive_int,
        default=None,
        help="replies one API client (its key, or its address without one) decodes at once (default: half of "
        "--max_batch); its further requests wait their turn",
    )
    parser.add_argument(
        "--max_body_bytes",
        type=positive_int,
        default=1 << 20,
        help="the largest request body the API reads (default 1 MiB); a larger one is refused (413) unread",
    )
    parser.add_argument(
        "--api_key",
        type=api_key,
        default=os.environ.get("TINYGPT_API_KEY") or None,  # set but empty: no key
        help="require 'Authorization: Bearer KEY' on the /v1 API (default: $TINYGPT_API_KEY, else no key); the "
        "environment variable keeps it out of `ps`",
    )


def api_key(text: str) -> str:
    """An argparse type for --api_key (and $TINYGPT_API_KEY): what an Authorization header can carry, printable
    ASCII without spaces. The refusal never repeats the key."""
    if not text or not text.isascii() or not text.isprintable() or " " in text:
        raise argparse.ArgumentTypeError("must be printable ASCII without spaces, as an HTTP header carries it")
    return text
