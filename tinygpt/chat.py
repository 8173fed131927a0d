"""Chat generation: turn a conversation into a prompt and stream the model's reply.

Shared by the Gradio app (tinygpt.webui) and the console chat (`tinygpt chat`).

Design notes
- The prompt is the tokenizer's own chat template (`apply_chat_template(add_generation_prompt=True)`), the
  very one training renders conversations with, so the model sees at chat time what it saw in training.
- The context window is finite: `build_prompt` drops the oldest turns until the prompt leaves room for the
  reply, and cuts a single over-long message from the left (its end is what the reply answers). It never
  raises on a long history.
- Streaming is transformers' own: `generate()` runs in a thread and feeds a `TextIteratorStreamer`, tuned to
  hand on every token rather than whole words (`TokenStreamer`). `stream_reply` yields the whole reply so
  far, which is what Gradio's ChatInterface expects from a streaming function.
- Stopping: a `StoppingCriteria` watches a `threading.Event`, set by the caller (a stop button) or by us when
  the consumer abandons the generator, so an abandoned reply never keeps a CPU core busy.
"""

import bisect
import threading
from collections.abc import Iterator

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer


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
        return tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True, return_dict=False)

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


class TokenStreamer(TextIteratorStreamer):
    """A TextIteratorStreamer that passes on each token's text at once instead of whole words.

    transformers' streamers hold text back until the next space because some tokenizers (SentencePiece)
    re-decode the start of a word differently once it is complete. Ours (characters, byte-level BPE) decode a
    prefix of the tokens to a prefix of the text, except for a multi-byte character split across tokens, which
    decodes to U+FFFD until its last byte arrives: only that is held back. Batch size 1, like the parent.
    """

    def __init__(self, tokenizer, **kwargs):
        # Clean-up rewrites " ." as "." and so could change text already passed on.
        super().__init__(
            tokenizer, skip_prompt=True, skip_special_tokens=True, clean_up_tokenization_spaces=False, **kwargs
        )

    def put(self, value: torch.Tensor):  # (1, T) prompt, then (1,) per new token
        if self.next_tokens_are_prompt:
            self.next_tokens_are_prompt = False
            return
        self.token_cache.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self.token_cache, **self.decode_kwargs)
        if not text.endswith("\ufffd"):
            self.on_finalized_text(text[self.print_len :])
            self.print_len = len(text)


class _EventStop(StoppingCriteria):
    """Stops generate() (all rows) once any of the events is set."""

    def __init__(self, *events: threading.Event | None):
        self.events = [event for event in events if event is not None]

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        stop = any(event.is_set() for event in self.events)
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


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

    The prompt keeps at least half the context window; a reply longer than what is left slides the window
    (TinyGPTForCausalLM.generate does that).
    """
    window = model.config.n_positions
    prompt_ids = build_prompt(
        tokenizer, messages, system_prompt=system_prompt, max_prompt_tokens=max(window - max_new_tokens, window // 2)
    )
    input_ids = torch.tensor([prompt_ids], device=model.device)  # (1, T)
    streamer = TokenStreamer(tokenizer)
    abandoned = threading.Event()  # set when our consumer goes away before the reply is finished
    failure: list[BaseException] = []

    def generate():
        try:
            model.generate(
                input_ids,
                attention_mask=torch.ones_like(input_ids),
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([_EventStop(stop_event, abandoned)]),
                **generation_kwargs(
                    tokenizer, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=max_new_tokens
                ),
            )
        except BaseException as error:  # re-raised in the consumer's thread below
            failure.append(error)
            streamer.end()  # unblock the consumer

    thread = threading.Thread(target=generate, name="tinygpt-generate", daemon=True)
    thread.start()
    reply, yielded = "", False
    try:
        for piece in streamer:
            if piece:
                reply += piece
                yielded = True
                yield reply
    finally:
        abandoned.set()  # a no-op if generation already finished
    thread.join()
    if failure:
        raise failure[0]
    if not yielded:  # the model answered <EOS> straight away: still one (empty) reply
        yield reply


__all__ = ["build_prompt", "generation_kwargs", "message_text", "stream_reply", "TokenStreamer"]
