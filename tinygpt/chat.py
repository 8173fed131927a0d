"""Chat generation: turn a conversation into a prompt and stream the model's reply.

Shared by the Gradio app (tinygpt.webui) and the console chat (`tinygpt chat`).

Design notes
- The prompt is the tokenizer's own chat template (`apply_chat_template(add_generation_prompt=True)`), the
  very one training renders conversations with, so the model sees at chat time what it saw in training.
- The context window is finite: `build_prompt` drops the oldest turns until the prompt leaves room for the
  reply, and cuts a single over-long message from the left (its end is what the reply answers). It never
  raises on a long history.
- Decoding is `tinygpt.decoding.FastDecoder`: a lean token loop over a preallocated KV cache (one CUDA graph
  per token on GPUs) whose greedy output equals `generate()`'s. It runs in the caller's thread, one token per
  iteration, so streaming needs no thread or streamer, and closing the generator (Gradio's stop, a client
  going away) stops the work at once. Each concurrent chat borrows a decoder from a per-model pool.
- Where and how it decodes is process-wide (`configure_decoding`): compiled or not, int8 weights or not; the
  loaders put models on a CUDA GPU in bf16 when there is one (`place_for_decoding`), else on the CPU.
- Text is decoded token by token; a multi-byte character split across byte-level BPE tokens decodes to
  U+FFFD until its last byte arrives, so only that is held back. `stream_reply` yields the whole reply so
  far, which is what Gradio's ChatInterface expects from a streaming function.
"""

import bisect
import queue
import threading
import weakref
from collections.abc import Iterator
from contextlib import closing, contextmanager

import torch

from .decoding import FastDecoder, compiles


def message_text(content) -> str:
    """A message's text: Gradio's browser sends a list of parts ([{"type": "text", "text": ...}]), clients a string."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") or ""
    return "".join(message_text(part) for part in content or [])


def build_prompt(
    tokenizer, messages: list[dict], *, system_prompt: str | None = None, max_prompt_tokens: int
) -> list[int]:
    """Token ids of [system] + messages + the assistant generation prompt, at most `max_prompt_tokens` long.

    `messages` are {"role": "user"|"assistant", "content": str or list of parts}, the last a user turn. The
    oldest turns go first; what remains always starts with a user turn. If the last message alone does not fit,
    the system prompt goes, then the message is cut from the left.
    """
    max_prompt_tokens = max(1, max_prompt_tokens)
    turns = [{"role": m["role"], "content": message_text(m["content"])} for m in messages if m["role"] != "system"]
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []

    def render(conversation: list[dict]) -> list[int]:
        # verbose=False: a history longer than the model is expected here (it is trimmed next), so no warning.
        return tokenizer.apply_chat_template(
            conversation,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=False,
            tokenizer_kwargs={"verbose": False},
        )

    # Where the kept history may start: the beginning, or a user turn (a reply without its question is noise). The
    # prompt only shrinks as the start moves on, so bisect for the earliest start that fits: O(log n) renders.
    starts = sorted({0, *(i for i, turn in enumerate(turns) if turn["role"] == "user")})
    first_fitting = bisect.bisect_left(
        starts, True, key=lambda start: len(render(system + turns[start:])) <= max_prompt_tokens
    )
    turns = turns[starts[min(first_fitting, len(starts) - 1)] :]
    ids = render(system + turns)
    if len(ids) > max_prompt_tokens and system:
        system = []
        ids = render(turns)
    if len(ids) > max_prompt_tokens and turns:
        # Keep the end of the one remaining message: as many of its tokens as the template leaves room for.
        overhead = len(render([{**turns[-1], "content": ""}]))
        content_ids = tokenizer.encode(turns[-1]["content"], add_special_tokens=False)
        room = max(0, max_prompt_tokens - overhead)
        kept = tokenizer.decode(content_ids[-room:] if room else [])
        ids = render([{**turns[-1], "content": kept}])
    return ids[-max_prompt_tokens:]  # only bites when the bare template is longer than the budget


def generation_kwargs(
    tokenizer, *, temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int
) -> dict:
    """generate() settings for a chat reply: greedy at temperature 0, else sampling with optional top-k / top-p."""
    settings = dict(
        max_new_tokens=max_new_tokens, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    if temperature <= 0:
        return {**settings, "do_sample": False}
    return {
        **settings,
        "do_sample": True,
        "temperature": float(temperature),
        "top_k": int(top_k) if top_k else None,  # 0 / None: no top-k filtering
        "top_p": float(top_p) if top_p is not None and 0 < top_p < 1 else None,  # 1 / None: no nucleus filtering
    }


_decoders: "weakref.WeakKeyDictionary[object, queue.SimpleQueue]" = weakref.WeakKeyDictionary()
_decoders_lock = threading.Lock()
_decoder_options = {"compile": None, "int8_weights": False}  # FastDecoder's defaults: compiled on CUDA only


def configure_decoding(compile: bool | None, int8_weights: bool = False) -> None:
    """Process-wide options of chat decoders (see FastDecoder). `compile` (None: on CUDA only): on a CPU decoding
    is 2-3x faster after ~25 s of compiling per decoding mode the first time (the compile cache keeps it after).
    `int8_weights` (CPU only; implies compiling): decode with int8 weights, ~1.5x faster again."""
    with _decoders_lock:
        _decoder_options.update(compile=compile, int8_weights=int8_weights)
        _decoders.clear()  # decoders made under the old choice are not reused


def place_for_decoding(model):
    """A freshly loaded model, moved to where chat decodes: a CUDA GPU in bf16 when there is one (FastDecoder's
    compiled, CUDA-graphed path), else left on the CPU. Int8 weights are a CPU mode and keep it there."""
    if torch.cuda.is_available() and not _decoder_options["int8_weights"]:
        return model.to("cuda", torch.bfloat16)
    return model


def warm_up(model) -> None:
    """Make a decoder for `model` and run both decoding modes once, so compiling happens now, not in a chat."""
    if compiles(model.device, **_decoder_options):
        print("compiling chat decoding (the first time takes a while; it is cached after)...", flush=True)
    with borrowed_decoder(model) as decoder:
        for temperature in (0.0, 1.0):
            list(decoder.stream([0], max_new_tokens=2, temperature=temperature))


@contextmanager
def borrowed_decoder(model) -> Iterator[FastDecoder]:
    """A FastDecoder for `model` from its pool (made on first need), returned when the reply is done."""
    with _decoders_lock:
        pool = _decoders.setdefault(model, queue.SimpleQueue())
        options = dict(_decoder_options)
    try:
        decoder = pool.get_nowait()
    except queue.Empty:
        decoder = FastDecoder(model, **options)  # one KV cache per concurrent chat
    try:
        yield decoder
    finally:
        pool.put(decoder)


def stream_reply(
    model,
    tokenizer,
    messages: list[dict],
    *,
    system_prompt: str | None = None,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    max_new_tokens: int = 256,
    stop_event: threading.Event | None = None,
) -> Iterator[str]:
    """Yield the reply to the last user message, cumulatively ("He", "Hello", "Hello!"), until <EOS> or a stop.

    The prompt keeps at least half the context window; a reply longer than what is left slides the window.
    """
    window = model.config.n_positions
    prompt_ids = build_prompt(
        tokenizer, messages, system_prompt=system_prompt, max_prompt_tokens=max(window - max_new_tokens, window // 2)
    )
    reply, undecoded = "", []  # undecoded: tokens of a character still missing bytes
    with (
        borrowed_decoder(model) as decoder,
        closing(
            decoder.stream(
                prompt_ids,
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                stop_ids=[tokenizer.eos_token_id],
                stop_event=stop_event,
            )
        ) as tokens,
    ):
        for token_id in tokens:
            undecoded.append(token_id)
            piece = tokenizer.decode(undecoded, skip_special_tokens=True, clean_up_tokenization_spaces=False)
            if piece.endswith("\ufffd"):
                continue
            undecoded = []
            if piece:
                reply += piece
                yield reply
    if not reply:  # the model answered <EOS> straight away: still one (empty) reply
        yield reply


__all__ = [
    "borrowed_decoder",
    "build_prompt",
    "configure_decoding",
    "generation_kwargs",
    "message_text",
    "place_for_decoding",
    "stream_reply",
    "warm_up",
]
