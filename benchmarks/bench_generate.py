"""Batch-1 greedy decode speed: TinyGPT against Hugging Face's GPT2LMHeadModel of the same shape.

The shape is nanoGPT's Shakespeare-char model (the "10.65M" one): 6 layers, 6 heads, 384 wide, a 256-token
window, and a 65-character vocabulary plus our six special tokens, padded to a multiple of 64 as every tinygpt
model is. GPT-2 gets random weights and TinyGPT gets the very same ones through `from_gpt2`, so both must
produce the same tokens (checked, fp32). Every row decodes the same prompt for the same number of new tokens
with EOS disabled, after one untimed warm-up run; the figure is the median of --repeats runs, the rows
taking turns.

Rows: HF GPT-2 with its default DynamicCache; TinyGPT's generate() with a DynamicCache and with
`cache_implementation="static"`; and tinygpt.decoding.engine.Engine, which every tinygpt surface decodes with (on a CPU:
eager, the default; compiled, as `--compile` runs it; and compiled with int8 weights, as `--int8` runs it; on
CUDA: its default of 8 steps per graph replay, and 1; a compiled row's warm-up run compiles). The int8 row's
tokens are not expected to equal the others': it reports how many of them match before the first difference.

On a CPU the last row is the command line itself, in the same run: the TinyGPT model saved with a character
tokenizer, then `tinygpt generate DIR --temperature 0 --int8 --max_new_tokens N --min_new_tokens N` (N =
--cli_tokens, past the window: the context slides), its rate read from what it prints on stderr.

    python benchmarks/bench_generate.py                      # CPU, all cores
    python benchmarks/bench_generate.py --device cuda        # bf16 on a GPU
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from tinygpt import SPECIAL_TOKENS, TinyGPTCharTokenizer, TinyGPTForCausalLM  # noqa: E402
from tinygpt.decoding.engine import Engine  # noqa: E402

SHAKESPEARE_CHARS = 65
VOCAB_SIZE = -(-(SHAKESPEARE_CHARS + len(SPECIAL_TOKENS)) // 64) * 64  # 71 tokens -> 128 rows
CHAR_SHAPE = dict(vocab_size=VOCAB_SIZE, n_positions=256, n_embd=384, n_layer=6, n_head=6)  # nanoGPT's 10.65M


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new_tokens", type=int, default=200, help="tokens decoded per run (fixed: EOS is off)")
    parser.add_argument("--prompt_tokens", type=int, default=32, help="prompt length; prompt + new must fit 256")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per row; the median is reported")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda runs in bfloat16")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (CPU)")
    parser.add_argument("--cli_tokens", type=int, default=300, help="tokens `tinygpt generate --int8` decodes (CPU)")
    args = parser.parse_args()
    if args.prompt_tokens < 1 or args.new_tokens < 1 or args.prompt_tokens + args.new_tokens > 256:
        parser.error("need prompt_tokens >= 1, new_tokens >= 1 and prompt_tokens + new_tokens <= 256 (the window)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    return args


def build_models(device, dtype):
    """(HF GPT-2, TinyGPT with the same weights), eval mode; no EOS so every run decodes the full length."""
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(**CHAR_SHAPE, bos_token_id=None, eos_token_id=None, pad_token_id=0))
    ours = TinyGPTForCausalLM.from_gpt2(gpt2)
    return gpt2.to(device, dtype).eval(), ours.to(device, dtype).eval()


def median_seconds(decoders: dict, repeats: int, device: str) -> dict:
    """{name: median wall time of decode()}, each after one warm-up call (which also absorbs any compilation).

    The rows take turns, one run each per round, so a machine whose speed drifts (a shared host) slows them
    alike instead of whichever row it happened to be running.
    """
    for decode in decoders.values():
        decode()
    times = {name: [] for name in decoders}
    for _ in range(repeats):
        for name, decode in decoders.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            decode()
            if device == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(runs) for name, runs in times.items()}


@torch.no_grad()
def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    gpt2, ours = build_models(args.device, dtype)
    prompt = torch.randint(0, VOCAB_SIZE, (1, args.prompt_tokens), device=args.device)  # (1, T_prompt)
    greedy = dict(max_new_tokens=args.new_tokens, do_sample=False)

    outputs = {}

    def generate_with(model, name, **kwargs):
        def decode():
            outputs[name] = model.generate(prompt, attention_mask=torch.ones_like(prompt), **greedy, **kwargs)

        return decode

    def engine_with(engine, name):
        def decode():
            outputs[name] = list(engine.stream(prompt[0].tolist(), max_new_tokens=args.new_tokens))

        return decode

    rows = [
        ("HF GPT2LMHeadModel.generate", generate_with(gpt2, "gpt2")),
        ("TinyGPT generate (DynamicCache)", generate_with(ours, "ours")),
        ('TinyGPT generate (cache="static")', generate_with(ours, "static", cache_implementation="static")),
    ]
    if args.device == "cuda":  # compiled and CUDA-graphed by default
        rows.append(("TinyGPT Engine (CUDA graphs)", engine_with(Engine(ours), "fast")))
        one_step = Engine(ours, steps_per_replay=1)
        rows.append(("TinyGPT Engine (1 step per replay)", engine_with(one_step, "one_step")))
    else:  # the default, `--compile` and `--int8`
        rows.append(("TinyGPT Engine (eager)", engine_with(Engine(ours), "fast")))
        rows.append(("TinyGPT Engine (compiled)", engine_with(Engine(ours, compile=True), "compiled")))
        rows.append(("TinyGPT Engine (int8, compiled)", engine_with(Engine(ours, int8_weights=True), "int8")))
    seconds = median_seconds(dict(rows), args.repeats, args.device)
    speeds = {name: args.new_tokens / seconds[name] for name, _ in rows}
    if args.device == "cpu":
        speeds[f"tinygpt generate --int8 ({args.cli_tokens} tok)"] = cli_generate_rate(ours, args)

    reference = outputs["gpt2"][0, args.prompt_tokens :].tolist()
    assert len(reference) == args.new_tokens, "EOS must be off: every run decodes exactly --new_tokens"
    same = [outputs[key][0, args.prompt_tokens :].tolist() == reference for key in ("ours", "static")]
    same += [outputs[key] == reference for key in ("fast", "one_step", "compiled") if key in outputs]

    parameters = sum(p.numel() for p in ours.parameters())
    where = torch.cuda.get_device_name() if args.device == "cuda" else f"{platform.machine()}, {args.threads} threads"
    device_text = f"{args.device} ({where}, {str(dtype).removeprefix('torch.')})"
    print(
        f"batch-1 greedy decode: {parameters / 1e6:.2f}M parameters (vocab {VOCAB_SIZE}), prompt "
        f"{args.prompt_tokens} + {args.new_tokens} new tokens, median of {args.repeats} runs after a warm-up"
    )
    print(f"TinyGPT rows give the same tokens as HF GPT-2: {all(same)} ({same})")
    if "int8" in outputs:
        pairs = enumerate(zip(outputs["int8"], reference, strict=True))
        matching = next((i for i, (a, b) in pairs if a != b), len(reference))
        print(f"int8 row: its first {matching} of {len(reference)} tokens are HF GPT-2's (fp32)")
    baseline = speeds[rows[0][0]]
    header = f"{'name':36s} {'tok/s':>9s} {'vs HF GPT2':>10s}  {'device':40s} torch"
    print(header)
    print("-" * len(header))
    for name, speed in speeds.items():
        print(f"{name:36s} {speed:9.1f} {speed / baseline:9.2f}x  {device_text:40s} {torch.__version__}")


def cli_generate_rate(model, args) -> float:
    """tok/s that `tinygpt generate --int8` prints, for the model saved with a 65-character tokenizer."""
    characters = "".join(chr(c) for c in range(ord("!"), ord("!") + SHAKESPEARE_CHARS))
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        TinyGPTCharTokenizer.from_corpus(characters).save_pretrained(folder)
        command = [sys.executable, "-m", "tinygpt.cli", "generate", folder, "--prompt", characters[:32]]
        command += ["--temperature", "0", "--int8", "--max_new_tokens", str(args.cli_tokens)]
        command += ["--min_new_tokens", str(args.cli_tokens)]
        result = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    rate = re.search(r"^(\d+) tokens in [\d.]+ s \(([\d,]+) tok/s\)$", result.stderr, re.MULTILINE)
    if result.returncode != 0 or rate is None or int(rate[1]) != args.cli_tokens:
        sys.exit(f"tinygpt generate failed or printed no rate:\n{result.stderr}")
    return float(rate[2].replace(",", ""))


if __name__ == "__main__":
    main()
