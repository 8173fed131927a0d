"""`tinygpt serve`'s server: the /v1 routes in a FastAPI app of their own, served by uvicorn, behind a Host check.

The server binds 127.0.0.1 unless told otherwise, and a Host header naming another server gets a 400 (`host_check`,
against DNS rebinding), as in the app.
"""

import socket

from fastapi import FastAPI, Request
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from tinygpt.decoding.chat import ChatModel
from tinygpt.serving.bodies import APIError
from tinygpt.serving.limits import ServingLimits
from tinygpt.serving.openai import openai_router

LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")  # always accepted in the Host header
WILDCARD_HOSTS = ("0.0.0.0", "::", "")  # binding every interface: the machine's own names are accepted too


def host_check(host: str, allowed_hosts=(), share: bool = False) -> Middleware:
    """Starlette's TrustedHostMiddleware: a request whose Host header names another server gets a 400 (against
    DNS rebinding, where a foreign page's own name resolves to this server)."""
    names = {*LOCAL_HOSTS, *allowed_hosts}
    if host in WILDCARD_HOSTS:
        names |= {socket.gethostname(), socket.getfqdn()}
    else:
        names.add(host)
    if share:
        names.add("*.gradio.live")
    return Middleware(
        TrustedHostMiddleware,
        allowed_hosts=sorted(url_host(name).lower() for name in names if name),
        www_redirect=False,
    )


def url_host(host: str) -> str:
    """A host as a URL and the Host header write it: an IPv6 address in brackets ([::1])."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def create_app(
    models: dict[str, ChatModel],
    *,
    api_key: str | None = None,
    host: str = "127.0.0.1",
    allowed_hosts=(),
    limits: ServingLimits | None = None,
) -> FastAPI:
    """`tinygpt serve`'s app: the /v1 routes alone (no docs pages), behind the Host check."""
    app = FastAPI(
        title="tinygpt", docs_url=None, redoc_url=None, openapi_url=None, middleware=[host_check(host, allowed_hosts)]
    )
    app.include_router(openai_router(models, api_key, limits))

    @app.exception_handler(HTTPException)  # an unknown path or method: OpenAI's shape too
    async def http_error(request: Request, error: HTTPException):
        return APIError(error.status_code, f"{request.method} {request.url.path}: {error.detail}.").response()

    return app


def serve(app: FastAPI, host: str, port: int) -> None:
    """Serve `app` with uvicorn until interrupted. The port is bound first, so a taken port is an OSError here."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise OSError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
    server.run(sockets=[listener])


__all__ = ["create_app", "host_check", "serve", "url_host"]
