"""A model reply split into thinking and the post-think summary."""
from __future__ import annotations

from pydantic import BaseModel, Field

from actions.parser import THINK_CLOSE, THINK_OPEN, split_reply

__all__ = ["THINK_CLOSE", "THINK_OPEN", "ModelReply", "RequestStats", "Usage", "make_reply", "split_thinking"]


class RequestStats(BaseModel):
    """What the client sent for one reply (every request of it: a re-sent one counts too)."""

    bytes: int = 0  # request bodies as sent (HTTP Content-Length)
    requests: int = 0
    images_with_data: int = 0  # images sent with their bytes (in the request that was answered)
    images_by_uuid: int = 0  # images named by uuid alone, held by the server from an earlier request
    resent: int = 0  # requests sent again with every image's data: the server did not hold an image it was named
    uuids_refused: int = 0  # requests sent again without uuids: the server refused them


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int | None = None  # prompt tokens served from the server's prefix cache, when it says
    request: RequestStats | None = None  # set by agent.models.vllm: bytes and images sent


class ModelReply(BaseModel):
    text: str  # raw decoded content
    thinking: str = ""
    summary: str = ""
    truncated: bool = False  # thinking opened but never closed: the reply hit max_tokens, no answer
    finish_reason: str | None = None
    usage: Usage = Field(default_factory=Usage)
    model: str = ""
    latency_ms: float = 0.0
    max_tokens: int | None = None  # the reply limit the request asked for (after any lowering for the session)
    notices: list[str] = Field(default_factory=list)  # what the client changed on its own to get this reply

    @property
    def clamped(self) -> bool:
        """The server stopped the reply short of ``max_tokens`` for lack of room (vLLM >= 0.10 clamps instead of
        refusing when the prompt fits but prompt + max_tokens does not): the reply reserve was not there."""
        used = self.usage.completion_tokens
        return (self.finish_reason == "length" and self.max_tokens is not None and 0 < used < self.max_tokens)


def split_thinking(text: str) -> tuple[str, str, bool]:
    """Return (thinking, summary, truncated). The summary is the text after the LAST end marker."""
    return split_reply(text)


def make_reply(text: str, **fields: object) -> ModelReply:
    thinking, summary, truncated = split_thinking(text)
    return ModelReply(text=text, thinking=thinking, summary=summary, truncated=truncated, **fields)  # type: ignore[arg-type]
