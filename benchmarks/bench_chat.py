"""Chat latency on this machine: time to first token and tokens/s for 1 and 8 concurrent chats.

Measured three ways, each after one untimed warm-up chat:
- direct: `tinygpt.chat.ChatModel.stream_reply` called from N threads at once (the engines alone);
- http: `python app.py --model MODEL` on a free port, N threads streaming from its `/chat` endpoint over
  Gradio's plain HTTP API (queue, HTTP and server-sent events included: what a browser user waits for);
- client: the same app through N gradio_client sessions. gradio_client is heavy Python running on the same
  cores as the app, so these rows also time the client; compare them with "http".

Each of the N clients holds one conversation of --turns turns, asking the same question each turn, at
temperature 0.8 with at most --max_new_tokens new tokens. Directly and through gradio_client the history grows
(trimmed to the window); the plain HTTP API keeps none, so there every turn is a one-message chat. A
gradio_client session's first turn also pays for opening its event stream. Time to first token (TTFT) is the
wait from the request to the first streamed text; decode tokens/s is per reply, after its first token; total
tokens/s is all replies' tokens over the wall time. Tokens are counted by re-tokenizing each reply. Target:
p95 TTFT <= 300 ms with 8 concurrent chats.

MODEL defaults to runs/tiny (what `python train.py` writes by default); where it is absent a model of the
"tiny" preset's shape with random weights stands in (replies are noise, timings are representative, though
a random model stops at <EOS> at random).

    python benchmarks/bench_chat.py                   # runs/tiny: 1 and 8 chats, direct, http and client
    python benchmarks/bench_chat.py runs/my-model --concurrency 1 4 8 --skip_app
"""

import argparse
import json
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

import torch
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not
from tinygpt import TinyGPTCharTokenizer  # noqa: E402
from tinygpt.chat import ChatModel  # noqa: E402
from tinygpt.loading import load_model_and_tokenizer  # noqa: E402
from tinygpt.presets import PRESETS  # noqa: E402
from tinygpt.training import ModelArguments, new_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
QUESTION = "hello! what can you tell me about the weather today?"


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="runs/tiny", help="model folder (default runs/tiny)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8], help="concurrent chats (default 1 8)")
    parser.add_argument("--turns", type=int, default=4, help="turns of each client's conversation")
    parser.add_argument("--max_new_tokens", type=int, default=64, help="longest reply, in tokens")
    parser.add_argument("--skip_app", action="store_true", help="measure stream_reply only, not through the app")
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
    )
    folder = tempfile.mkdtemp(prefix="bench-chat-model-")
    torch.manual_seed(0)
    new_model(tokenizer, shape).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"{requested} holds no model: using a random model of the 'tiny' preset's shape ({folder})")
    return folder


def timed_stream(partials) -> tuple[float, str, float]:
    """(seconds to the first text, the whole reply, seconds from the first text to the last) of one stream."""
    start = time.perf_counter()
    first = last = None
    reply = ""
    for partial in partials:
        last = time.perf_counter()
        first = first or last
        reply = partial
    if first is None:  # nothing streamed: count the whole wait as time to first token
        first = last = time.perf_counter()
    return first - start, reply, last - first


def run_clients(n_clients: int, turns: int, new_conversation) -> tuple[list[tuple[float, str, float]], float]:
    """n_clients threads at once, each taking `turns` turns of `new_conversation()` (a function of a message that
    streams the reply); returns every turn's timed_stream and the wall seconds."""
    results, lock = [], threading.Lock()
    start_line = threading.Barrier(n_clients)
    conversations = [new_conversation() for _ in range(n_clients)]  # connected before the clock starts

    def client(take_turn):
        start_line.wait()
        for _ in range(turns):
            result = timed_stream(take_turn(QUESTION))
            with lock:
                results.append(result)

    threads = [threading.Thread(target=client, args=(take_turn,)) for take_turn in conversations]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - start


def report(label: str, n_clients: int, tokenizer, results, wall: float) -> None:
    ttfts_ms = sorted(ttft * 1000 for ttft, _, _ in results)
    p95 = ttfts_ms[min(len(ttfts_ms) - 1, round(0.95 * (len(ttfts_ms) - 1)))]
    tokens = [len(tokenizer.encode(reply, add_special_tokens=False)) for _, reply, _ in results]
    decode = [(n - 1) / seconds for n, (_, _, seconds) in zip(tokens, results, strict=True) if n > 1 and seconds > 0]
    print(
        f"{label:<7}{n_clients:>6}{len(results):>8}{statistics.median(ttfts_ms):>10.0f}{p95:>10.0f}"
        f"{max(ttfts_ms):>10.0f}{statistics.median(decode) if decode else float('nan'):>14.1f}"
        f"{sum(tokens) / wall:>13.1f}{sum(tokens) / len(results):>11.1f}"
    )


def bench_direct(folder: str, args) -> None:
    chat_model = ChatModel(*load_model_and_tokenizer(folder))
    tokenizer = chat_model.tokenizer

    def new_conversation():
        messages = []

        def take_turn(message):
            messages.append({"role": "user", "content": message})
            reply = ""
            for reply in chat_model.stream_reply(messages, temperature=0.8, max_new_tokens=args.max_new_tokens):
                yield reply
            messages.append({"role": "assistant", "content": reply})

        return take_turn

    timed_stream(new_conversation()("warm-up"))
    for n_clients in args.concurrency:
        report("direct", n_clients, tokenizer, *run_clients(n_clients, args.turns, new_conversation))


def bench_app(folder: str, args) -> None:
    import httpx
    from gradio_client import Client

    tokenizer = AutoTokenizer.from_pretrained(folder)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "NO_PROXY": "localhost,127.0.0.1", "no_proxy": "localhost,127.0.0.1"}
    command = [sys.executable, "app.py", "--model", folder, "--port", str(port)]
    log = tempfile.TemporaryFile()
    app = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    inputs = dict(system_prompt="", temperature=0.8, top_k=0, top_p=1, max_new_tokens=args.max_new_tokens)

    def http_conversation():
        """Gradio's plain HTTP API (the one `curl` uses): POST the inputs, then read the reply's server-sent events.
        It keeps no history: every turn is a one-message chat."""
        http = httpx.Client(timeout=300)

        def take_turn(message):
            call = http.post(f"{url}gradio_api/call/chat", json={"data": [message, *inputs.values()]})
            with http.stream("GET", f"{url}gradio_api/call/chat/{call.json()['event_id']}") as events:
                event = None
                for line in events.iter_lines():
                    if line.startswith("event:"):
                        event = line.removeprefix("event:").strip()
                    elif line.startswith("data:") and event == "error":
                        raise SystemExit(f"app.py answered an error: {line}")
                    elif line.startswith("data:") and event in ("generating", "complete"):
                        yield json.loads(line.removeprefix("data:"))[0]  # the reply so far
                        if event == "complete":
                            return

        return take_turn

    def client_conversation():
        client = Client(url, verbose=False)  # one session: the app keeps its history
        return lambda message: client.submit(message=message, **inputs, api_name="/chat")

    try:
        for _ in range(600):
            if app.poll() is not None:
                log.seek(0)
                raise SystemExit(f"app.py exited with {app.returncode}: {log.read().decode()[-2000:]}")
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except OSError:
                time.sleep(0.5)
        for label, new_conversation in (("http", http_conversation), ("client", client_conversation)):
            timed_stream(new_conversation()("warm-up"))
            for n_clients in args.concurrency:
                report(label, n_clients, tokenizer, *run_clients(n_clients, args.turns, new_conversation))
    finally:
        app.terminate()
        app.wait(timeout=30)


def main():
    args = parse_args()
    folder = model_folder(args.model)
    load = os.getloadavg()
    print(
        f"model {folder}; {os.cpu_count()} CPUs, torch {torch.__version__} with {torch.get_num_threads()} threads; "
        f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (other work on the machine slows every figure)"
    )
    print(f"{args.turns} turns per client, up to {args.max_new_tokens} new tokens, temperature 0.8")
    print(
        f"{'path':<7}{'chats':>6}{'replies':>8}{'TTFT p50':>10}{'TTFT p95':>10}{'TTFT max':>10}"
        f"{'decode tok/s':>14}{'total tok/s':>13}{'tok/reply':>11}"
    )
    bench_direct(folder, args)
    if not args.skip_app:
        bench_app(folder, args)
    print("TTFT in ms; decode tok/s: median per reply after its first token; total tok/s: all replies over wall time")


if __name__ == "__main__":
    main()
