"""Client for vLLM's OpenAI-compatible server (or anything that speaks the same protocol).

Every server fault ends in one of two ways: a bounded number of retries that succeeds, or a ``ServerError``
whose message says what happened and what to do. Retried: broken or refused connections once the server was
reached, timeouts, HTTP 408/429/5xx (``Retry-After`` is respected), streams cut before their end, bodies that
are not the JSON the protocol promises, and empty replies. Not retried: a server never reached (fails within
the connect timeout) and 4xx refusals (context length, image count, unknown model, credentials).
"""
from __future__ import annotations

import base64
import email.utils
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any, Protocol

import httpx
from pydantic import BaseModel, ValidationError

from agent.reply import THINK_CLOSE, THINK_OPEN, ModelReply, Usage, make_reply

DEFAULT_BASE_URL = "http://localhost:8000/v1"
log = logging.getLogger(__name__)


class ServedModel(BaseModel):
    id: str
    max_model_len: int | None = None


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


class ServerError(RuntimeError):
    """The model server failed; the message says what happened and what to do."""


class ServerUnreachable(ServerError):
    pass


class ServerTimeout(ServerError):
    pass


class EmptyReply(ServerError):
    """The server answered, every time, with no text at all."""


class RequestRefused(ServerError):
    def __init__(self, message: str, *, status: int, server_message: str) -> None:
        super().__init__(message)
        self.status = status
        self.server_message = server_message


class ContextLengthExceeded(RequestRefused):
    def __init__(self, message: str, *, status: int, server_message: str, limit: int | None,
                 requested: int | None) -> None:
        super().__init__(message, status=status, server_message=server_message)
        self.limit = limit
        self.requested = requested


class TooManyImages(RequestRefused):
    def __init__(self, message: str, *, status: int, server_message: str, limit: int | None) -> None:
        super().__init__(message, status=status, server_message=server_message)
        self.limit = limit


class ModelClient(Protocol):
    def complete(self, messages: list[dict[str, Any]], *, temperature: float | None = None,
                 max_tokens: int | None = None, stream: bool = False,
                 on_delta: Callable[[str], None] | None = None,
                 extra: dict[str, Any] | None = None) -> ModelReply: ...


def image_part(data: bytes, mime: str = "image/png") -> dict[str, Any]:
    """An OpenAI ``image_url`` content part carrying the encoded bytes losslessly as a data URL."""
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(data).decode()}"}}


_CONTEXT_RE = re.compile(r"maximum context length is (\d+) tokens.*?requested (\d+) tokens", re.S)
_IMAGES_RE = re.compile(r"At most (\d+) image\(s\) may be provided", re.I)
_NOT_RETRYABLE_5XX = {501, 505}


class RetryEvent(BaseModel):
    """One transient fault about to be retried (for a live display; also logged)."""

    attempt: int  # 1 = the first retry
    of: int  # retries allowed
    wait_s: float
    error: str


def _reasoning_of(message: dict[str, Any]) -> str | None:
    """Thinking that a server's reasoning parser moved out of ``content`` (vLLM: reasoning_content / reasoning)."""
    value = message.get("reasoning_content") or message.get("reasoning")
    return value if isinstance(value, str) and value else None


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):
            return str(body["error"].get("message", body["error"]))
        if "message" in body:
            return str(body["message"])
        if "detail" in body:
            return str(body["detail"])
    return str(body)[:500]


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


def _usage(raw: Any) -> Usage:
    try:
        return Usage.model_validate(raw) if isinstance(raw, dict) else Usage()
    except ValidationError:
        return Usage()


def _short(value: Any, limit: int = 200) -> str:
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


class VLLMClient:
    """Talks to ``/v1/models`` and ``/v1/chat/completions``; retries transient faults a bounded number of times."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        model: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 300.0,
        connect_timeout: float = 2.0,
        retries: int = 3,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        max_retry_after: float = 120.0,
        variant: str | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.on_retry = on_retry
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=256, max_keepalive_connections=64),
        )
        self._model = model
        self._variant = variant
        self._served: list[ServedModel] | None = None
        self._reached = False  # any HTTP answer seen: later connection faults are outages, not misconfiguration

    # ---- discovery -------------------------------------------------------------------------------
    def models(self) -> list[ServedModel]:
        if self._served is None:
            def attempt() -> list[ServedModel]:
                body = self._json(self._request("GET", "/models"), "GET /models")
                data = body.get("data") if isinstance(body, dict) else None
                if not isinstance(data, list) or not all(isinstance(m, dict) and "id" in m for m in data):
                    raise _Transient(f"{self.base_url}/models answered without a model list: {_short(body)}")
                return [ServedModel(id=str(m["id"]), max_model_len=m.get("max_model_len")
                                    if isinstance(m.get("max_model_len"), int) else None) for m in data]
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
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": self.defaults.temperature if temperature is None else temperature,
            "max_tokens": self.defaults.max_tokens if max_tokens is None else max_tokens,
            # Keep the thinking markers: they are special tokens that vLLM would otherwise strip.
            "skip_special_tokens": False,
        }
        if extra:
            body.update(extra)
        started = time.perf_counter()
        if stream or on_delta is not None:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            text, usage, finish = self._with_retries(lambda: self._stream_once(body, on_delta))
        else:
            text, usage, finish = self._with_retries(lambda: self._complete_once(body))
        return make_reply(text, usage=usage, finish_reason=finish, model=self.model,
                          latency_ms=(time.perf_counter() - started) * 1000)

    def _complete_once(self, body: dict[str, Any]) -> tuple[str, Usage, str | None]:
        data = self._json(self._request("POST", "/chat/completions", json=body), "POST /chat/completions")
        return self._completion(data)

    def _completion(self, data: Any) -> tuple[str, Usage, str | None]:
        """Text, usage and finish reason of a whole (non-streamed) chat completion."""
        try:
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            reasoning = _reasoning_of(choice["message"])
        except (KeyError, IndexError, TypeError, AttributeError):
            raise _Transient(f"{self.base_url} answered without choices[0].message: {_short(data, 300)}") from None
        if not isinstance(text, str):
            raise _Transient(f"{self.base_url} answered with non-text content: {_short(text)}")
        if reasoning:  # a server with a reasoning parser split the thinking off: put the markers back
            text = f"{THINK_OPEN}{reasoning}{THINK_CLOSE}{text}"
        finish = choice.get("finish_reason") if isinstance(choice.get("finish_reason"), str) else None
        if not text.strip():
            raise _Empty(finish)
        return text, _usage(data.get("usage")), finish

    def _stream_once(self, body: dict[str, Any], on_delta: Callable[[str], None] | None) -> tuple[str, Usage, str | None]:
        parts: list[str] = []
        reasoning_parts: list[str] = []
        size = 0
        limit = _max_reply_chars(body.get("max_tokens"))
        usage, finish, done = Usage(), None, False
        with self._http.stream("POST", "/chat/completions", json=body) as response:
            self._reached = True
            if response.status_code != 200:
                response.read()
                self._raise_for(response)
            if "text/event-stream" not in response.headers.get("content-type", "text/event-stream"):
                # A server that ignores "stream": true and answers with one JSON body.
                response.read()
                text, usage, finish = self._completion(self._json(response, "POST /chat/completions (stream)"))
                if on_delta:
                    on_delta(text)
                return text, usage, finish
            for line in response.iter_lines():
                if not line.startswith("data:"):
                    continue  # SSE comments, event names, keep-alives
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
                    error = chunk.get("error", chunk)
                    message = error.get("message", error) if isinstance(error, dict) else error
                    raise _Transient(f"{self.base_url} reported an error mid-stream: {_short(str(message), 300)}")
                if chunk.get("usage"):
                    usage = _usage(chunk["usage"])
                choices = chunk.get("choices")
                for choice in choices if isinstance(choices, list) else []:
                    if not isinstance(choice, dict):
                        continue
                    delta = choice.get("delta")
                    thought = _reasoning_of(delta) if isinstance(delta, dict) else None
                    if thought:
                        if not reasoning_parts and on_delta:
                            on_delta(THINK_OPEN)
                        reasoning_parts.append(thought)
                        if on_delta:
                            on_delta(thought)
                    text = delta.get("content") if isinstance(delta, dict) else None
                    if isinstance(text, str) and text:
                        if reasoning_parts and not parts and on_delta:
                            on_delta(THINK_CLOSE)
                        parts.append(text)
                        size += len(text)
                        if size > limit:
                            raise ServerError(f"{self.base_url} streamed more than {limit:,} characters for "
                                              f"max_tokens={body.get('max_tokens')}; the server is not honouring "
                                              "max_tokens: check it")
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
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        self._reached = True
        if response.status_code != 200:
            self._raise_for(response)
        return response

    def _json(self, response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError:
            kind = response.headers.get("content-type", "no content type")
            raise _Transient(f"{self.base_url} answered {what} with something that is not JSON ({kind}): "
                             f"{_short(response.text)}") from None

    def _with_retries(self, attempt: Callable[[], Any]) -> Any:
        last: ServerError | None = None
        for n in range(self.retries + 1):
            wait: float | None = None
            try:
                return attempt()
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                last = ServerUnreachable(
                    f"cannot reach the model server at {self.base_url} ({exc.__class__.__name__}): "
                    "start it (`kimi-cua serve`, or `vllm serve ...`) or pass --base-url")
                if not self._reached:
                    raise last from None  # never reached it: a configuration problem, fail fast
                last = ServerUnreachable(f"the model server at {self.base_url} went away "
                                         f"({exc.__class__.__name__}) and did not come back")
            except httpx.TimeoutException as exc:
                last = ServerTimeout(f"the model server at {self.base_url} did not answer in time "
                                     f"({exc.__class__.__name__}); raise --timeout or check the server load")
            except httpx.UnsupportedProtocol:
                raise ServerUnreachable(f"{self.base_url} is not an http:// or https:// address; fix --base-url") \
                    from None
            except (httpx.TransportError, httpx.DecodingError) as exc:  # broken connection, bad encoding
                last = _Transient(f"the connection to {self.base_url} broke ({exc.__class__.__name__}: {exc})")
            except _Empty as exc:
                last = EmptyReply(f"{self.base_url} answered with empty content (finish_reason={exc.finish}); "
                                  "check the server log and that the model's chat template is in use")
            except _Transient as exc:
                last = exc
            except _RetryableStatus as exc:
                last, wait = exc.error, exc.retry_after
                if wait is not None and wait > self.max_retry_after:
                    raise ServerError(f"{exc.error} - it asks to retry after {wait:.0f} s, longer than "
                                      f"{self.max_retry_after:.0f} s; try again later") from None
            if n < self.retries:
                delay = min(self.backoff * (2 ** n), self.max_backoff) if wait is None else wait
                event = RetryEvent(attempt=n + 1, of=self.retries, wait_s=delay, error=str(last))
                log.warning("model server fault (retry %d/%d in %.1f s): %s", n + 1, self.retries, delay, last)
                if self.on_retry is not None:
                    self.on_retry(event)
                time.sleep(delay)
        assert last is not None
        attempts = f"gave up after {self.retries + 1} attempt{'s' if self.retries else ''}"
        final = ServerError if isinstance(last, _Transient) else type(last)
        raise final(f"{last} ({attempts})") from None

    def _raise_for(self, response: httpx.Response) -> None:
        message = _server_message(response)
        where = f"{self.base_url}"
        status = response.status_code
        if status in (408, 429) or (status >= 500 and status not in _NOT_RETRYABLE_5XX):
            advice = "the server is overloaded" if status in (429, 503) else "the server failed"
            raise _RetryableStatus(
                ServerError(f"the model server at {where} answered HTTP {status} ({advice}): {message[:300]}"),
                retry_after_seconds(response.headers.get("retry-after")))
        if m := _CONTEXT_RE.search(message):
            limit, requested = int(m.group(1)), int(m.group(2))
            raise ContextLengthExceeded(
                f"vLLM at {where} refused the request: {requested} tokens exceed max_model_len={limit}; "
                "lower --max-context / --max-images or restart vLLM with a larger --max-model-len",
                status=status, server_message=message, limit=limit, requested=requested)
        if m := _IMAGES_RE.search(message):
            limit = int(m.group(1))
            raise TooManyImages(
                f"vLLM at {where} refused the request: more images than --limit-mm-per-prompt={limit}; "
                "lower --max-images or restart vLLM with a larger limit",
                status=status, server_message=message, limit=limit)
        if status == 404 and "model" in message.lower():
            raise RequestRefused(f"{where} does not serve that model ({message}); check --model",
                                 status=status, server_message=message)
        if status in (401, 403):
            raise RequestRefused(f"{where} rejected the credentials (HTTP {status}): pass --api-key",
                                 status=status, server_message=message)
        raise RequestRefused(f"the model server at {where} refused the request (HTTP {status}): {message[:500]}",
                             status=status, server_message=message)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "VLLMClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _max_reply_chars(max_tokens: Any) -> int:
    # A token decodes to a few characters; 32 per token is far beyond any real tokenizer.
    return 32 * max_tokens if isinstance(max_tokens, int) and max_tokens > 0 else 4_000_000


class _Transient(ServerError):
    """A fault worth retrying (broken connection, cut stream, malformed answer)."""


class _Empty(Exception):
    def __init__(self, finish: str | None) -> None:
        super().__init__(f"empty content (finish_reason={finish})")
        self.finish = finish


class _RetryableStatus(Exception):
    def __init__(self, error: ServerError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error = error
        self.retry_after = retry_after
