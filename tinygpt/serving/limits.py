"""What one API client may take from a shared server: how long a reply may be, how many replies it decodes at once,
how many the whole API decodes at once, and how large a body may be.

Why: every reply, API and browser alike, decodes in one batch of `max_batch` slots (tinygpt.decoding.scheduler).
Without limits, a client asking for endless replies on many connections holds every slot for good and the browser
chat starves. So:
- a reply's length is capped (`max_tokens`, by default a few times the model's own max_new_tokens); a reply that
  reaches the cap ends with finish_reason "length", as one that reaches a client's own max_tokens does;
- a client (its API key, or its IP address where the server has no key) decodes at most `per_client` replies at
  once; its further requests wait their turn, up to `MAX_WAITING` of them, then get a 429;
- the API as a whole decodes at most `api_slots` replies at once: inside app.py that leaves the rest of the batch
  to the browser, whatever the API does;
- a body larger than `max_body_bytes` is refused (413) from its Content-Length, before it is read; a body sent
  without one is read up to the limit and no further.
"""

import asyncio
import weakref
from collections import defaultdict
from dataclasses import dataclass

from fastapi import Request

from tinygpt.serving.bodies import APIError

REPLY_LENGTH_FACTOR = 4  # the default cap on a reply: this many times the model's own max_new_tokens
MAX_WAITING = 64  # requests one client may have waiting for a slot; more get a 429
DEFAULT_MAX_BODY_BYTES = 1 << 20  # far more than a prompt that fits a small model's window


@dataclass(frozen=True)
class ServingLimits:
    max_tokens: int | None = None  # cap on a reply's tokens; None: REPLY_LENGTH_FACTOR x the model's max_new_tokens
    per_client: int | None = None  # replies one client decodes at once; None: no cap
    api_slots: int | None = None  # replies all API clients decode at once; None: no cap
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES

    @classmethod
    def for_batch(cls, max_batch: int, *, browser: bool, **overrides) -> "ServingLimits":
        """Defaults for a server decoding `max_batch` replies at once: a client gets half the batch at most and,
        where a browser chat shares the batch (app.py), the API as a whole gets half of it too."""
        half = max(1, max_batch // 2)
        settings = {"per_client": half, "api_slots": half if browser else None}
        return cls(**(settings | {name: value for name, value in overrides.items() if value is not None}))

    @classmethod
    def from_flags(cls, args, *, browser: bool) -> "ServingLimits":
        """The limits `add_server_arguments`' flags ask for (tinygpt.serving.flags), over `for_batch`'s defaults."""
        return cls.for_batch(
            args.max_batch,
            browser=browser,
            max_tokens=args.max_tokens,
            per_client=args.max_client_requests,
            max_body_bytes=args.max_body_bytes,
        )

    def reply_cap(self, model_max_new_tokens: int) -> int:
        return self.max_tokens or REPLY_LENGTH_FACTOR * model_max_new_tokens


class Admission:
    """Counts the replies in flight, per client and in all; `admit` waits for room (a 429 past MAX_WAITING)."""

    def __init__(self, limits: ServingLimits):
        self.limits = limits
        self.clients: dict[str, asyncio.Semaphore] = {}
        self.waiting: dict[str, int] = defaultdict(int)
        self.api = asyncio.Semaphore(limits.api_slots) if limits.api_slots else None

    async def admit(self, client: str) -> "Ticket":
        """A ticket for one reply of `client`, once there is room; release it when the reply ends."""
        if self.waiting[client] >= MAX_WAITING:
            raise APIError(
                429,
                f"Too many requests from this client: {MAX_WAITING} are already waiting; retry later.",
                code="rate_limit_exceeded",
            )
        semaphores = []
        if self.limits.per_client:
            semaphores.append(self.clients.setdefault(client, asyncio.Semaphore(self.limits.per_client)))
        if self.api is not None:
            semaphores.append(self.api)
        held: list[asyncio.Semaphore] = []
        self.waiting[client] += 1
        try:
            for semaphore in semaphores:  # always in this order, so no two requests wait on each other
                await semaphore.acquire()
                held.append(semaphore)
        except BaseException:  # cancelled while waiting: give back what was taken
            for semaphore in held:
                semaphore.release()
            raise
        finally:
            self.waiting[client] -= 1
        return Ticket(held)


class Ticket:
    """A reply's place; `release` is idempotent, and runs by itself when the reply's generator is dropped unread
    (a stream whose client left before its first byte)."""

    def __init__(self, held: list[asyncio.Semaphore]):
        self.held = held

    def release(self) -> None:
        while self.held:
            self.held.pop().release()

    def bind(self, pieces) -> None:
        weakref.finalize(pieces, self.release)


def client_id(request: Request, api_key: str | None) -> str:
    """Whom a request counts against: the API key where the server has one, else the caller's address."""
    if api_key:
        return "key"
    return request.client.host if request.client else "unknown"


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) when it is larger than `limit`: from Content-Length before reading, else as soon
    as the bytes read pass the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise body_too_large(limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise body_too_large(limit)
    return bytes(body)


def body_too_large(limit: int) -> APIError:
    return APIError(
        413, f"The body is larger than this server's limit of {limit:,} bytes; send a shorter one.", code="too_large"
    )


__all__ = ["Admission", "ServingLimits", "client_id", "read_body"]
