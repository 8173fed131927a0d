"""An OpenAI-compatible API for TinyGPT models: `tinygpt serve MODEL`, and the same /v1 routes inside app.py.

Design notes
- Why: Open WebUI, LangChain, the openai SDK and most chat front-ends speak OpenAI's HTTP API; serving it makes a
  tinygpt model usable from all of them. FastAPI (pydantic bodies) and uvicorn, which Gradio already installs,
  do the HTTP; this module only maps OpenAI's fields onto tinygpt's decoding.
- Routes: GET /v1/models (and /v1/models/{id}), POST /v1/chat/completions and POST /v1/completions, streamed as
  server-sent events (`data: {chunk}` ... `data: [DONE]`) or not, with usage counts. `openai_router` builds them
  for a dict of models; `tinygpt serve` puts the router in an app of its own, app.py in Gradio's app (one process,
  one port for the browser and the API).
- Decoding: a request becomes a `tinygpt.decoding.engine.Request` for the model's `ChatModel`, whose Scheduler batches it
  with every other reply in flight (API and browser alike). Chat messages are rendered by the model's chat
  template (`chat.build_prompt`); settings the request leaves out come from the model's generation_config.
  `top_k` and `min_tokens` are accepted as extra fields, as vLLM does. A prompt that does not fit the window is an error (the
  engine would silently drop its start); a reply may run past the window, which then slides.
- Stop strings are matched on the text: text that may be the start of a stop string is held back until it is
  not, so no part of a stop string is ever sent. A client that goes away (a dropped stream) cancels its request:
  Starlette cancels the response, the token stream's `finally` cancels the request, and its slot is free before
  the next step.
- Bodies are strict (pydantic's strict mode, unknown fields forbidden), as OpenAI's API is: a typo or a value of
  the wrong type is an error, not a silent default. OpenAI's fields tinygpt does not implement pass only at their
  neutral value (`NEUTRAL_VALUES`): a reply that ignored them would be a silent wrong result.
- Errors are OpenAI's JSON shape, `{"error": {"message", "type", "param", "code"}}`, with 400 (a bad body: malformed
  JSON, a wrong or unsupported field, n > 1, a prompt longer than the window), 401 (no or a wrong API key), 404 (an
  unknown model) and 415 (a body that is not application/json). They are made by the routes' own class
  (`OpenAIRoute`), so mounting the routes into Gradio's app changes nothing for Gradio's routes.
- A prompt far past the window is refused from its length before it is tokenized (`check_fits`), and rendering and
  tokenizing run in the thread pool: one client's huge request never holds the event loop that streams the others.
- Security: `api_key` is compared in constant time and is never logged or sent back (uvicorn logs request lines,
  not headers). The server binds 127.0.0.1 unless told otherwise, and a Host header naming another server gets a
  400 (`host_check`, against DNS rebinding), as in the app. Only JSON bodies are read: a web page can send a form
  or text to a local server without its consent, not JSON.
"""

import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from tinygpt.decoding.chat import ChatModel, IncrementalDecoder, message_text, render_prompt
from tinygpt.serving.bodies import (
    APIError,
    ChatCompletionBody,
    CompletionBody,
    Sampling,
    check_json_media_type,
    parse,
)
from tinygpt.serving.limits import Admission, ServingLimits, Ticket, client_id, read_body

logger = logging.getLogger(__name__)


def openai_router(
    models: dict[str, ChatModel], api_key: str | None = None, limits: ServingLimits | None = None
) -> APIRouter:
    """The /v1 routes serving `models` (id -> ChatModel); with `api_key`, every route needs
    `Authorization: Bearer <api_key>`. `limits` (tinygpt.serving.limits) bound what one client may take."""
    expected = api_key.encode() if api_key else None
    limits = limits or ServingLimits()
    admission = Admission(limits)

    async def read(request: Request, body_type):
        check_json_media_type(request)
        return await run_in_threadpool(parse, await read_body(request, limits.max_body_bytes), body_type)

    async def admitted(request: Request, model: ChatModel, body, prompt_ids: list[int], chat: bool):
        ticket = await admission.admit(client_id(request, api_key))
        try:
            return await respond(model, body, prompt_ids, chat, request.is_disconnected, ticket, limits)
        except BaseException:
            ticket.release()
            raise

    class OpenAIRoute(APIRoute):
        """Checks the key before anything else, and answers every error in OpenAI's shape."""

        def get_route_handler(self) -> Callable:
            handle = super().get_route_handler()

            async def guarded(request: Request):
                try:
                    scheme, _, given = request.headers.get("authorization", "").partition(" ")
                    # Headers arrive as Latin-1 (HTTP's own); the key is ASCII (checked where it is given).
                    given = given.strip().encode("latin-1")
                    if expected is not None and not (
                        scheme.lower() == "bearer" and secrets.compare_digest(given, expected)
                    ):
                        raise APIError(
                            401,
                            "Missing or wrong API key: send it as the header 'Authorization: Bearer <key>'.",
                            code="invalid_api_key",
                        )
                    return await handle(request)
                except APIError as error:
                    return error.response()
                except Exception:
                    logger.exception("%s %s failed", request.method, request.url.path)
                    return APIError(500, "The server failed on this request; its log says why.").response()

            return guarded

    router = APIRouter(prefix="/v1", route_class=OpenAIRoute)

    def chat_model(model_id: str) -> ChatModel:
        if model_id not in models:
            raise APIError(
                404,
                f"The model {model_id!r} does not exist here; this server has {', '.join(map(repr, models))}.",
                param="model",
                code="model_not_found",
            )
        return models[model_id]

    @router.get("/models")
    async def list_models():
        return {"object": "list", "data": [model_entry(model_id) for model_id in models]}

    @router.get("/models/{model_id:path}")
    async def retrieve_model(model_id: str):
        chat_model(model_id)
        return model_entry(model_id)

    @router.post("/chat/completions")
    async def chat_completions(request: Request):
        body = await read(request, ChatCompletionBody)
        model = chat_model(body.model)
        system = "\n".join(message_text(m.content) for m in body.messages if m.role in ("system", "developer"))
        turns = [
            {"role": m.role, "content": message_text(m.content)}
            for m in body.messages
            if m.role in ("user", "assistant")
        ]
        if not turns:
            raise APIError(400, "messages: there is no user message to reply to.", param="messages")
        conversation = [{"role": "system", "content": system}] * bool(system) + turns
        check_fits(model, [message["content"] for message in conversation], len(conversation), chat=True)
        # Rendering and tokenizing a long prompt takes a while: off the event loop, which serves every client.
        prompt_ids = await run_in_threadpool(render_prompt, model.tokenizer, conversation)
        return await admitted(request, model, body, prompt_ids, chat=True)

    @router.post("/completions")
    async def completions(request: Request):
        body = await read(request, CompletionBody)
        model = chat_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if len(prompts) != 1:
            raise APIError(400, "prompt: send one prompt per request (a list of one string at most).", param="prompt")
        check_fits(model, prompts, 0, chat=False)
        prompt_ids = (await run_in_threadpool(model.tokenizer, prompts[0]))["input_ids"]
        if not prompt_ids:
            raise APIError(400, "prompt: the prompt is empty.", param="prompt")
        return await admitted(request, model, body, prompt_ids, chat=False)

    return router


def check_fits(model: ChatModel, texts: list[str], messages: int, chat: bool) -> None:
    """A 400 before any tokenizing for a prompt that cannot fit the window however it tokenizes: a token covers at
    most `longest_token` characters, and each message takes at least one token of its own."""
    room = model.window - 1
    fewest_tokens = max(messages, sum(map(len, texts)) // model.longest_token)
    if fewest_tokens > room:
        raise context_length_exceeded(f"more than {room} tokens", model, chat)


def context_length_exceeded(prompt: str, model: ChatModel, chat: bool) -> APIError:
    return APIError(
        400,
        f"The prompt is {prompt} and this model reads at most {model.window - 1} before its reply "
        f"(a context window of {model.window}); shorten it.",
        param="messages" if chat else "prompt",
        code="context_length_exceeded",
    )


def model_entry(model_id: str) -> dict:
    """The OpenAI "model" object of GET /v1/models (not a Hub model card)."""
    return {"id": model_id, "object": "model", "created": 0, "owned_by": "tinygpt"}


# -- decoding -------------------------------------------------------------------------------------------------


MAX_STOP_CHARS = 256  # per stop string


class StopStrings:
    """Text in, the text safe to send out: it ends before the first stop string, and an end that may begin one is
    held back until the next text shows it does not. Each piece costs time in the stop strings' length, not the
    reply's: only a match that ends in the new piece can be new."""

    def __init__(self, stops: list[str]):
        self.stops, self.text, self.sent, self.stopped = [stop for stop in stops if stop], "", 0, False
        self.longest = max(map(len, self.stops), default=0)

    def push(self, piece: str) -> str:
        start = max(0, len(self.text) - self.longest + 1)  # earlier text held no stop string
        self.text += piece
        found = [at for stop in self.stops if (at := self.text.find(stop, start)) >= 0]
        if found:
            self.stopped = True
            end = min(found)
        else:
            held = max(
                (k for stop in self.stops for k in range(1, len(stop)) if self.text.endswith(stop[:k])), default=0
            )
            end = len(self.text) - held
        new, self.sent = self.text[self.sent : end], end
        return new

    def rest(self) -> str:
        """What was held back, once the reply ended without a stop string."""
        return "" if self.stopped else self.text[self.sent :]


@dataclass
class Generation:
    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: str = "stop"  # "length" when it ran out of max_tokens

    def usage(self) -> dict:
        total = self.prompt_tokens + self.completion_tokens
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens, "total_tokens": total}


async def respond(
    model: ChatModel,
    body: Sampling,
    prompt_ids: list[int],
    chat: bool,
    gone: Callable[[], Awaitable[bool]],
    ticket: Ticket,
    limits: ServingLimits,
):
    """Check the request against the model, then decode it: one JSON response, or a stream of chunks. `gone()`
    says whether the client went away (Starlette ends a stream itself; a whole reply must ask). The reply gives
    back its `ticket` when it ends."""
    if body.n != 1:
        raise APIError(400, f"n: only n=1 is supported, got {body.n}.", param="n", code="unsupported_value")
    if len(prompt_ids) > model.window - 1:  # the reply needs at least one position
        raise context_length_exceeded(f"{len(prompt_ids)} tokens", model, chat)
    stops = [body.stop] if isinstance(body.stop, str) else body.stop or []
    if len(stops) > 4 or any(len(stop) > MAX_STOP_CHARS for stop in stops):  # OpenAI's 4; kept cheap to match
        raise APIError(400, f"stop: at most 4 stop strings of at most {MAX_STOP_CHARS} characters each.", param="stop")
    cap = limits.reply_cap(model.defaults["max_new_tokens"])
    max_tokens = min(getattr(body, "max_completion_tokens", None) or body.max_tokens or cap, cap)
    settings = dict(
        max_new_tokens=max_tokens,
        min_new_tokens=min(body.min_tokens, max_tokens) if body.min_tokens is not None else None,
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
    )
    settings = {name: value for name, value in settings.items() if value is not None}
    request = model.request(prompt_ids, seed=body.seed, **settings)
    generation = Generation(prompt_tokens=len(prompt_ids))
    pieces = decode_text(model, request, stops, generation, ticket)
    ticket.bind(pieces)
    reply_id, created = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())
    header = {"id": reply_id, "created": created, "model": body.model}
    if body.stream:
        include_usage = body.stream_options is not None and body.stream_options.include_usage
        events = sse_chunks(header, pieces, generation, chat, include_usage)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return await whole_reply(header, pieces, generation, chat, gone)


async def decode_text(
    model: ChatModel, request, stops: list[str], generation: Generation, ticket: Ticket
) -> AsyncIterator[str]:
    """The reply's text as it is decoded, up to a stop string; counts tokens and the finish reason into
    `generation`. Leaving the loop early (a stop string, a client gone) cancels the request; the end, however it
    comes, gives back the reply's ticket."""
    decoder, stop = IncrementalDecoder(model.tokenizer), StopStrings(stops)
    tokens = model.scheduler.astream(request)
    try:
        async for token in tokens:
            generation.completion_tokens += 1
            if text := stop.push(decoder.push(token)):
                yield text
            if stop.stopped:
                return
        if rest := stop.rest():
            yield rest
        if generation.completion_tokens >= request.max_new_tokens:
            generation.finish_reason = "length"
    finally:
        ticket.release()
        await tokens.aclose()


async def whole_reply(
    header: dict, pieces: AsyncIterator[str], generation: Generation, chat: bool, gone: Callable[[], Awaitable[bool]]
) -> dict:
    parts = []
    async for piece in pieces:
        parts.append(piece)
        if await gone():  # nobody will read the reply: stop decoding it (closing the pieces cancels the request)
            await pieces.aclose()
            return {}
    text = "".join(parts)
    if chat:
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
    else:
        choice = {"index": 0, "text": text}
    choice |= {"finish_reason": generation.finish_reason, "logprobs": None}
    kind = "chat.completion" if chat else "text_completion"
    return {**header, "object": kind, "choices": [choice], "usage": generation.usage()}


async def sse_chunks(
    header: dict, pieces: AsyncIterator[str], generation: Generation, chat: bool, include_usage: bool
) -> AsyncIterator[str]:
    """The reply as server-sent events: OpenAI's chunks, then `data: [DONE]`."""
    kind = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list[dict], **extra) -> str:
        return f"data: {json.dumps({**header, 'object': kind, 'choices': choices, **extra})}\n\n"

    def choice(text: str | None, finish_reason: str | None = None) -> dict:
        if chat:
            delta = {} if text is None else {"content": text}
            return {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return {"index": 0, "text": text or "", "finish_reason": finish_reason, "logprobs": None}

    if chat:
        yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
    async for piece in pieces:
        yield chunk([choice(piece)])
    yield chunk([choice(None, generation.finish_reason)])
    if include_usage:
        yield chunk([], usage=generation.usage())
    yield "data: [DONE]\n\n"


__all__ = ["StopStrings", "openai_router"]
