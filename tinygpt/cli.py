"""The `tinygpt` console command: train a model, chat with it, serve it, share it.

    tinygpt train [train.py's flags]          train with the HF Trainer (`tinygpt train --help` lists the flags)
    tinygpt app [app.py's flags]              the Gradio app: chat, train, pull and push in the browser
    tinygpt chat MODEL                        talk to a model, streaming; `exit` or `quit` (or Ctrl-D) ends
    tinygpt generate MODEL --prompt TEXT      continue a plain text, streaming
    tinygpt push DIR owner/name               upload a saved model folder to the Hub
    tinygpt pull owner/name [DIR]             download one (into the HF cache, or into DIR)
    tinygpt export MODEL OUT                  write it as plain GPT-2 (--format hf) or as GGUF (--format gguf)
    tinygpt eval MODEL --text_file F          bits per byte of a text; --tasks T runs lm-evaluation-harness
    tinygpt merge ADAPTER OUT                 merge a LoRA adapter into its base: a full model folder
    tinygpt serve MODEL [--port 8000]         an OpenAI-compatible API (/v1/chat/completions, ...) on 127.0.0.1

Thin on purpose: each command parses its arguments and calls the package (tinygpt.hub.loader, tinygpt.decoding.chat,
tinygpt.hub); `train` and `app` hand their flags to tinygpt.training and tinygpt.app whole. MODEL is a local folder
or a Hub repo id, pulled into the cache first (a LoRA adapter too: merged into its base on loading), and sampling flags left out come from its generation_config. What a user can get wrong
(a folder, a repo id, a token, an unreachable Hub) ends as one line on stderr and exit status 1, never a
traceback. argparse rather than HfArgumentParser: these are subcommands with positional arguments, not
dataclass configs.

The Hub is HF_ENDPOINT (default huggingface.co). The token comes from HF_TOKEN or `hf auth login`; failing
those, `push` asks for it with hidden input at a terminal. There is deliberately no --token flag: a command
line is visible to every user of the machine (`ps`). `serve --api_key` is the exception the OpenAI convention asks
for; TINYGPT_API_KEY keeps the key off the command line.
"""

import time

STARTED_AT = time.perf_counter()  # before the heavy imports: `tinygpt train` reports its wall time from here

import argparse  # noqa: E402
import getpass  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402

from huggingface_hub import constants, get_token  # noqa: E402
from transformers import set_seed  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from tinygpt import __version__  # noqa: E402
from tinygpt.data.errors import DataError  # noqa: E402
from tinygpt.decoding.chat import ChatModel, DecodingOptions, text_pieces  # noqa: E402
from tinygpt.decoding.engine import Engine  # noqa: E402
from tinygpt.decoding.flags import (  # noqa: E402
    add_decoding_arguments,
    add_sampling_arguments,
    check_decoding_arguments,
    non_empty,
    non_negative_int,
    sampling_settings,
    seed,
)
from tinygpt.decoding.sampling import settings_from  # noqa: E402
from tinygpt.evaluation.errors import EvalError  # noqa: E402
from tinygpt.evaluation.flags import add_eval_arguments  # noqa: E402
from tinygpt.hub.checks import ModelLoadError  # noqa: E402
from tinygpt.hub.export import DTYPES, FORMATS, ExportError, export_model  # noqa: E402
from tinygpt.hub.loader import load, model_folder  # noqa: E402
from tinygpt.hub.merge import MergeError, merge_adapter_folder  # noqa: E402
from tinygpt.hub.push import push_model  # noqa: E402
from tinygpt.hub.remote import HubError, is_offline, pull_model, validate_repo_id  # noqa: E402
from tinygpt.hub.space import space_url  # noqa: E402
from tinygpt.serving.flags import add_server_arguments  # noqa: E402

EXIT_WORDS = ("exit", "quit")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in HANDED_OVER:  # their own parsers read the rest, --help included
        return HANDED_OVER[argv[0]](argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("chat", "generate", "serve"):
        check_decoding_arguments(parser, args)
    try:
        return args.run(args)
    except (
        HubError,
        ModelLoadError,
        ExportError,
        EvalError,
        DataError,
        MergeError,
        OSError,
    ) as error:  # OSError: a taken port
        print(f"tinygpt {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tinygpt",
        description="Chat with, sample from, and share TinyGPT models. MODEL is a local folder or a Hub repo id.",
        epilog="Hub commands use HF_ENDPOINT (default https://huggingface.co) and the token in HF_TOKEN or from "
        "`hf auth login`; push prompts for one (hidden input) when neither is set.",
    )
    parser.add_argument("--version", action="version", version=f"tinygpt {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, run in HANDED_OVER.items():  # listed in --help; main() hands them their flags before parsing
        commands.add_parser(name, help=run.__doc__.splitlines()[0], add_help=False)

    chat = commands.add_parser("chat", help="talk to a model in the terminal", description=run_chat.__doc__)
    chat.add_argument("model", metavar="MODEL", help="model folder or Hub repo id (owner/name)")
    chat.add_argument("--system_prompt", default=None, help="text put before the conversation")
    add_decoding_arguments(chat)
    add_sampling_arguments(chat)
    chat.set_defaults(run=run_chat)

    generate = commands.add_parser("generate", help="continue a text", description=run_generate.__doc__)
    generate.add_argument("model", metavar="MODEL", help="model folder or Hub repo id (owner/name)")
    generate.add_argument("--prompt", required=True, type=non_empty, help="the text to continue")
    add_decoding_arguments(generate)
    add_sampling_arguments(generate)
    generate.add_argument(
        "--min_new_tokens", type=non_negative_int, default=0, help="no end-of-text before this many tokens (default 0)"
    )
    generate.add_argument("--seed", type=seed, default=None, help="random seed, for repeatable sampling")
    generate.set_defaults(run=run_generate)

    push = commands.add_parser("push", help="upload a saved model folder to the Hub", description=run_push.__doc__)
    push.add_argument(
        "model_dir",
        metavar="DIR",
        help="folder holding model.safetensors, config.json and the tokenizer (or a LoRA adapter)",
    )
    push.add_argument("repo_id", metavar="owner/name", help="Hub repo to upload to (created if missing)")
    push.add_argument(
        "--private", action="store_true", help="create the repo private (an existing repo keeps its visibility)"
    )
    push.add_argument("--commit_message", default=None, help='commit message (default "Upload TinyGPT model")')
    push.add_argument(
        "--space",
        metavar="owner/space",
        default=None,
        help="also put the model as plain GPT-2 in gpt2/ and create a Gradio Space chatting with it at this commit",
    )
    push.set_defaults(run=run_push)

    pull = commands.add_parser("pull", help="download a model from the Hub", description=run_pull.__doc__)
    pull.add_argument("repo_id", metavar="owner/name", help="Hub repo to download")
    pull.add_argument(
        "local_dir", metavar="DIR", nargs="?", default=None, help="folder to put it in (default: the HF cache)"
    )
    pull.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")
    pull.set_defaults(run=run_pull)

    export = commands.add_parser(
        "export", help="write a model as plain GPT-2 or as GGUF", description=run_export.__doc__
    )
    export.add_argument("model", metavar="MODEL", help="model folder or Hub repo id (owner/name)")
    export.add_argument("out", metavar="OUT", help="new folder (hf) or .gguf file (gguf) to write")
    export.add_argument("--format", choices=FORMATS, default="hf", help="hf (default): transformers; gguf: llama.cpp")
    export.add_argument("--dtype", choices=list(DTYPES), default=None, help="weights' type (default f32; gguf: f16)")
    export.set_defaults(run=run_export)

    merge = commands.add_parser(
        "merge", help="merge a LoRA adapter into its base: a full model folder", description=run_merge.__doc__
    )
    merge.add_argument("adapter", metavar="ADAPTER", help="adapter folder or Hub repo id (owner/name)")
    merge.add_argument("out", metavar="OUT", help="new folder to write the merged model to")
    merge.set_defaults(run=run_merge)

    serve = commands.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API", description=run_serve.__doc__
    )
    serve.add_argument(
        "model", metavar="MODEL", help="model folder or Hub repo id (owner/name); also the API's model id"
    )
    add_server_arguments(serve, default_port=8000)
    add_decoding_arguments(serve)
    serve.set_defaults(run=run_serve)

    evaluate = commands.add_parser(
        "eval", help="bits per byte of a text, and lm-evaluation-harness tasks", description=run_eval.__doc__
    )
    add_eval_arguments(evaluate)
    evaluate.set_defaults(run=run_eval)
    return parser


# -- commands -------------------------------------------------------------------------------------------------


def run_train(argv: list[str]) -> int:
    """train a model with the HF Trainer: train.py's flags (tinygpt train --help)"""
    from tinygpt.training.trainer import main as train_main

    return train_main(argv, started_at=STARTED_AT)


def run_app(argv: list[str]) -> int:
    """the Gradio app in the browser: chat, train, pull and push (tinygpt app --help)"""
    try:
        from tinygpt.app.page import main as app_main
    except ImportError as error:
        return missing_extra("app", "app", error)
    return app_main(argv)


HANDED_OVER = {"train": run_train, "app": run_app}


def missing_extra(command: str, extra: str, error: ImportError) -> int:
    """The one line for a command whose optional dependencies are not installed."""
    print(
        f"tinygpt {command}: error: it needs the {extra!r} extra ({error.name or error} is missing): "
        f"pip install 'tinygpt[{extra}]'",
        file=sys.stderr,
    )
    return 1


def run_chat(args: argparse.Namespace) -> int:
    """Chat with a model in the terminal. Replies stream as they are generated; the whole conversation is the
    context of each reply (the oldest turns drop out when it outgrows the model's window). Type exit or quit
    (or press Ctrl-D) to end; Ctrl-C stops a reply."""
    chat_model = ChatModel(*load_quietly(args.model), DecodingOptions(compile=args.compile, int8_weights=args.int8))
    try:
        return chat_in_the_terminal(chat_model, args)
    finally:
        chat_model.close()  # its thread left running at exit, the process could abort (SIGABRT) after the last reply


def chat_in_the_terminal(chat_model: ChatModel, args: argparse.Namespace) -> int:
    chat_model.warm_up()
    print(f"Chatting with {args.model}. Type exit or quit to end; Ctrl-C stops a reply.", flush=True)
    messages = []
    while True:
        try:
            text = input("you> ")
        except EOFError:
            print()
            return 0
        if text.strip().lower() in EXIT_WORDS:
            return 0
        if not text.strip():
            continue
        messages.append({"role": "user", "content": text})
        print("tinygpt> ", end="", flush=True)
        reply, stop = "", threading.Event()
        try:
            for reply_so_far in chat_model.stream_reply(
                messages, system_prompt=args.system_prompt, stop_event=stop, **sampling_settings(args)
            ):
                print(reply_so_far[len(reply) :], end="", flush=True)  # only the new text
                reply = reply_so_far
        except KeyboardInterrupt:
            stop.set()
            print(" [stopped]", end="")
        print(flush=True)
        messages.append({"role": "assistant", "content": reply})


def run_generate(args: argparse.Namespace) -> int:
    """Continue a plain text (no chat template), printing the new text as it is generated, then
    `N tokens in S s (R tok/s)` on stderr. Past the model's window the context slides (its last 3/4 is kept)."""
    model, tokenizer = load_quietly(args.model)
    engine = Engine(model, device="auto", compile=args.compile, int8_weights=args.int8)
    if engine.compiled:
        print("compiling decoding (the first time takes a while; it is cached after)...", file=sys.stderr, flush=True)
        engine.warm_up()  # so that the figure below times decoding, not compiling
    if args.seed is not None:
        set_seed(args.seed)
    prompt_ids = tokenizer(args.prompt)["input_ids"]
    stop_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    new_tokens: list[int] = []

    def decoded():
        for token_id in engine.stream(
            prompt_ids,
            stop_ids=stop_ids,
            min_new_tokens=args.min_new_tokens,
            **(settings_from(model.generation_config) | sampling_settings(args)),
        ):
            new_tokens.append(token_id)
            yield token_id

    started = time.perf_counter()
    for piece in text_pieces(tokenizer, decoded()):
        print(piece, end="", flush=True)
    print(flush=True)
    seconds = time.perf_counter() - started
    rate = len(new_tokens) / max(seconds, 1e-9)
    print(f"{len(new_tokens)} tokens in {seconds:.2f} s ({rate:,.0f} tok/s)", file=sys.stderr)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Serve a model over an OpenAI-compatible HTTP API until Ctrl-C: GET /v1/models, POST /v1/chat/completions
    (through the model's chat template) and POST /v1/completions, streamed or not. Every request joins one batch of
    up to --max_batch replies; settings a request leaves out come from the model's generation_config."""
    try:
        from tinygpt.serving.limits import ServingLimits
        from tinygpt.serving.server import create_app, serve, url_host
    except ImportError as error:  # fastapi and uvicorn: the serve extra
        return missing_extra("serve", "serve", error)

    options = DecodingOptions(compile=args.compile, int8_weights=args.int8, max_batch=args.max_batch)
    chat_model = ChatModel(*load_quietly(args.model), options)
    chat_model.warm_up()
    limits = ServingLimits.from_flags(args, browser=False)
    app = create_app(
        {args.model: chat_model}, api_key=args.api_key, host=args.host, allowed_hosts=args.allowed_host, limits=limits
    )
    key = "with an API key" if args.api_key else "no API key"
    print(f"serving {args.model} at http://{url_host(args.host)}:{args.port}/v1 ({key}); Ctrl-C stops", flush=True)
    serve(app, args.host, args.port)
    return 0


def run_push(args: argparse.Namespace) -> int:
    """Upload a saved model folder to a Hub repo, creating the repo if needed: the safetensors weights,
    config.json, generation_config.json, the tokenizer files, tinygpt's own code files (from the installed
    package, for the modules auto_map names), and a README.md model card (generated when the folder has none).
    A LoRA adapter's folder goes up alone: its adapter files, the tokenizer and a card naming its base, which must be
    a Hub repo. Prints the repo URL."""
    validate_repo_id(args.repo_id)
    token = None
    if get_token() is None and sys.stdin.isatty():
        token = getpass.getpass("Hub token with write access (hidden; set HF_TOKEN to skip this): ").strip() or None
    if args.space is not None:
        validate_repo_id(args.space)
    url = push_model(
        args.model_dir,
        args.repo_id,
        token=token,
        private=args.private,
        commit_message=args.commit_message,
        space_id=args.space,
    )
    print(f"pushed {args.model_dir} to {url}")
    if args.space is not None:
        print(f"created the Space {space_url(args.space, constants.ENDPOINT)}")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    """Download a model from the Hub (into the HF cache, or into DIR) and check it is a TinyGPT model.
    Prints the folder it is in. When the Hub fails, this is an error (naming any cached copy), never the cached
    copy in silence; with HF_HUB_OFFLINE=1 it is the cached copy, and says so."""
    folder = pull_model(args.repo_id, revision=args.revision, local_dir=args.local_dir)
    if is_offline():
        print(f"using the cached copy of {args.repo_id} in {folder} (HF_HUB_OFFLINE=1: the Hub was not asked)")
    else:
        print(f"pulled {args.repo_id} to {folder}")
    return 0


def run_export(args: argparse.Namespace) -> int:
    """Write a model so that it runs without tinygpt. hf (the default): a folder with a GPT2LMHeadModel
    (safetensors), a fast tokenizer (tokenizer.json, the same ids), the chat template, a generation config and a
    model card; it loads in stock transformers without remote code, and in vLLM and TGI. gguf: one .gguf file
    (architecture gpt2, byte-level BPE, the chat template) for llama.cpp and ollama, in f16 or f32."""
    dtype = args.dtype or ("f16" if args.format == "gguf" else "f32")
    out = export_model(model_folder(args.model), args.out, format=args.format, dtype=dtype)
    print(f"exported {args.model} as {args.format} ({dtype}) to {out}")
    return 0


def run_eval(args: argparse.Namespace) -> int:
    """Bits per byte of a text (lm-eval's rolling loglikelihood: disjoint windows of the model's context after its
    BOS token, summed negative log-likelihood / ln 2 / UTF-8 bytes), with tokens, bytes, nats per token, perplexity
    and the time taken; --stride S slides the windows instead. --tasks runs lm-evaluation-harness tasks on the
    loaded model in this process (the eval extra). --output writes every figure as JSON; --push merges them into
    the model-index of the Hub repo's card."""
    from tinygpt.evaluation.command import run_eval as evaluate  # datasets and lm_eval only when it runs

    return evaluate(args)


def run_merge(args: argparse.Namespace) -> int:
    """Merge a LoRA adapter (a folder or a Hub repo id, as train.py --lora_r writes) into its base model and write
    the result as a full model folder: weights, config, tokenizer, tinygpt's code files and a card. It then exports,
    pushes and loads like any other model."""
    out = merge_adapter_folder(args.adapter, args.out)
    print(f"merged {args.adapter} into its base: {out}")
    return 0


def load_quietly(model: str):
    """tinygpt.hub.loader.load without transformers' "Loading weights" bar, which would only clutter the terminal."""
    transformers_logging.disable_progress_bar()
    return load(model)


if __name__ == "__main__":
    sys.exit(main())
