"""Before an evaluation sends anything: does its reply limit fit the server's context beside the largest prompt?

vLLM refuses a request whose ``max_tokens`` alone exceeds ``max_model_len`` (every sample would fail), and cuts a
reply short without a word when prompt + ``max_tokens`` does not fit. So the limit is checked once against the
costliest sample's prompt (its image by the model's own rule, its text by the pessimistic estimator): lowered to
what is left, with a notice, or the run refused with the fix when not even a minimal reply fits.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from PIL import Image
from pydantic import BaseModel

from agent.evals.screenspot import EvalError, GroundingPrompt
from agent.evals.screenspot_data import Sample
from agent.tokens import (
    GENERATION_PROMPT_TOKENS,
    IMAGE_WRAPPER_TOKENS,
    MESSAGE_OVERHEAD_TOKENS,
    EstimatingCounter,
    image_tokens,
    in_token_limit_for,
)

MIN_REPLY_TOKENS = 256  # below this not even a short answer (let alone any thinking) fits


class ReplyFit(BaseModel):
    max_tokens: int  # what to ask for
    asked: int  # what the user (or the variant's default) asked for
    largest_prompt: int | None = None  # estimated tokens of the costliest sample's prompt
    largest_image: tuple[int, int] | None = None
    notice: str | None = None  # set when max_tokens was lowered


def _image_size(sample: Sample, cache: dict[Path, tuple[int, int]]) -> tuple[int, int]:
    if sample.image not in cache:
        try:
            with Image.open(sample.image) as im:  # reads the header only
                cache[sample.image] = im.size
        except Exception as exc:  # noqa: BLE001 - any decoder error means the same to the user
            raise EvalError(f"{sample.image}: not a readable image ({exc})") from None
    return cache[sample.image]


def prompt_tokens(sample: Sample, prompt: GroundingPrompt, *, model: str, language: str,
                  size: tuple[int, int]) -> int:
    """Estimated prompt tokens of one sample's request (never fewer than the server counts)."""
    instruction = sample.instruction_cn if language == "cn" and sample.instruction_cn else sample.instruction
    messages = prompt.messages(instruction, {"type": "image_url"})
    counter = EstimatingCounter()
    text = sum(counter.count(part["text"] if isinstance(part, dict) else part)
               for m in messages for part in (m["content"] if isinstance(m["content"], list) else [m["content"]])
               if isinstance(part, str) or part.get("type") == "text")
    overhead = MESSAGE_OVERHEAD_TOKENS * (len(messages) + (0 if prompt.system else 1)) + GENERATION_PROMPT_TOKENS
    return image_tokens(*size, in_token_limit_for(model)) + IMAGE_WRAPPER_TOKENS + text + overhead


def fit_max_tokens(samples: Iterable[Sample], prompt: GroundingPrompt, *, max_tokens: int,
                   max_model_len: int | None, model: str, language: str = "en") -> ReplyFit:
    """``max_tokens`` lowered to the room the largest prompt leaves; EvalError when not even a minimal reply fits."""
    if max_model_len is None:  # the server does not say: nothing to check against
        return ReplyFit(max_tokens=max_tokens, asked=max_tokens)
    sizes: dict[Path, tuple[int, int]] = {}
    largest, image = 0, (0, 0)
    for sample in samples:
        try:
            size = _image_size(sample, sizes)
        except EvalError:
            continue  # an unreadable image is that sample's own error (recorded when it is evaluated)
        tokens = prompt_tokens(sample, prompt, model=model, language=language, size=size)
        if tokens > largest:
            largest, image = tokens, size
    room = max_model_len - largest
    fit = ReplyFit(max_tokens=max_tokens, asked=max_tokens, largest_prompt=largest, largest_image=image)
    if max_tokens <= room:
        return fit
    where = f"the largest prompt (a {image[0]}x{image[1]} image) takes ~{largest} tokens"
    if room < MIN_REPLY_TOKENS:
        raise EvalError(f"the server's max_model_len is {max_model_len} and {where}, which leaves "
                        f"{max(room, 0)} tokens for a reply (at least {MIN_REPLY_TOKENS} are needed): restart vLLM "
                        f"with --max-model-len {largest + max_tokens} or more (kimi-cua serve --max-model-len N), "
                        "or select samples with smaller images")
    fit.max_tokens = room
    fit.notice = (f"notice: lowering --max-tokens from {max_tokens} to {room}: the server's max_model_len is "
                  f"{max_model_len} and {where}")
    return fit
