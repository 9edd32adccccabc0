"""A model reply split into thinking and the post-think summary."""
from __future__ import annotations

from pydantic import BaseModel, Field

from actions.parser import THINK_CLOSE, THINK_OPEN, split_reply

__all__ = ["THINK_CLOSE", "THINK_OPEN", "ModelReply", "Usage", "make_reply", "split_thinking"]


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


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
