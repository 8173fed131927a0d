"""What int8 weights cost and give a trained model on a CPU: validation loss, greedy tokens, decode speed.

    python benchmarks/bench_int8.py --model runs/shakespeare-char --text_file ../shared/data/tinyshakespeare.txt

Rows: the model as trained (fp32) and tinygpt.decoding.quantization's int8-weight copy, the one `app.py --int8` decodes
with. The loss is over train.py's validation split (the text's last 10%, nanoGPT's split), in consecutive
windows of the model's context. Decoding is tinygpt.decoding.engine.Engine, compiled, greedy, from prompts taken along
the validation split; "fp32's pick" is how often the int8 engine chose the token the fp32 model ranks first at
that point of the int8 engine's own text, and "same prefix" the median number of tokens both engines agree on
before they first differ (a near tie decides that).
"""

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from tinygpt.data.token_stream import encode_text, split_train_val  # noqa: E402
from tinygpt.decoding.engine import Engine  # noqa: E402
from tinygpt.decoding.quantization import int8_weight_copy  # noqa: E402


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a trained tinygpt model folder (or Hub repo id)")
    parser.add_argument("--text_file", required=True, type=Path, help="the text it was trained on")
    parser.add_argument("--prompts", type=int, default=8, help="greedy decodes per row")
    parser.add_argument("--prompt_tokens", type=int, default=64, help="prompt length")
    parser.add_argument("--new_tokens", type=int, default=160, help="tokens decoded per prompt")
    parser.add_argument("--batch_size", type=int, default=16, help="windows per forward in the loss")
    args = parser.parse_args()
    if not args.text_file.is_file():
        parser.error(f"--text_file {args.text_file}: no such file")
    return args


@torch.no_grad()
def validation_loss(model, val_ids: torch.Tensor, window: int, batch_size: int) -> float:
    """Mean next-token loss over consecutive windows of the validation tokens."""
    usable = (len(val_ids) - 1) // window * window
    inputs = val_ids[:usable].view(-1, window)  # (N, T)
    targets = val_ids[1 : usable + 1].view(-1, window)  # (N, T)
    total = 0.0
    for start in range(0, len(inputs), batch_size):
        logits = model(input_ids=inputs[start : start + batch_size]).logits.float()  # (B, T, V)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets[start : start + batch_size].flatten())
        total += loss.item() * len(logits)
    return total / len(inputs)


@torch.no_grad()
def fp32_picks(model, prompt: list[int], tokens: list[int]) -> int:
    """How many of `tokens` (decoded after `prompt`) are the fp32 model's first choice at their position."""
    logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]  # (T_new, V)
    return int((logits.argmax(dim=-1) == torch.tensor(tokens)).sum())


def main():
    args = parse_args()
    transformers_logging.set_verbosity_error()  # the whole text is tokenized at once, longer than the window
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, trust_remote_code=True).eval()
    window = model.config.n_positions
    if args.prompt_tokens + args.new_tokens > window:
        raise SystemExit(f"bench_int8.py: error: --prompt_tokens + --new_tokens must fit the model's window ({window})")
    _, val_ids = split_train_val(encode_text(tokenizer, args.text_file.read_text(encoding="utf-8")))
    step = (len(val_ids) - args.prompt_tokens) // args.prompts
    prompts = [val_ids[i * step : i * step + args.prompt_tokens].tolist() for i in range(args.prompts)]

    decoders = {"fp32": Engine(model, compile=True), "int8": Engine(model, int8_weights=True)}
    loss_models = {"fp32": model, "int8": int8_weight_copy(model)}
    for decoder in decoders.values():
        list(decoder.stream(prompts[0], max_new_tokens=8))  # compiles
    speeds = {name: [] for name in decoders}
    decoded = {name: [] for name in decoders}
    for prompt in prompts:
        for name, decoder in decoders.items():  # taking turns: a drifting machine slows both alike
            start = time.perf_counter()
            decoded[name].append(list(decoder.stream(prompt, max_new_tokens=args.new_tokens)))
            speeds[name].append(args.new_tokens / (time.perf_counter() - start))
    results = {
        name: (validation_loss(loss_models[name], val_ids, window, args.batch_size), statistics.median(speeds[name]))
        for name in decoders
    }

    picks = sum(fp32_picks(model, p, t) for p, t in zip(prompts, decoded["int8"], strict=True))
    same_prefix = [
        next((i for i, (a, b) in enumerate(zip(f, q, strict=True)) if a != b), len(f))
        for f, q in zip(decoded["fp32"], decoded["int8"], strict=True)
    ]
    agreement = {
        "fp32": "-",
        "int8": f"{picks / (len(prompts) * args.new_tokens):.1%} / {statistics.median(same_prefix):.0f}",
    }
    where = f"cpu ({platform.machine()}, {torch.get_num_threads()} threads), torch {torch.__version__}"
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters, {where}")
    print(f"validation split: {len(val_ids):,} tokens; {args.prompts} greedy decodes of {args.new_tokens} tokens")
    header = f"{'weights':8s} {'val loss':>9s} {'tok/s':>8s} {'vs fp32':>8s}  fp32's pick / same prefix"
    print(header)
    print("-" * len(header))
    for name, (loss, speed) in results.items():
        ratio = speed / results["fp32"][1]
        print(f"{name:8s} {loss:9.4f} {speed:8.1f} {ratio:7.2f}x  {agreement[name]}")


if __name__ == "__main__":
    main()
