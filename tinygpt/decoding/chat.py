"""Chat: turn a conversation into a prompt and stream the model's reply, for the app and `tinygpt chat`.

Design notes
- The prompt is the tokenizer's own chat template (`apply_chat_template(add_generation_prompt=True)`), the
  very one training renders conversations with, so the model sees at chat time what it saw in training.
- The context window is finite: `build_prompt` drops the oldest turns until the prompt leaves room for the
  reply, and cuts a single over-long message from the left (its end is what the reply answers). It never
  raises on a long history.
- `ChatModel` is a model and its tokenizer with the decoding options (`tinygpt.decoding.engine.Engine`'s device, compile,
  int8 and batch choices), held by the object, and one engine with a `Scheduler` in front: every concurrent
  reply (browser chats, API requests) joins the same batch, so eight chats cost about one decode step a token,
  not eight.
- Its defaults (temperature, top-k, top-p, reply length) are the model's generation_config: a model trained to
  answer greedily is asked greedily unless told otherwise.
- Closing a reply's generator (Gradio's stop, a client going away) cancels its request: its slot is free before
  the next step.
- Text is decoded token by token (`text_pieces`). `stream_reply` yields the whole reply so far, which is what
  Gradio's ChatInterface expects from a streaming function.
"""

import bisect
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

from tinygpt.decoding.engine import Engine, Request
from tinygpt.decoding.sampling import settings_from
from tinygpt.decoding.scheduler import Scheduler


def message_text(content) -> str:
    """A message's text: Gradio's browser sends a list of parts ([{"type": "text", "text": ...}]), clients a string."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return content.get("text") or ""
    return "".join(message_text(part) for part in content or [])


def render_prompt(tokenizer, conversation: list[dict]) -> list[int]:
    """Token ids of `conversation` ({"role", "content": str} each; a system message first, if any) and the
    assistant's generation prompt, whatever its length."""
    # verbose=False: a history longer than the model is expected (build_prompt trims it), so no warning.
    return tokenizer.apply_chat_template(
        conversation, add_generation_prompt=True, tokenize=True, return_dict=False, tokenizer_kwargs={"verbose": False}
    )


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
        return render_prompt(tokenizer, conversation)

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


class IncrementalDecoder:
    """Token ids in, text out, one token at a time: a character whose bytes span several byte-level BPE tokens
    decodes to U+FFFD until its last byte arrives, so only that is held back."""

    def __init__(self, tokenizer):
        self.tokenizer, self.undecoded = tokenizer, []

    def push(self, token_id: int) -> str:
        """The text this token completes ("" while a character is unfinished, or for a special token)."""
        self.undecoded.append(token_id)
        piece = self.tokenizer.decode(self.undecoded, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        if piece.endswith("\ufffd"):
            return ""
        self.undecoded = []
        return piece


def text_pieces(tokenizer, token_ids: Iterator[int]) -> Iterator[str]:
    """The text of a stream of token ids, piece by piece (see IncrementalDecoder)."""
    decoder = IncrementalDecoder(tokenizer)
    for token_id in token_ids:
        if piece := decoder.push(token_id):
            yield piece


@dataclass(frozen=True)
class DecodingOptions:
    """How replies are decoded (see tinygpt.decoding.engine.Engine): `device="auto"` is a CUDA GPU in bf16 when there is
    one; `compile` None compiles on CUDA only; `int8_weights` decodes on the CPU with int8 weights (compiled);
    `max_batch` replies decode together (more wait for a free slot)."""

    compile: bool | None = None
    int8_weights: bool = False
    device: str | None = "auto"
    max_batch: int = 1


class ChatModel:
    """A model and its tokenizer, ready to chat: one engine, whose batch every concurrent reply joins."""

    def __init__(self, model, tokenizer, options: DecodingOptions = DecodingOptions()):
        self.tokenizer, self.options = tokenizer, options
        self.engine = Engine(
            model,
            max_batch=options.max_batch,
            device=options.device,
            compile=options.compile,
            int8_weights=options.int8_weights,
        )
        self.model = model  # placed by the engine (with int8 weights, the engine decodes its own copy)
        self.window = model.config.n_positions
        # The most characters one token stands for: a text of N characters is at least N / longest_token tokens.
        self.longest_token = max(1, max(map(len, tokenizer.get_vocab())))
        self.defaults = settings_from(model.generation_config)  # temperature, top_k, top_p, max_new_tokens
        self.scheduler = Scheduler(self.engine)

    def warm_up(self) -> None:
        """Compile now (when the options compile) rather than in the first chat."""
        if self.engine.compiled:
            print("compiling chat decoding (the first time takes a while; it is cached after)...", flush=True)
        self.engine.warm_up()

    def close(self) -> None:
        """End the scheduler's thread (once the replies in flight are done), before the interpreter exits."""
        self.scheduler.close()

    def request(self, prompt_ids: list[int], **settings) -> Request:
        """A request for `prompt_ids`, ending at <EOS>: `settings` (Request's fields) over the model's defaults."""
        return Request(prompt_ids, stop_ids=[self.tokenizer.eos_token_id], **(self.defaults | settings))

    def stream_reply(
        self,
        messages: list[dict],
        *,
        system_prompt: str | None = None,
        stop_event: threading.Event | None = None,
        **settings,
    ) -> Iterator[str]:
        """Yield the reply to the last user message, cumulatively ("He", "Hello", "Hello!"), until <EOS> or a stop.

        `settings` are Request's (temperature, top_k, top_p, max_new_tokens, seed), over the model's defaults. The
        prompt keeps at least half the context window; a reply longer than what is left slides the window.
        """
        max_new_tokens = settings.get("max_new_tokens", self.defaults["max_new_tokens"])
        prompt_ids = build_prompt(
            self.tokenizer,
            messages,
            system_prompt=system_prompt,
            max_prompt_tokens=max(self.window - max_new_tokens, self.window // 2),
        )
        reply = ""
        with closing(self.scheduler.stream(self.request(prompt_ids, **settings), stop_event)) as tokens:
            for piece in text_pieces(self.tokenizer, tokens):
                reply += piece
                yield reply
        if not reply:  # the model answered <EOS> straight away: still one (empty) reply
            yield reply


__all__ = ["ChatModel", "DecodingOptions", "IncrementalDecoder", "build_prompt", "message_text", "text_pieces"]
