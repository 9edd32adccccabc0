"""Client for vLLM's OpenAI-compatible server (or anything that speaks the same protocol).

Transport is the ``openai`` SDK: HTTP, the connection pool, credentials, the base URL and the typed status errors
(``openai.BadRequestError`` ...). A caller may hand in an ``openai.OpenAI`` it configured itself
(``VLLMClient(client=openai.OpenAI(base_url=..., api_key=...))``). On top of it this module:

- classifies every refusal vLLM gives, 0.9.1 through 0.32 (REFERENCE section 2), into typed errors carrying the
  numbers of the message: ``ContextLengthExceeded`` (limit, prompt tokens, ...), ``TooManyImages``,
  ``MaxTokensTooLarge`` (handled here: max_tokens is lowered for the session, with a ``Notice``, and the request
  retried), ``EncoderCacheTooSmall`` (a configuration error naming the fix, never retried); errors that arrive
  inside a 200 event stream are classified by their ``code`` (4xx a refusal, 5xx a transient fault);
- reads every answer body itself, in a worker thread, so a whole reply has one deadline (``timeout``; a server
  that trickles bytes or sends ``: keep-alive`` comments forever ends there) and one size cap for reasoning and
  content together; a stream that ends before its finish reason is never taken for a whole reply;
- retries transient faults a bounded number of times, with an event per retry for a live display.

Retried: broken or refused connections once the server was reached, timeouts and missed deadlines, HTTP
408/429/5xx (``Retry-After`` is respected), in-stream errors with a 5xx or no code, streams cut before their end,
bodies that are not the JSON the protocol promises, replies over the size cap, and empty replies. Not retried: a
server never reached (fails within the connect timeout) and 4xx refusals.

Why the SDK's own retries and stream decoding are not used (measured with openai 3.57.0, see the session report):
its retries do not cover faults after the response headers (a cut stream, an in-stream error, a malformed or
empty body), report no event per retry, and retry a server that was never reached (3.6 s for a refused port with
max_retries=3, where this client fails at once); its stream decoder returned a stream cut by the server as if it
were complete (32 characters, no error), and buffered one 150 MB event whole (+287 MB of memory) before the caller
saw a byte. The SDK is therefore used with ``max_retries=0`` and its raw streaming response.
"""
from __future__ import annotations

import base64
import email.utils
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import TYPE_CHECKING, Any, Protocol

import httpx
from pydantic import BaseModel, ValidationError

from agent.models.image_cache import (RESEND_CHOICES, Prepared, ServerImages, is_cache_miss, prepare, refuses_uuids,
                                      server_images)
from agent.reply import THINK_CLOSE, THINK_OPEN, ModelReply, RequestStats, Usage, make_reply

if TYPE_CHECKING:
    import openai

DEFAULT_BASE_URL = "http://localhost:8000/v1"
log = logging.getLogger(__name__)


def _sdk() -> ModuleType:
    """The ``openai`` SDK, imported on first use: it takes seconds to import, and most commands never talk to a
    model server."""
    import openai

    return openai


class ServedModel(BaseModel):
    id: str
    max_model_len: int | None = None
    owned_by: str | None = None  # "vllm" on vLLM


class VariantDefaults(BaseModel):
    temperature: float
    max_tokens: int
    in_token_limit: int


# Thinking models reason before acting; 8K covers an agent step's thinking (upstream allows 32K for hard problems).
VARIANTS: dict[str, VariantDefaults] = {
    "thinking-2506": VariantDefaults(temperature=0.8, max_tokens=8192, in_token_limit=16384),
    "thinking": VariantDefaults(temperature=0.6, max_tokens=8192, in_token_limit=4096),
    "instruct": VariantDefaults(temperature=0.2, max_tokens=1024, in_token_limit=4096),
}


def variant_of(model_name: str) -> str:
    """Guess the Kimi-VL variant from a served model name (defaults to thinking-2506)."""
    name = model_name.lower()
    if "instruct" in name:
        return "instruct"
    if "thinking" in name and "2506" not in name:
        return "thinking"
    return "thinking-2506"


# ---- errors ------------------------------------------------------------------------------------------------
class ServerError(RuntimeError):
    """The model server failed; the message says what happened and what to do."""


class ServerUnreachable(ServerError):
    pass


class ServerTimeout(ServerError):
    pass


class EmptyReply(ServerError):
    """The server answered, every time, with no text at all."""


class RequestRefused(ServerError):
    """A 4xx answer (or a 4xx error inside a 200 event stream): asking again unchanged would not help."""

    def __init__(self, message: str, *, status: int, server_message: str) -> None:
        super().__init__(message)
        self.status = status
        self.server_message = server_message


class Overflow(BaseModel):
    """The numbers a context-length refusal carries (None where its wording has none)."""

    wording: str  # which of vLLM's wordings (see ``parse_overflow``)
    limit: int | None = None  # max_model_len
    prompt_tokens: int | None = None  # the prompt as the server counted it
    prompt_at_least: bool = False  # the server stopped counting: the prompt has at least prompt_tokens
    completion_tokens: int | None = None  # the max_tokens the request asked for, when the wording says
    prompt_chars: int | None = None  # huge-text wording: characters in the prompt ...
    max_prompt_chars: int | None = None  # ... and the most the server accepts for max_input_tokens
    max_input_tokens: int | None = None


class NotAnOpenAIServer(RequestRefused):
    """The URL answers HTTP, but not as an OpenAI-compatible API (a web page, a 404 for the API's routes):
    a wrong port or a base URL without /v1."""


_MODEL_MISSING_RE = re.compile(r"\bmodel\b.*\b(does not exist|not found|unknown|not served)|unknown model|no such model",
                               re.IGNORECASE | re.DOTALL)
_HTML_RE = re.compile(r"^\s*<(!doctype\s+html|html|head|body|\?xml)", re.IGNORECASE)


def not_openai(where: str, status: int, message: str) -> NotAnOpenAIServer:
    html = bool(_HTML_RE.match(message))
    what = "a web page" if html else (_PARAM_SUFFIX_RE.sub("", message).strip().splitlines() or [""])[0][:80]
    hint = "" if where.rstrip("/").endswith("/v1") else f" (did you mean {where.rstrip('/')}/v1?)"
    return NotAnOpenAIServer(f"{where} is not an OpenAI-compatible server (HTTP {status}: {what}); check --base-url "
                             f"(port, /v1){hint}", status=status, server_message=message)


class ContextLengthExceeded(RequestRefused):
    """The prompt (or prompt + max_tokens, on servers that refuse that) does not fit ``max_model_len``."""

    def __init__(self, message: str, *, status: int, server_message: str, limit: int | None,
                 requested: int | None, overflow: Overflow | None = None) -> None:
        super().__init__(message, status=status, server_message=server_message)
        self.limit = limit
        self.requested = requested  # tokens the request needs: prompt (+ completion where the server added it)
        self.overflow = overflow or Overflow(wording="unknown", limit=limit)

    @property
    def prompt_tokens(self) -> int | None:
        return self.overflow.prompt_tokens


class TooManyImages(RequestRefused):
    def __init__(self, message: str, *, status: int, server_message: str, limit: int | None) -> None:
        super().__init__(message, status=status, server_message=server_message)
        self.limit = limit


class MaxTokensTooLarge(RequestRefused):
    """``max_tokens`` alone is more than ``max_model_len``; ``VLLMClient.complete`` lowers it and asks again."""

    def __init__(self, message: str, *, status: int, server_message: str, max_tokens: int | None,
                 max_model_len: int) -> None:
        super().__init__(message, status=status, server_message=server_message)
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len


class EncoderCacheTooSmall(RequestRefused):
    """An image has more tokens than vLLM's encoder cache holds: a server configuration error, never retried."""

    def __init__(self, message: str, *, status: int, server_message: str, item_tokens: int,
                 cache_size: int) -> None:
        super().__init__(message, status=status, server_message=server_message)
        self.item_tokens = item_tokens
        self.cache_size = cache_size


class ModelClient(Protocol):
    def complete(self, messages: list[dict[str, Any]], *, temperature: float | None = None,
                 max_tokens: int | None = None, stream: bool = False,
                 on_delta: Callable[[str], None] | None = None,
                 extra: dict[str, Any] | None = None) -> ModelReply: ...


def image_part(data: bytes, mime: str = "image/png") -> dict[str, Any]:
    """An OpenAI ``image_url`` content part carrying the encoded bytes losslessly as a data URL."""
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


class RetryEvent(BaseModel):
    """One transient fault about to be retried (for a live display; also logged)."""

    attempt: int  # 1 = the first retry
    of: int  # retries allowed
    wait_s: float
    error: str


class Notice(BaseModel):
    """Something the client changed for the rest of the session on its own (shown live, recorded with the step)."""

    kind: str  # "max_tokens_lowered"
    message: str


# ---- classifying vLLM's refusals ------------------------------------------------------------------------------
_CTX = r"maximum context length is (?P<limit>\d+) tokens\.?\s+However,\s+"
# Every overflow wording from vLLM 0.9.1 to 0.32, most specific first.
_OVERFLOW_FORMS: list[tuple[str, re.Pattern[str]]] = [
    # 0.32, text fits but images push the prompt over (the usual case for a screenshot agent)
    ("input-length", re.compile(r"Input length \((?P<prompt>\d+)\) exceeds model's maximum context length "
                                r"\((?P<limit>\d+)\)")),
    # 0.32, huge text (refused before tokenizing)
    ("characters", re.compile(_CTX + r"your prompt contains (?P<chars>\d+) characters \(more than "
                              r"(?P<max_chars>\d+) characters, which is the upper bound for (?P<max_input>\d+) "
                              r"input tokens\)")),
    # 0.1x-0.2x, prompt + max_tokens over the limit
    ("output-and-input", re.compile(_CTX + r"you requested (?P<completion>\d+) output tokens and your prompt "
                                    r"contains (?P<at_least>at least )?(?P<prompt>\d+) input tokens")),
    # 0.32, the prompt alone is over the limit
    ("input-tokens", re.compile(_CTX + r"your prompt contains (?P<at_least>at least )?(?P<prompt>\d+) input "
                                r"tokens")),
    # 0.9, prompt + max_tokens over the limit
    ("requested", re.compile(_CTX + r"you requested (?P<total>\d+) tokens \((?P<prompt>\d+) in the messages, "
                             r"(?P<completion>\d+) in the completion\)")),
    # 0.9, no max_tokens given
    ("requested-messages", re.compile(_CTX + r"you requested (?P<prompt>\d+) tokens in the messages")),
    # 0.10-0.11, prompt + max_tokens over the limit
    ("too-large", re.compile(r"is too large: (?P<completion>\d+)\.\s+This model's maximum context length is "
                             r"(?P<limit>\d+) tokens and your request has (?P<prompt>\d+) input tokens")),
    # 0.10-0.11, the prompt alone
    ("request-has", re.compile(_CTX + r"your request has (?P<prompt>\d+) input tokens")),
    # 0.9 V1 engine, prompt with images over the limit
    ("decoder-prompt", re.compile(r"prompt \(length (?P<prompt>\d+)\) is longer than the maximum model length of "
                                  r"(?P<limit>\d+)")),
    # any other wording that names the limit
    ("limit-only", re.compile(r"maximum context length is (?P<limit>\d+) tokens")),
]
_MAX_TOKENS_RE = re.compile(r"(?P<param>\w*tokens)=(?P<max_tokens>\d+) cannot be greater than "
                            r"\w+ ?= ?(?P<limit>\d+)")
_IMAGES_RES = (
    re.compile(r"At most (?P<limit>\d+) image\(s\) may be provided", re.I),  # 0.9 .. 0.32
    re.compile(r"""(?:image=|"image":\s*)(?P<limit>\d+).{0,80}--limit-mm-per-prompt`?, but (?:passed|found) """
               r"(?P<count>\d+) image items", re.S),  # 0.6 .. 0.9 V0
)
_ENCODER_CACHE_RE = re.compile(r"contains a\(n\) (?P<modality>\w+) item with (?P<tokens>\d+) embedding tokens, "
                               r"which exceeds the pre-allocated encoder cache size (?P<cache>\d+)")
_PARAM_SUFFIX_RE = re.compile(r"\s*\(parameter=[^()]*, value=[^()]*\)\s*$")
_NOT_RETRYABLE_5XX = {501, 505}


def parse_overflow(message: str) -> Overflow | None:
    """The numbers of a context-length refusal in any of vLLM's wordings (0.9.1 .. 0.32), or None."""
    for wording, pattern in _OVERFLOW_FORMS:
        if m := pattern.search(message):
            g = {k: int(v) for k, v in m.groupdict().items() if v is not None and v.isdigit()}
            return Overflow(wording=wording, limit=g.get("limit"), prompt_tokens=g.get("prompt"),
                            prompt_at_least=m.groupdict().get("at_least") is not None,
                            completion_tokens=g.get("completion"), prompt_chars=g.get("chars"),
                            max_prompt_chars=g.get("max_chars"), max_input_tokens=g.get("max_input"))
    return None


def image_limit_of(message: str) -> int | None:
    """The images-per-prompt limit named by a refusal, or None."""
    for pattern in _IMAGES_RES:
        if m := pattern.search(message):
            return int(m.group("limit"))
    return None


def classify_refusal(status: int, message: str, where: str) -> RequestRefused:
    """The typed error for a 4xx answer (or a 4xx error inside an event stream) from the server at ``where``."""
    shown = _PARAM_SUFFIX_RE.sub("", message).strip()
    if _HTML_RE.match(message):
        return not_openai(where, status, message)
    if m := _ENCODER_CACHE_RE.search(message):
        tokens, cache = int(m.group("tokens")), int(m.group("cache"))
        return EncoderCacheTooSmall(
            f"vLLM at {where} cannot take an {m.group('modality')} of {tokens} tokens: its encoder cache holds "
            f"{cache}; restart vLLM with --max-num-batched-tokens >= {tokens}, or send smaller screenshots",
            status=status, server_message=message, item_tokens=tokens, cache_size=cache)
    if m := _MAX_TOKENS_RE.search(message):
        return MaxTokensTooLarge(
            f"vLLM at {where} refused {m.group('param')}={m.group('max_tokens')}: more than its "
            f"max_model_len={m.group('limit')}; lower --max-tokens", status=status, server_message=message,
            max_tokens=int(m.group("max_tokens")), max_model_len=int(m.group("limit")))
    if (overflow := parse_overflow(message)) is not None:
        limit, prompt, completion = overflow.limit, overflow.prompt_tokens, overflow.completion_tokens
        if limit is not None and completion is not None and completion >= limit:
            # Older wordings of "max_tokens alone does not fit": the same remedy as MaxTokensTooLarge.
            return MaxTokensTooLarge(
                f"vLLM at {where} refused max_tokens={completion}: not less than its max_model_len={limit}; "
                "lower --max-tokens", status=status, server_message=message, max_tokens=completion,
                max_model_len=limit)
        fix = "lower --max-context / --max-images, or restart vLLM with a larger --max-model-len"
        if overflow.prompt_chars is not None:
            what = (f"the prompt has {overflow.prompt_chars:,} characters, more than the "
                    f"{overflow.max_prompt_chars:,} it accepts for {overflow.max_input_tokens:,} input tokens")
        elif prompt is not None and completion is not None:
            what = f"{prompt} prompt tokens + max_tokens={completion} exceed max_model_len={limit}"
            fix = "lower --max-tokens / --max-context, or restart vLLM with a larger --max-model-len"
        elif prompt is not None:
            what = f"the prompt needs {'at least ' if overflow.prompt_at_least else ''}{prompt} tokens"
            what += f", more than max_model_len={limit}" if limit is not None else ""
        else:
            what = f"the request does not fit max_model_len={limit}"
        requested = (prompt + completion) if prompt is not None and completion is not None else prompt
        return ContextLengthExceeded(f"vLLM at {where} refused the request: {what}; {fix}", status=status,
                                     server_message=message, limit=limit, requested=requested, overflow=overflow)
    if (limit := image_limit_of(message)) is not None:
        return TooManyImages(
            f"vLLM at {where} refused the request: more images than --limit-mm-per-prompt={limit}; "
            "lower --max-images or restart vLLM with a larger limit", status=status, server_message=message,
            limit=limit)
    if status == 404:
        if _MODEL_MISSING_RE.search(message):
            return RequestRefused(f"{where} does not serve that model ({shown[:300]}); check --model",
                                  status=status, server_message=message)
        return not_openai(where, status, message)
    if status == 405:
        return not_openai(where, status, message)
    if status in (401, 403):
        return RequestRefused(f"{where} rejected the credentials (HTTP {status}): pass --api-key",
                              status=status, server_message=message)
    return RequestRefused(f"the model server at {where} refused the request (HTTP {status}): {shown[:500]}",
                          status=status, server_message=message)


def _error_message(body: Any) -> str:
    """The message of an error body: nested ``{"error": {"message": ...}}`` (vLLM 0.32), flat (0.9) or text."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            for key in ("message", "detail"):
                if key in inner:
                    return str(inner[key])
            return json.dumps(inner)[:500]
        return str(inner)[:500]
    if isinstance(body, str):
        return body.strip()[:2000]
    return "" if body is None else str(body)[:500]


def _error_code(error: Any) -> int | None:
    if not isinstance(error, dict):
        return None
    for value in (error.get("code"), error.get("status_code")):
        try:
            return int(value)
        except (TypeError, ValueError):
            continue
    return None


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or an HTTP date); None when absent/invalid."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _reasoning_of(message: dict[str, Any]) -> str | None:
    """Thinking that a server's reasoning parser moved out of ``content`` (vLLM 0.32: reasoning; older:
    reasoning_content)."""
    value = message.get("reasoning") or message.get("reasoning_content")
    return value if isinstance(value, str) and value else None


def _usage(raw: Any) -> Usage:
    try:
        usage = Usage.model_validate(raw) if isinstance(raw, dict) else Usage()
    except ValidationError:
        return Usage()
    usage.request = None  # what the client sent is the client's to say, never the server's
    details = raw.get("prompt_tokens_details") if isinstance(raw, dict) else None
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    usage.cached_tokens = cached if isinstance(cached, int) and not isinstance(cached, bool) else None
    return usage


def _count_images(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages if isinstance(m.get("content"), list)
               for p in m["content"] if isinstance(p, dict) and p.get("type") == "image_url")


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def _is(exc: BaseException | None, *names: str) -> bool:
    """Whether ``exc`` is an instance of an HTTP-library class with one of these names (httpx and httpx2 alike:
    the SDK moved from one to the other)."""
    return exc is not None and any(cls.__name__ in names for cls in type(exc).__mro__)


# ---- the client ------------------------------------------------------------------------------------------------
class VLLMClient:
    """Talks to ``/v1/models`` and ``/v1/chat/completions``; retries transient faults a bounded number of times.

    ``timeout`` is a deadline for a whole reply (headers and body), not per read. ``max_reply_chars`` caps
    reasoning and content together (default: 32 characters per token of ``max_tokens``).
    """

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        *,
        client: openai.OpenAI | None = None,
        timeout: float = 300.0,
        connect_timeout: float = 2.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_retry_after: float = 120.0,
        max_reply_chars: int | None = None,
        variant: str | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        on_notice: Callable[[Notice], None] | None = None,
        resend_images: str = "auto",
    ) -> None:
        sdk = _sdk()
        if resend_images not in RESEND_CHOICES:
            raise ValueError(f"resend_images={resend_images!r}: expected one of {', '.join(RESEND_CHOICES)}")
        if client is not None:
            if base_url is not None and base_url.rstrip("/") != str(client.base_url).rstrip("/"):
                raise ValueError(f"base_url={base_url!r} differs from the given client's {str(client.base_url)!r}; "
                                 "pass one of them")
            # Our retries cover faults the SDK's do not (after the headers); two layers would multiply attempts.
            self._openai = client.with_options(max_retries=0)
            self._owns_client = False
        else:
            self._openai = sdk.OpenAI(
                base_url=(base_url or DEFAULT_BASE_URL).rstrip("/"),
                # vLLM without --api-key ignores the header; OPENAI_API_KEY is deliberately not read (it is meant
                # for another server and would be sent to this one).
                api_key=api_key or "EMPTY",
                timeout=httpx.Timeout(timeout, connect=connect_timeout), max_retries=0)
            self._owns_client = True
        self.base_url = str(self._openai.base_url).rstrip("/")
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.max_reply_chars = max_reply_chars
        self.on_retry = on_retry
        self.on_notice = on_notice
        self._model = model
        self._variant = variant
        self._served: list[ServedModel] | None = None
        self._reached = False  # any HTTP answer seen: later connection faults are outages, not misconfiguration
        self.max_tokens_cap: int | None = None  # learned from a MaxTokensTooLarge refusal, for the session
        # "auto": each image's bytes go to the server once, later requests name it by uuid (agent/models/image_cache);
        # "always": every request carries every image's data, without uuids.
        self.resend_images = resend_images

    # ---- discovery -------------------------------------------------------------------------------
    def models(self) -> list[ServedModel]:
        if self._served is None:
            def attempt() -> list[ServedModel]:
                pump = _Pump(self._openai.models.with_streaming_response.list,
                             deadline=time.monotonic() + self.timeout, byte_cap=8_000_000)
                try:
                    body = self._json(pump.read_all(self), "GET /models")
                finally:
                    pump.close()
                data = body.get("data") if isinstance(body, dict) else None
                if not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m for m in data):
                    raise _Transient(f"{self.base_url}/models answered without a model list: {_short(body)}")
                return [ServedModel(id=str(m["id"]), max_model_len=m.get("max_model_len")
                                    if isinstance(m.get("max_model_len"), int) else None,
                                    owned_by=m["owned_by"] if isinstance(m.get("owned_by"), str) else None)
                        for m in data]
            self._served = self._with_retries(attempt)
        return self._served

    @property
    def model(self) -> str:
        if self._model is None:
            served = self.models()
            if len(served) != 1:
                names = ", ".join(m.id for m in served) or "none"
                raise ServerError(f"{self.base_url} serves {len(served)} models ({names}); choose one with --model")
            self._model = served[0].id
        return self._model

    @property
    def variant(self) -> str:
        return self._variant or variant_of(self.model)

    @property
    def defaults(self) -> VariantDefaults:
        return VARIANTS[self.variant]

    def max_model_len(self) -> int | None:
        for m in self.models():
            if m.id == self.model:
                return m.max_model_len
        return None

    # ---- completion ------------------------------------------------------------------------------
    def complete(self, messages: list[dict[str, Any]], *, temperature: float | None = None,
                 max_tokens: int | None = None, stream: bool = False,
                 on_delta: Callable[[str], None] | None = None,
                 extra: dict[str, Any] | None = None) -> ModelReply:
        wanted = self.defaults.max_tokens if max_tokens is None else max_tokens
        notices: list[str] = []
        started = time.perf_counter()
        stats = RequestStats()
        for lowered in (False, True):
            limit = wanted if self.max_tokens_cap is None else min(wanted, self.max_tokens_cap)
            streamed = stream or on_delta is not None

            def make_request(sent: list[dict[str, Any]], limit: int = limit,
                             streamed: bool = streamed) -> dict[str, Any]:
                request = {
                    "model": self.model,
                    "messages": sent,
                    "temperature": self.defaults.temperature if temperature is None else temperature,
                    "max_tokens": limit,
                    # Keep the thinking markers: they are special tokens that vLLM would otherwise strip.
                    "extra_body": {"skip_special_tokens": False, **(extra or {})},
                }
                if streamed:
                    request["stream"] = True
                    request["stream_options"] = {"include_usage": True}
                return request

            try:
                text, usage, finish = self._complete_images(messages, make_request, streamed, on_delta, stats)
                break
            except MaxTokensTooLarge as refusal:
                if lowered:
                    raise
                notices.append(self._lower_max_tokens(refusal, limit))
        usage.request = stats
        return make_reply(text, usage=usage, finish_reason=finish, model=self.model, max_tokens=limit,
                          notices=notices, latency_ms=(time.perf_counter() - started) * 1000)

    # ---- images by uuid --------------------------------------------------------------------------
    def image_state(self) -> ServerImages | None:
        """What this client's server is known to support and hold; None with ``resend_images="always"``."""
        return None if self.resend_images == "always" else server_images(self.base_url)

    def _images_mode(self, state: ServerImages) -> str:
        """``uuid`` for a vLLM (its ``/v1/models`` says ``owned_by: vllm``), ``plain`` for anything else. Decided from
        the model list the client already has (no request of its own); ``plain`` until it has one."""
        if state.mode is not None:
            return state.mode
        if self._served is None:
            return "plain"
        state.mode = "uuid" if any(m.owned_by == "vllm" for m in self._served) else "plain"
        log.info("%s: images %s", self.base_url,
                 "named by uuid once sent" if state.mode == "uuid" else "always sent with their data")
        return state.mode

    def _complete_images(self, messages: list[dict[str, Any]],
                         make_request: Callable[[list[dict[str, Any]]], dict[str, Any]], streamed: bool,
                         on_delta: Callable[[str], None] | None, stats: RequestStats) -> tuple[str, Usage, str | None]:
        """Send ``messages`` with each image the server holds named by uuid alone; when the server does not hold one
        (restarted, evicted) send the request again once with every image's data; when it refuses uuids altogether
        send it again without them and remember that for the server."""
        state = self.image_state()
        if state is not None and state.mode is None:
            _ = self.model  # discovers the served models (and who serves them) when the name was not given
        how = "plain" if state is None else ("uuid" if self._images_mode(state) == "uuid" else "plain")
        without_uuids = False
        while True:
            prepared: Prepared = prepare(messages, state, how=how)  # type: ignore[arg-type]
            request = make_request(prepared.messages)
            try:
                result = self._with_retries(
                    lambda: self._complete_once(request, streamed, on_delta, stats))
            except RequestRefused as refusal:
                if state is None or how == "plain" or type(refusal) is not RequestRefused \
                        or not 400 <= refusal.status < 500 or refusal.status in (401, 403, 404, 405):
                    raise
                if prepared.by_uuid and is_cache_miss(refusal.server_message):
                    state.forget_all()
                    with state.lock:
                        state.resent += 1
                    stats.resent += 1
                    log.warning("%s no longer holds an image named by uuid (restarted, or evicted from its cache): "
                                "sending the request again with every image's data", self.base_url)
                    how = "data"
                    continue
                if not refuses_uuids(refusal.server_message, named=bool(prepared.by_uuid)):
                    raise
                # The server refused the uuids themselves (or an image given by uuid alone): once more without them.
                stats.uuids_refused += 1
                without_uuids = True
                how = "plain"
                log.warning("%s refused a request with image uuids (%s); sending it again without them",
                            self.base_url, _short(refusal.server_message, 200))
                continue
            if state is not None:
                if without_uuids:
                    with state.lock:
                        state.mode = "plain"
                        state.refused_uuids += 1
                    state.forget_all()
                elif how != "plain":
                    state.remember(prepared.with_data)
            stats.images_with_data = len(prepared.with_data) if how != "plain" else _count_images(messages)
            stats.images_by_uuid = len(prepared.by_uuid)
            return result

    def _lower_max_tokens(self, refusal: MaxTokensTooLarge, asked: int) -> str:
        """Learn the server's limit for the session; returns the notice (also sent to ``on_notice`` and logged)."""
        self.max_tokens_cap = max(1, refusal.max_model_len // 2)
        message = (f"vLLM at {self.base_url} has max_model_len={refusal.max_model_len} and refused "
                   f"max_tokens={asked}; using max_tokens={self.max_tokens_cap} for the rest of this session "
                   "(pass --max-tokens to choose)")
        log.warning("%s", message)
        if self.on_notice is not None:
            self.on_notice(Notice(kind="max_tokens_lowered", message=message))
        return message

    def _reply_cap(self, max_tokens: Any) -> int:
        if self.max_reply_chars is not None:
            return self.max_reply_chars
        # A token decodes to a few characters; 32 per token is far beyond any real tokenizer.
        return 32 * max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 4_000_000

    def _complete_once(self, request: dict[str, Any], streamed: bool,
                       on_delta: Callable[[str], None] | None,
                       stats: RequestStats | None = None) -> tuple[str, Usage, str | None]:
        cap = self._reply_cap(request.get("max_tokens"))

        def sent(nbytes: int) -> None:
            if stats is not None:
                stats.requests += 1
                stats.bytes += nbytes

        # Raw bytes: SSE framing costs a few hundred bytes per event, JSON escaping up to 6 bytes per character.
        pump = _Pump(lambda: self._openai.chat.completions.with_streaming_response.create(**request),
                     deadline=time.monotonic() + self.timeout, byte_cap=64 * cap + 1_000_000, on_request=sent)
        try:
            content_type = pump.open(self)
            if not streamed or "text/event-stream" not in (content_type or "text/event-stream"):
                # Not streamed, or a server that ignores "stream": true and answers with one JSON body.
                text, usage, finish = self._completion(self._json(pump.read_all(self), "POST /chat/completions"),
                                                       cap, request.get("max_tokens"))
                if streamed and on_delta:
                    on_delta(text)
                return text, usage, finish
            return self._read_stream(pump, cap, request.get("max_tokens"), on_delta)
        finally:
            pump.close()

    def _completion(self, data: Any, cap: int, max_tokens: Any) -> tuple[str, Usage, str | None]:
        """Text, usage and finish reason of a whole (non-streamed) chat completion."""
        if isinstance(data, dict) and (data.get("object") == "error" or "error" in data):
            self._raise_error_event(data, where="in its answer")
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            reasoning = _reasoning_of(choice["message"])
        except (KeyError, IndexError, TypeError, AttributeError):
            raise _Transient(f"{self.base_url} answered without choices[0].message: {_short(data, 300)}") from None
        if not isinstance(text, str):
            raise _Transient(f"{self.base_url} answered with non-text content: {_short(text)}")
        if len(text) + len(reasoning or "") > cap:
            raise self._too_large(cap, max_tokens)
        if reasoning:  # a server with a reasoning parser split the thinking off: put the markers back
            text = f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{text}"
        finish = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
        if not text.strip():
            raise _Empty(finish)
        return text, _usage(data.get("usage")), finish

    def _too_large(self, cap: int, max_tokens: Any) -> "ReplyTooLarge":
        return ReplyTooLarge(f"{self.base_url} sent more than {cap:,} characters of reasoning and content for "
                             f"max_tokens={max_tokens}; the server is not honouring max_tokens: check it")

    def _raise_error_event(self, event: dict[str, Any], *, where: str) -> None:
        """An error object inside a 200 answer: a 4xx code is a refusal (classified), anything else transient."""
        error = event.get("error", event)
        message = _error_message(event)
        code = _error_code(error if isinstance(error, dict) else event)
        if code is not None and 400 <= code < 500:
            raise classify_refusal(code, message, self.base_url)
        raise _Transient(f"{self.base_url} reported an error {where}"
                         f"{f' (code {code})' if code is not None else ''}: {_short(message, 300)}")

    def _read_stream(self, pump: "_Pump", cap: int, max_tokens: Any,
                     on_delta: Callable[[str], None] | None) -> tuple[str, Usage, str | None]:
        parts: list[str] = []
        reasoning_parts: list[str] = []
        size = 0
        usage, finish, done = Usage(), None, False
        for line in pump.lines(self):
            if not line.startswith("data:"):
                continue  # SSE comments, event names, keep-alives (the deadline bounds how long they may go on)
            payload = line[5:].strip()
            if payload == "[DONE]":
                done = True
                break
            try:
                chunk = json.loads(payload)
            except ValueError:
                raise _Transient(f"{self.base_url} sent a malformed stream chunk: {_short(payload)}") from None
            if not isinstance(chunk, dict):
                raise _Transient(f"{self.base_url} sent a stream chunk that is not an object: {_short(payload)}")
            if chunk.get("object") == "error" or "error" in chunk:
                self._raise_error_event(chunk, where="mid-stream")
            if chunk.get("usage"):
                usage = _usage(chunk["usage"])
            choices = chunk.get("choices")
            for choice in choices if isinstance(choices, list) else []:
                if not isinstance(choice, dict):
                    continue
                delta = choice.get("delta")
                thought = _reasoning_of(delta) if isinstance(delta, dict) else None
                text = delta.get("content") if isinstance(delta, dict) else None
                text = text if isinstance(text, str) else ""
                size += len(thought or "") + len(text)
                if size > cap:
                    raise self._too_large(cap, max_tokens)
                if thought:
                    if not reasoning_parts and on_delta:
                        on_delta(THINK_OPEN)
                    reasoning_parts.append(thought)
                    if on_delta:
                        on_delta(thought)
                if text:
                    if reasoning_parts and not parts and on_delta:
                        on_delta(THINK_CLOSE)
                    parts.append(text)
                    if on_delta:
                        on_delta(text)
                if isinstance(choice.get("finish_reason"), str):
                    finish = choice["finish_reason"]
        # A stream that reached its finish_reason is complete even if the closing [DONE] was lost.
        if not done and finish is None:
            raise _Transient(f"the stream from {self.base_url} ended before it finished (after {size} characters)")
        text = "".join(parts)
        if reasoning_parts:  # a server with a reasoning parser streamed the thinking apart: put the markers back
            closing = THINK_CLOSE if text or finish != "length" else ""
            text = f"{THINK_OPEN}{''.join(reasoning_parts)}{closing}{text}"
        if not text.strip():
            raise _Empty(finish)
        return text, usage, finish

    # ---- transport -------------------------------------------------------------------------------
    def _json(self, raw: bytes, what: str) -> Any:
        try:
            return json.loads(raw)
        except ValueError:
            text = raw.decode("utf-8", "replace")
            if what == "GET /models" and _HTML_RE.match(text):  # a web page for the model list: a wrong URL
                raise not_openai(self.base_url, 200, text) from None
            raise _Transient(f"{self.base_url} answered {what} with something that is not JSON: "
                             f"{_short(raw.decode('utf-8', 'replace'))}") from None

    def _with_retries(self, attempt: Callable[[], Any]) -> Any:
        sdk = _sdk()
        last: ServerError | None = None
        for n in range(self.retries + 1):
            wait: float | None = None
            try:
                return attempt()
            except sdk.APIStatusError as exc:
                self._reached = True
                status = exc.status_code
                message = _error_message(exc.body) or f"HTTP {status}"
                if status in (408, 429) or (status >= 500 and status not in _NOT_RETRYABLE_5XX):
                    advice = "the server is overloaded" if status in (429, 503) else "the server failed"
                    last = ServerError(f"the model server at {self.base_url} answered HTTP {status} ({advice}): "
                                       f"{message[:300]}")
                    wait = retry_after_seconds(exc.response.headers.get("retry-after"))
                    if wait is not None and wait > self.max_retry_after:
                        raise ServerError(f"{last} - it asks to retry after {wait:.0f} s, longer than "
                                          f"{self.max_retry_after:.0f} s; try again later") from None
                else:
                    raise classify_refusal(status, message, self.base_url) from None
            except (sdk.APIConnectionError, _TransportFault) as exc:
                cause = exc.__cause__ if isinstance(exc, sdk.APIConnectionError) else exc.cause
                if _is(cause, "UnsupportedProtocol"):
                    raise ServerUnreachable(f"{self.base_url} is not an http:// or https:// address; fix --base-url") \
                        from None
                if _is(cause, "ConnectError", "ConnectTimeout"):
                    if not self._reached:  # never reached it: a configuration problem, fail fast
                        raise ServerUnreachable(
                            f"cannot reach the model server at {self.base_url} ({type(cause).__name__}): "
                            "start it (`kimi-cua serve`, or `vllm serve ...`) or pass --base-url") from None
                    last = ServerUnreachable(f"the model server at {self.base_url} went away "
                                             f"({type(cause).__name__}) and did not come back")
                elif isinstance(exc, sdk.APITimeoutError) or _is(cause, "TimeoutException"):
                    last = ServerTimeout(f"the model server at {self.base_url} did not answer in time "
                                         f"({type(cause or exc).__name__}); raise --timeout or check the server load")
                else:  # broken connection, bad encoding
                    detail = f"{type(cause or exc).__name__}: {cause or exc}"
                    last = _Transient(f"the connection to {self.base_url} broke ({detail})")
            except _DeadlineExceeded as exc:
                last = ServerTimeout(f"the model server at {self.base_url} did not answer in time (no complete "
                                     f"reply within --timeout {self.timeout:g} s; {exc}); raise --timeout or check "
                                     "the server load")
            except _Empty as exc:
                last = EmptyReply(f"{self.base_url} answered with empty content (finish_reason={exc.finish}); "
                                  "check the server log and that the model's chat template is in use")
            except _Transient as exc:
                last = exc
            if n < self.retries:
                delay = min(self.backoff * (2 ** n), self.max_backoff) if wait is None else wait
                event = RetryEvent(attempt=n + 1, of=self.retries, wait_s=delay, error=str(last))
                log.warning("model server fault (retry %d/%d in %.1f s): %s", n + 1, self.retries, delay, last)
                if self.on_retry is not None:
                    self.on_retry(event)
                time.sleep(delay)
        assert last is not None
        attempts = f"gave up after {self.retries + 1} attempt{'s' if self.retries else ''}"
        final = ServerError if type(last) is _Transient else type(last)
        raise final(f"{last} ({attempts})") from None

    def close(self) -> None:
        if self._owns_client:
            self._openai.close()

    def __enter__(self) -> "VLLMClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Pump:
    """Reads one HTTP answer in a worker thread, so the caller waits for it until a deadline and no longer.

    The worker opens the response through the SDK (a status error surfaces here, typed) and queues its body as it
    arrives, up to ``byte_cap`` bytes. A server that trickles bytes or sends keep-alive comments forever cannot
    hold the caller past the deadline; the abandoned worker stops at its next read (or read timeout) and closes
    the response itself (closing it from here could race its read).
    """

    def __init__(self, open_response: Callable[[], Any], *, deadline: float, byte_cap: int,
                 on_request: Callable[[int], None] | None = None) -> None:
        self.deadline = deadline
        self.byte_cap = byte_cap
        self.on_request = on_request  # told the size of the request body once it was sent
        self.received = 0
        self._items: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._opened = False
        threading.Thread(target=self._run, args=(open_response,), name="kimi-cua-reply", daemon=True).start()

    def _run(self, open_response: Callable[[], Any]) -> None:
        try:
            with open_response() as response:
                self._sent(getattr(response, "http_request", None))
                self._items.put(("open", response.headers.get("content-type", "")))
                received = 0
                for data in response.iter_bytes():
                    if self._stop.is_set():
                        return
                    received += len(data)
                    self._items.put(("data", data))
                    if received > self.byte_cap:
                        return  # the reader raises when it counts past the cap
            self._items.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, which classifies it
            self._sent(getattr(exc, "request", None))
            self._items.put(("error", exc))

    def _sent(self, request: Any) -> None:
        if self.on_request is None or request is None:
            return
        self.on_request, tell = None, self.on_request  # once per pump
        try:
            tell(int(request.headers.get("content-length") or 0))
        except (AttributeError, TypeError, ValueError):
            tell(0)

    def _next(self, client: VLLMClient) -> tuple[str, Any]:
        remaining = self.deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise queue.Empty
            kind, value = self._items.get(timeout=remaining)
        except queue.Empty:
            self.close()
            state = f"{self.received:,} bytes received" if self._opened else "no response headers"
            raise _DeadlineExceeded(state) from None
        if kind == "error":
            if isinstance(value, _sdk().OpenAIError):
                raise value
            if _is(value, "HTTPError", "StreamError"):  # raised while reading the body
                raise _TransportFault(value)
            raise value
        if kind == "open":
            self._opened = True
            client._reached = True
        elif kind == "data":
            self.received += len(value)
            if self.received > self.byte_cap:
                self.close()
                raise ReplyTooLarge(f"{client.base_url} sent more than {self.byte_cap:,} bytes for one answer; the "
                                    "server is not honouring max_tokens: check it")
        return kind, value

    def open(self, client: VLLMClient) -> str:
        """Wait for the response headers; returns the content type."""
        kind, value = self._next(client)
        return value if kind == "open" else ""

    def read_all(self, client: VLLMClient) -> bytes:
        chunks: list[bytes] = []
        while True:
            kind, value = self._next(client)
            if kind == "data":
                chunks.append(value)
            elif kind == "end":
                return b"".join(chunks)

    def lines(self, client: VLLMClient) -> Iterator[str]:
        """The body's lines as text (SSE), as they arrive."""
        buffer = bytearray()
        while True:
            kind, value = self._next(client)
            if kind == "data":
                buffer += value
                start = 0
                while (end := buffer.find(b"\n", start)) >= 0:
                    yield self._decode(bytes(buffer[start:end]), client)
                    start = end + 1
                del buffer[:start]
            elif kind == "end":
                if buffer.strip():
                    yield self._decode(bytes(buffer), client)
                return

    @staticmethod
    def _decode(line: bytes, client: VLLMClient) -> str:
        try:
            return line.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            raise _Transient(f"{client.base_url} sent a stream line that is not UTF-8: {_short(line)}") from None

    def close(self) -> None:
        self._stop.set()


class _Transient(ServerError):
    """A fault worth retrying (broken connection, cut stream, malformed answer)."""


class ReplyTooLarge(_Transient):
    """More reasoning and content than ``max_tokens`` can explain: retried, then reported."""


class _TransportFault(Exception):
    """An HTTP-library error raised while reading a body (outside the SDK's wrapping)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _DeadlineExceeded(Exception):
    pass


class _Empty(Exception):
    def __init__(self, finish: str | None) -> None:
        super().__init__(f"empty content (finish_reason={finish})")
        self.finish = finish
