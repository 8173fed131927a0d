"""The OpenAI request bodies tinygpt accepts, and the errors it answers, in OpenAI's JSON shape.

Bodies are strict (pydantic's strict mode, unknown fields forbidden), as OpenAI's API is: a typo or a value of the
wrong type is an error, not a silent default. OpenAI's fields tinygpt does not implement pass only at their neutral
value (`NEUTRAL_VALUES`): a reply that ignored them would be a silent wrong result.
"""

from typing import Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from tinygpt.decoding.request import INT64_MAX

# OpenAI's request fields that change nothing tinygpt returns: accepted and ignored.
IGNORED_FIELDS = ("user", "metadata", "store", "service_tier", "parallel_tool_calls", "prompt_cache_key")
# OpenAI's fields that would change the reply and tinygpt does not implement: accepted at their neutral value only
# (null or the values listed), as clients send them; any other value is a 400 rather than silently ignored.
NEUTRAL_VALUES = {
    "frequency_penalty": (0,),
    "presence_penalty": (0,),
    "logit_bias": ({},),
    "logprobs": (False,),
    "top_logprobs": (0,),
    "echo": (False,),
    "suffix": ("",),
    "best_of": (1,),
    "response_format": ({"type": "text"},),
    "tools": ([],),
    "tool_choice": ("none", "auto"),
    "functions": ([],),
    "function_call": ("none", "auto"),
    "modalities": (["text"],),
}


# -- request bodies -------------------------------------------------------------------------------------------


class Body(BaseModel):
    """Strict JSON: a field of the wrong type is a 400, not converted ("5" is no number, "false" no boolean), and an
    unknown field (a typo such as max_token) is a 400, as OpenAI answers it."""

    model_config = ConfigDict(strict=True, extra="forbid")


class StreamOptions(Body):
    include_usage: bool = False
    include_obfuscation: bool | None = None  # OpenAI's; there is nothing to obfuscate here


class Sampling(Body):
    """The fields chat and text completions share."""

    model: str
    max_tokens: int | None = Field(None, ge=1, le=INT64_MAX)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0, le=INT64_MAX)  # not OpenAI's: vLLM's extra fields
    min_tokens: int | None = Field(None, ge=0, le=INT64_MAX)
    n: int = 1
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-INT64_MAX - 1, le=INT64_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @model_validator(mode="before")
    @classmethod
    def drop_fields_without_effect(cls, data):
        if not isinstance(data, dict):
            return data
        for name, value in data.items():
            if name in NEUTRAL_VALUES and value is not None and value not in NEUTRAL_VALUES[name]:
                raise PydanticCustomError(
                    "unsupported_value",
                    "{field}: tinygpt does not support it; leave it out (or send null).",
                    {"field": name},
                )
        return {
            name: value for name, value in data.items() if name not in NEUTRAL_VALUES and name not in IGNORED_FIELDS
        }


class Message(Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[dict] | None = None
    name: str | None = None  # OpenAI's participant name; ignored

    @field_validator("content", mode="before")
    @classmethod
    def text_only(cls, content):
        """A string, or a list of text parts ({"type": "text", "text": "..."}): tinygpt reads text only."""
        parts = content if isinstance(content, list) else []
        if any(
            not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str)
            for part in parts
        ):
            raise PydanticCustomError(
                "text_parts", 'each part must be {"type": "text", "text": "..."}: tinygpt reads text only'
            )
        return content


class ChatCompletionBody(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT64_MAX)  # the newer name of max_tokens


class CompletionBody(Sampling):
    prompt: str | list[str]


# -- errors ---------------------------------------------------------------------------------------------------


class APIError(Exception):
    """An error answered in OpenAI's JSON shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def response(self) -> JSONResponse:
        kind = {401: "authentication_error", 404: "not_found_error", 500: "server_error"}.get(
            self.status, "invalid_request_error"
        )
        error = {"message": self.message, "type": kind, "param": self.param, "code": self.code}
        return JSONResponse({"error": error}, status_code=self.status)


def check_json_media_type(request: Request) -> None:
    """The body must come as `Content-Type: application/json`: a web page can post a form or text to any server
    without asking it first (CORS's "simple" requests), but not JSON, so any other type is refused (415)."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type != "application/json":
        raise APIError(
            415,
            f"Send the body as JSON with the header 'Content-Type: application/json' (got {media_type or 'none'!r}).",
            code="unsupported_media_type",
        )


def parse(body: bytes, body_type: type[BaseModel]):
    """A JSON body as `body_type`; a malformed body or a wrong field is one readable 400. A large body takes a
    while to parse: callers run this in the thread pool, off the event loop that streams every reply."""
    try:
        return body_type.model_validate_json(body)
    except ValidationError as error:
        first = error.errors()[0]
        if first["type"] == "json_invalid":
            raise APIError(400, f"The body is not valid JSON: {first['msg']}.", code="invalid_json") from None
        field = ".".join(str(part) for part in first["loc"]) or first.get("ctx", {}).get("field") or "body"
        if first["type"] == "extra_forbidden":
            raise APIError(400, f"Unrecognized request argument supplied: {field}.", param=field) from None
        if first["type"] == "unsupported_value":
            raise APIError(400, f"{first['msg']}", param=field, code="unsupported_value") from None
        raise APIError(400, f"{field}: {first['msg']}.", param=field, code="invalid_value") from None


__all__ = ["APIError", "ChatCompletionBody", "CompletionBody", "check_json_media_type", "parse"]
