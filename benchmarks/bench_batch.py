"""Many requests at once: aggregate decode tok/s of tinygpt against HF GPT2LMHeadModel.generate() on one batch of the
same prompts, in the same run, on the same device.

tinygpt rows: `Engine.generate` (one thread hands the engine all N requests) and the `Scheduler` with N threads,
each streaming its own request as the app's chats and `tinygpt serve`'s HTTP requests do (continuous batching:
they join one shared batch). For the Scheduler it also prints time to first token (p50/p95) and per-stream tok/s.

Shapes, random weights (TinyGPT gets GPT-2's through `from_gpt2`):
- char: the 10.65M Shakespeare-char shape (6 layers, 384 wide, 256-token window, 128-row vocabulary);
- gpt2-small: the 124M shape (12 layers, 768 wide, 1024-token window, 50,257-token vocabulary).

Every request has a random --prompt_tokens prompt and decodes exactly --new_tokens (EOS off), sampled at
temperature 1 with top-k 50 (generate()'s defaults for GPT-2). Each row runs once untimed (compiling, capturing
graphs), then --repeats times, the rows taking turns; the median is reported.

    python benchmarks/bench_batch.py --device cuda --shape char --streams 64
    python benchmarks/bench_batch.py --device cuda --shape gpt2-small --streams 64
"""

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import torch
from transformers import GPT2Config, GPT2LMHeadModel

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from bench_generate import CHAR_SHAPE  # noqa: E402  (this folder is on sys.path when a benchmark runs)

from tinygpt import TinyGPTForCausalLM  # noqa: E402
from tinygpt.decoding.engine import Engine, Request  # noqa: E402
from tinygpt.decoding.scheduler import Scheduler  # noqa: E402

SHAPES = {
    "char": CHAR_SHAPE,
    "gpt2-small": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12),
}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="char")
    parser.add_argument("--streams", type=int, default=64, help="concurrent requests (the engine's max_batch)")
    parser.add_argument("--prompt_tokens", type=int, default=32)
    parser.add_argument("--new_tokens", type=int, default=200, help="tokens each request decodes (EOS is off)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per row; the median is reported")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda", help="cuda runs in bfloat16")
    parser.add_argument("--steps_per_replay", type=int, default=None, help="the engine's (default: its own)")
    parser.add_argument("--profile", action="store_true", help="then profile one Engine.generate run: top kernels")
    args = parser.parse_args()
    if args.prompt_tokens + args.new_tokens >= SHAPES[args.shape]["n_positions"]:
        parser.error("prompt_tokens + new_tokens must fit the shape's window")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible to torch")
    return args


def scheduler_run(scheduler: Scheduler, requests: list[Request]) -> dict:
    """Each request streamed by a thread of its own, all started at once: wall time and each stream's timings."""
    first, last = [0.0] * len(requests), [0.0] * len(requests)
    counts = [0] * len(requests)
    start_line = threading.Barrier(len(requests) + 1)

    def stream(index):
        start_line.wait()
        for _ in scheduler.stream(requests[index]):
            counts[index] += 1
            last[index] = time.perf_counter()
            if counts[index] == 1:
                first[index] = last[index]

    threads = [threading.Thread(target=stream, args=(index,)) for index in range(len(requests))]
    for thread in threads:
        thread.start()
    start_line.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    ttft = sorted(t - start for t in first)
    per_stream = [(n - 1) / (b - a) for n, a, b in zip(counts, first, last, strict=True) if b > a]
    return dict(
        seconds=max(last) - start,
        tokens=sum(counts),
        ttft_p50=ttft[len(ttft) // 2],
        ttft_p95=ttft[min(len(ttft) - 1, round(0.95 * (len(ttft) - 1)))],
        per_stream=statistics.median(per_stream),
    )


@torch.no_grad()
def main():
    args = parse_args()
    device, dtype = args.device, torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    config = GPT2Config(**SHAPES[args.shape], bos_token_id=None, eos_token_id=None, pad_token_id=0)
    gpt2 = GPT2LMHeadModel(config).to(device, dtype).eval()
    ours = TinyGPTForCausalLM.from_gpt2(gpt2).to(device, dtype).eval()
    prompts = torch.randint(0, config.vocab_size, (args.streams, args.prompt_tokens), device=device)
    sampling = dict(temperature=1.0, top_k=50)
    requests = [Request(p.tolist(), max_new_tokens=args.new_tokens, seed=i, **sampling) for i, p in enumerate(prompts)]
    engine = Engine(ours, max_batch=args.streams, steps_per_replay=args.steps_per_replay)
    scheduler = Scheduler(engine)
    total = args.streams * args.new_tokens

    def hf_generate():
        out = gpt2.generate(
            prompts, attention_mask=torch.ones_like(prompts), do_sample=True, max_new_tokens=args.new_tokens, **sampling
        )
        assert out.shape[1] == args.prompt_tokens + args.new_tokens
        return dict(tokens=total)

    def engine_generate():
        outputs = engine.generate(requests)
        return dict(tokens=sum(map(len, outputs)))

    rows = {
        f"HF GPT2LMHeadModel.generate, one batch of {args.streams}": hf_generate,
        f"tinygpt Engine.generate, {args.streams} requests": engine_generate,
        f"tinygpt Scheduler, {args.streams} threads streaming": lambda: scheduler_run(scheduler, requests),
    }
    results = {name: [] for name in rows}
    for round_ in range(args.repeats + 1):  # round 0 warms up (compiles, captures graphs)
        for name, run in rows.items():
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = run()
            if device == "cuda":
                torch.cuda.synchronize()
            result.setdefault("seconds", time.perf_counter() - start)
            assert result["tokens"] == total, (name, result["tokens"], total)
            if round_:
                results[name].append(result)
    scheduler.close()
    if args.profile:
        profile_engine(engine_generate, device)

    parameters = sum(p.numel() for p in ours.parameters())
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(
        f"{args.shape} shape, {parameters / 1e6:.2f}M parameters, {where}, {str(dtype).removeprefix('torch.')}, "
        f"torch {torch.__version__}: {args.streams} requests of {args.prompt_tokens} prompt + {args.new_tokens} "
        f"sampled tokens, {engine.steps_per_replay} steps per replay; median of {args.repeats} runs after a warm-up"
    )
    baseline = None
    for name, runs in results.items():
        middle = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        rate = total / middle["seconds"]
        baseline = baseline or rate
        line = f"{name:48s} {rate:10,.0f} tok/s aggregate {rate / baseline:6.2f}x"
        if "ttft_p50" in middle:
            line += (
                f"  TTFT p50 / p95 {middle['ttft_p50'] * 1e3:.1f} / {middle['ttft_p95'] * 1e3:.1f} ms,"
                f" {middle['per_stream']:,.0f} tok/s per stream"
            )
        print(line)


def profile_engine(run, device: str) -> None:
    """One more run under torch.profiler: the device's busy share of the wall time, and where the time went."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as profiler:
        start = time.perf_counter()
        run()
        if device == "cuda":
            torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = profiler.key_averages()
    busy = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA) / 1e6
    print(f"\nprofiled Engine.generate: {wall * 1e3:.1f} ms wall, device kernels {busy * 1e3:.1f} ms")
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    print(events.table(sort_by=sort, row_limit=14, max_name_column_width=60))
    print(events.table(sort_by="self_cpu_time_total", row_limit=10, max_name_column_width=60))


if __name__ == "__main__":
    main()
