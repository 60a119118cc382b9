"""The OpenAI chat-completions wire format: request validation and response objects.

Requests are validated with pydantic; every problem becomes an ``APIError`` whose message names the
field (``messages.0.content.1.image_url.url``) and what to send instead. Unknown top-level fields
are ignored, as OpenAI-compatible servers commonly do, so clients that send extra options work.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from omnifuse.data.openai_messages import (  # noqa: F401 (the message schema, shared with the data converter)
    AudioContent,
    ChatMessage,
    ContentPart,
    ImageContent,
    ImageURL,
    InputAudio,
    TextContent,
    validation_problem,
)
from omnifuse.generation.engine import SEED_MAX, SEED_MIN


class APIError(Exception):
    """An error returned to the client as ``{"error": {...}}`` with an HTTP status."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type_: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or _ERROR_TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_overloaded",
    500: "server_error",
}


class AudioOutput(BaseModel):
    voice: str = "en-us"
    format: Literal["wav"] = "wav"


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    # Python's json reads NaN and Infinity: they are refused here, with the field named, before a
    # request can reach a batch (a NaN temperature would turn every probability of its row into NaN).
    temperature: float = Field(default=1.0, ge=0.0, le=2.0, allow_inf_nan=False)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, allow_inf_nan=False)
    n: Literal[1] = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    audio: AudioOutput | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop must be up to 4 non-empty strings")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int | None) -> int | None:
        if v is not None and not SEED_MIN <= v <= SEED_MAX:
            raise ValueError(f"seed must be a 64-bit signed integer, from {SEED_MIN} to {SEED_MAX}")
        return v

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def wants_audio(self) -> bool:
        return "audio" in (self.modalities or [])

    def text_chars(self) -> int:
        """Characters of text in all messages: known before anything is tokenized."""
        total = 0
        for m in self.messages:
            if isinstance(m.content, str):
                total += len(m.content)
            elif m.content is not None:
                total += sum(len(p.text) for p in m.content if isinstance(p, TextContent))
        return total


def parse_request(body: bytes) -> ChatRequest:
    try:
        raw = json.loads(body)
    except RecursionError:
        raise APIError(400, "the request body is not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integer literals
        raise APIError(400, f"the request body is not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return ChatRequest.model_validate(raw)
    except ValidationError as exc:
        where, message = validation_problem(exc)
        raise APIError(400, message, param=where or None) from None


# ------------------------------------------------------------------ responses
def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(
    cid: str, model: str, text: str, finish: str, use: dict, audio: dict | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if audio is not None:
        message["audio"] = audio
    return {
        "id": cid,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": use,
    }


def chunk(cid: str, model: str, delta: dict, finish: str | None = None, use: dict | None = None) -> str:
    obj: dict[str, Any] = {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [] if use is not None else [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if use is not None:
        obj["usage"] = use
    return f"data: {json.dumps(obj)}\n\n"
