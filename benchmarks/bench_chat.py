"""Chat serving through HTTP with the openai client: N concurrent streams against `tinygpt serve` and app.py's /v1.

Each server runs as a subprocess of this checkout on a free port (`python -m tinygpt.cli serve MODEL`, `python app.py
--model MODEL`). For each concurrency N, N client threads each stream --turns chat completions in a row (one
user message, up to --max_new_tokens tokens, temperature 0.8), after one untimed warm-up request. Reported:
time to first token (TTFT: from sending the request to the first streamed text) p50 and p95, per-stream decode
tok/s (median over replies, after the first token), aggregate tok/s (all replies' tokens over the wall time).
Token counts are the server's own usage figures. Target on a 2-core CPU, default model, 8 streams: p95 TTFT <= 300 ms.

MODEL defaults to runs/tiny (what `python train.py` writes by default); where it is absent a model of the "tiny"
preset's shape with random weights stands in (replies are noise, timings are representative; the request sets
vLLM's `min_tokens`, so every reply is --max_new_tokens long whatever the weights).

    python benchmarks/bench_chat.py                                # runs/tiny, 1 and 8 streams, serve and app
    python benchmarks/bench_chat.py runs/my-model --concurrency 1 8 64 --servers serve -- --max_batch 64
"""

import argparse
import os
import socket
import statistics
import string
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import openai
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout, installed or not
from tinygpt import TinyGPTCharTokenizer  # noqa: E402
from tinygpt.training.args import ModelArguments  # noqa: E402
from tinygpt.training.presets import PRESETS  # noqa: E402
from tinygpt.training.trainer import new_model  # noqa: E402

QUESTION = "hello! what can you tell me about the weather today?"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="runs/tiny", help="model folder (default runs/tiny)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="concurrent streams (default 1 8)")
    parser.add_argument("--turns", type=int, default=4, help="replies each stream asks for, one after another")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="length of each reply, in tokens")
    parser.add_argument("--servers", nargs="+", choices=["serve", "app"], default=["serve", "app"])
    parser.add_argument("server_flags", nargs="*", help="after --: flags for both servers (--compile, --max_batch N)")
    return parser.parse_args()


def model_folder(requested: str) -> str:
    """`requested` if it holds a model, else a random model of the tiny preset's shape saved to a temp folder."""
    if (Path(requested) / "config.json").is_file():
        return requested
    preset = PRESETS["tiny"]
    tokenizer = TinyGPTCharTokenizer.from_corpus(string.printable)
    shape = ModelArguments(
        n_layer=preset.n_layer,
        n_head=preset.n_head,
        n_embd=preset.n_embd,
        block_size=preset.block_size,
        dropout=preset.dropout,
        bias=preset.bias,
        activation_function=preset.activation_function,
    )
    folder = tempfile.mkdtemp(prefix="bench-chat-model-")
    torch.manual_seed(0)
    new_model(tokenizer, shape).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"{requested} holds no model: using a random model of the 'tiny' preset's shape ({folder})")
    return folder


def start_server(kind: str, folder: str, flags: list[str]) -> tuple[subprocess.Popen, str]:
    """(process, base URL of its /v1) once it answers."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "tinygpt.cli", "serve", folder] if kind == "serve" else [sys.executable, "app.py"]
    command += (["--model", folder] if kind == "app" else []) + ["--port", str(port), *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_PROXY": "localhost,127.0.0.1", "no_proxy": "localhost,127.0.0.1"}
    env.pop("TINYGPT_API_KEY", None)
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(1200):
        if process.poll() is not None:
            log.seek(0)
            raise SystemExit(f"{' '.join(command)} exited with {process.returncode}: {log.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(f"{url}/models", timeout=5).close()
            return process, url
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"{' '.join(command)} did not answer in 10 minutes")


def timed_reply(client: openai.OpenAI, model: str, max_new_tokens: int) -> tuple[float, int, float]:
    """(seconds to the first text, tokens, seconds from the first text to the last) of one streamed reply."""
    start = time.perf_counter()
    first = last = None
    tokens = 0
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0.8,
        max_tokens=max_new_tokens,
        extra_body={"min_tokens": max_new_tokens},
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
        if chunk.choices and chunk.choices[0].delta.content:
            last = time.perf_counter()
            first = first or last
    first = first or time.perf_counter()
    return first - start, tokens, (last or first) - first


def run_streams(url: str, model: str, n_streams: int, turns: int, max_new_tokens: int):
    """n_streams threads at once, each with its own client, asking `turns` replies in a row."""
    clients = [openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600) for _ in range(n_streams)]
    results, lock, start_line = [], threading.Lock(), threading.Barrier(n_streams)

    def stream(client):
        start_line.wait()
        for _ in range(turns):
            result = timed_reply(client, model, max_new_tokens)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=stream, args=(client,)) for client in clients]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - start


def report(label: str, n_streams: int, results, wall: float) -> None:
    ttfts_ms = sorted(ttft * 1000 for ttft, _, _ in results)
    p95 = ttfts_ms[min(len(ttfts_ms) - 1, round(0.95 * (len(ttfts_ms) - 1)))]
    per_stream = [(n - 1) / seconds for _, n, seconds in results if n > 1 and seconds > 0]
    total = sum(n for _, n, _ in results)
    print(
        f"{label:<7}{n_streams:>8}{len(results):>8}{statistics.median(ttfts_ms):>10.0f}{p95:>10.0f}"
        f"{max(ttfts_ms):>10.0f}{statistics.median(per_stream) if per_stream else float('nan'):>16.1f}"
        f"{total / wall:>15.1f}"
    )


def main():
    args = parse_args()
    folder = model_folder(args.model)
    load = os.getloadavg()
    print(
        f"model {folder}; {os.cpu_count()} CPUs, torch {torch.__version__}; load average {load[0]:.1f} {load[1]:.1f} "
        f"{load[2]:.1f} (other work on the machine slows every figure); server flags: {args.server_flags or 'none'}"
    )
    print(f"{args.turns} replies per stream, {args.max_new_tokens} new tokens each, temperature 0.8")
    print(
        f"{'server':<7}{'streams':>8}{'replies':>8}{'TTFT p50':>10}{'TTFT p95':>10}{'TTFT max':>10}"
        f"{'stream tok/s':>16}{'total tok/s':>15}"
    )
    for kind in args.servers:
        process, url = start_server(kind, folder, args.server_flags)
        try:
            model = openai.OpenAI(base_url=url, api_key="unused").models.list().data[0].id
            timed_reply(openai.OpenAI(base_url=url, api_key="unused"), model, args.max_new_tokens)  # warm-up
            for n_streams in args.concurrency:
                report(kind, n_streams, *run_streams(url, model, n_streams, args.turns, args.max_new_tokens))
        finally:
            process.terminate()
            process.wait(timeout=30)
    print("TTFT in ms; stream tok/s: median per reply after its first token; total tok/s: all replies over wall time")


if __name__ == "__main__":
    main()
