"""An OpenAI-compatible HTTP server whose "model" is OCR + fuzzy text matching (CPU only, no download).

Speaks the subset of vLLM's protocol the agent uses: ``GET /health``, ``GET /v1/models`` (with
``max_model_len``), ``POST /v1/chat/completions`` streaming and not. It reads the LAST image of the request.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import re
import threading
import time
import uuid
import warnings
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image

from agent.models.baseline.grounding import done_answer, failure_answer, ground
from agent.models.baseline.ocr import OcrEngine, OcrUnavailable, RapidOcrEngine, TextBox
from agent.tokens import image_tokens

BASELINE_MODEL = "kimi-cua-baseline-ocr"
REPORTED_MAX_MODEL_LEN = 131072  # the grounder has no context limit; report Kimi-VL's so clients size alike
MAX_IMAGE_PIXELS = 40_000_000  # an 8K screen is 33 MP; a 17 KB PNG of 12000x12000 would decode to 2.25 GB
MAX_BODY_BYTES = 256 * 1024 * 1024


class BadRequest(ValueError):
    """The request cannot be answered; the message goes back to the client as vLLM-style HTTP 400."""


def image_size(part: dict[str, Any]) -> tuple[int, int] | None:
    """Width and height of an inline image part (header only), or None when it cannot be read."""
    url = part.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url
    if not isinstance(url, str) or "," not in url:
        return None
    try:
        with Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) as im:
            return im.size
    except (ValueError, OSError, binascii.Error):
        return None


def last_image(messages: list[dict[str, Any]]) -> bytes | None:
    """The bytes of the last ``image_url`` data URL in the conversation, or None when there is none."""
    found: str | None = None
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                url = part.get("image_url")
                found = url.get("url") if isinstance(url, dict) else url
    if found is None:
        return None
    if not isinstance(found, str) or not found.startswith("data:") or "," not in found:
        raise BadRequest("the baseline grounder reads images only from base64 data: URLs "
                         "(data:image/png;base64,...); send the screenshot inline")
    header, _, payload = found.partition(",")
    if ";base64" not in header:
        raise BadRequest("the image data URL is not base64-encoded")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest("the image data URL holds invalid base64") from None


def check_image(data: bytes) -> None:
    """Refuse an image that is not one, or whose pixels would not fit (a decompression bomb), from its header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise BadRequest(f"the screenshot is not a readable image ({exc})") from None
    if width * height > MAX_IMAGE_PIXELS:
        raise BadRequest(f"the screenshot is {width}x{height}: more than {MAX_IMAGE_PIXELS:,} pixels; "
                         "send a screenshot of the screen, at most 8K")


def check_body(body: Any) -> list[dict[str, Any]]:
    """The messages of a chat request, or BadRequest naming what is malformed."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("the request has no messages list")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise BadRequest(f"messages[{i}] must be an object")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise BadRequest(f"messages[{i}].content must be a string or a list of parts")
        if isinstance(content, list) and not all(isinstance(part, dict) for part in content):
            raise BadRequest(f"messages[{i}].content must hold objects")
    if body.get("stream_options") is not None and not isinstance(body.get("stream_options"), dict):
        raise BadRequest("stream_options must be an object")
    if body.get("model") is not None and not isinstance(body.get("model"), str):
        raise BadRequest("model must be a string")
    return messages


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


# kimi-cua's per-step user text (prompts/step.txt), alone or after the task in the same message
_STEP_MESSAGE = re.compile(r"^\s*Step \d+ of at most \d+\.", re.MULTILINE)
# what kimi-cua tells the model when the previous action did not run (skipped in the debugger, refused, ...)
_NOT_RUN = re.compile(r"\b(was skipped|did not run|was not run|were not run|not executed)\b", re.IGNORECASE)


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    return next((_text_of(m) for m in reversed(messages) if m.get("role") == "user" and _text_of(m).strip()), "")


def instruction_text(messages: list[dict[str, Any]]) -> str:
    """The text of the last user message that has any (where grounding benchmarks and most agents put the
    instruction); when that holds kimi-cua's per-step line (alone, or after the task in one message), the task:
    the ``Task: ...`` line of the first user message that has one, never the step line."""
    last = _last_user_text(messages)
    if _STEP_MESSAGE.search(last):
        for message in messages:
            if message.get("role") == "user":
                for line in _text_of(message).splitlines():
                    if line.startswith("Task:") and line[5:].strip():
                        return line[5:].strip()
        rest = [line for line in last.splitlines() if line.strip() and not _STEP_MESSAGE.match(line)]
        return "\n".join(rest)
    return last


def already_answered(messages: list[dict[str, Any]], answer: str) -> bool:
    """The previous assistant turn gave this same answer and it ran: the one-shot grounder has nothing more to do.
    When the last user message says the previous action did not run (skipped), it is answered again."""
    previous = [m for m in messages if m.get("role") == "assistant"]
    if not previous or _NOT_RUN.search(_last_user_text(messages)):
        return False
    code = answer.split("## Code:", 1)[-1].strip()
    return bool(code) and code in _text_of(previous[-1])


class _OcrCache:
    """The last few OCR results by image hash: agents often resend the same screenshot."""

    def __init__(self, engine: OcrEngine, size: int = 8) -> None:
        self.engine, self.size = engine, size
        self._items: OrderedDict[str, tuple[int, int, list[TextBox]]] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, image: bytes) -> tuple[int, int, list[TextBox]]:
        key = hashlib.sha1(image).hexdigest()
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        result = self.engine.read(image)
        with self._lock:
            self._items[key] = result
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return result


class BaselineGrounder:
    """Answers a chat request (OpenAI format) with Kimi-VL-formatted text."""

    def __init__(self, engine: OcrEngine | None = None, threshold: float = 0.7) -> None:
        self.threshold = threshold
        self._ocr = _OcrCache(engine or RapidOcrEngine())

    def warm_up(self) -> None:
        """Load the OCR engine now (raises OcrUnavailable with an install hint) instead of on the first request."""
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.new("RGB", (64, 32), "white").save(buffer, format="PNG")
        self._ocr.engine.read(buffer.getvalue())

    def answer(self, messages: list[dict[str, Any]]) -> str:
        image = last_image(messages)
        if image is None:
            return failure_answer("the request has no screenshot, so there is nothing to locate")
        prompt = instruction_text(messages)
        if not prompt.strip():
            return failure_answer("the request has no instruction text")
        check_image(image)
        try:
            width, height, boxes = self._ocr.read(image)
        except (ValueError, OSError) as exc:
            raise BadRequest(f"the screenshot cannot be read: {exc}") from None
        return ground(prompt, boxes, width, height, self.threshold)


def _estimate_tokens(text: str) -> int:
    return max(1, len(text) // 4)  # the grounder has no tokenizer: a rough count so clients see usage


def _prompt_tokens(messages: list[dict[str, Any]]) -> int:
    """Text by the rough count, images by Kimi-VL's rule (not their base64 length, which would mislead the
    client's calibration against usage.prompt_tokens)."""
    total = 0
    for message in messages:
        total += 4 + _estimate_tokens(_text_of(message))
        content = message.get("content")
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "image_url":
                size = image_size(part)
                total += image_tokens(*size) + 4 if size else 0
    return total


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep the test output clean
        if self.server.verbose:
            super().log_message(format, *args)

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send_json(status, {"object": "error", "message": message, "type": "BadRequestError",
                                 "param": None, "code": status})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = self.path.split("?", 1)[0].rstrip("/")
        if path == "/health":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/v1/models":
            self._send_json(200, {"object": "list", "data": [{
                "id": self.server.model_name, "object": "model", "created": int(self.server.started),
                "owned_by": "kimi-cua", "root": self.server.model_name, "max_model_len": REPORTED_MAX_MODEL_LEN}]})
        else:
            self._error(404, f"no route {self.path}; this server offers /health, /v1/models, /v1/chat/completions")

    def do_POST(self) -> None:  # noqa: N802
        if self.path.split("?", 1)[0].rstrip("/") != "/v1/chat/completions":
            self._error(404, f"no route {self.path}; POST /v1/chat/completions")
            return
        try:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                raise BadRequest("Content-Length is not a number") from None
            if length < 0 or length > MAX_BODY_BYTES:
                self.close_connection = True
                raise BadRequest(f"Content-Length {length} is outside 0..{MAX_BODY_BYTES}")
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadRequest(f"the body is not valid JSON: {exc}") from None
            messages = check_body(body)
            model = body.get("model") or self.server.model_name
            if model != self.server.model_name:
                self._error(404, f"The model `{model}` does not exist.")
                return
            text = self.server.grounder.answer(messages)
            if already_answered(messages, text):  # an agent loop: the click was made last step, so finish
                text = done_answer("the element was clicked in the previous step")
        except (BadRequest, json.JSONDecodeError) as exc:
            self._error(400, str(exc))
            return
        except OcrUnavailable as exc:
            self._error(503, str(exc))
            return
        except (TypeError, AttributeError, KeyError, IndexError, ValueError) as exc:  # malformed in a way not foreseen
            self._error(400, f"malformed request: {type(exc).__name__}: {exc}")
            return
        usage = {"prompt_tokens": _prompt_tokens(messages), "completion_tokens": _estimate_tokens(text)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream"):
            self._stream(text, model, usage, bool((body.get("stream_options") or {}).get("include_usage")))
        else:
            self._send_json(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": model, "usage": usage,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}]})

    def _stream(self, text: str, model: str, usage: dict[str, int], include_usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def event(choices: list[dict[str, Any]], **extra: Any) -> None:
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": choices, **extra}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()

        event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for piece in _pieces(text, 24):
            event([{"index": 0, "delta": {"content": piece}, "finish_reason": None}])
        event([{"index": 0, "delta": {}, "finish_reason": "stop"}])
        if include_usage:
            event([], usage=usage)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


def _pieces(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], grounder: BaselineGrounder, model_name: str, verbose: bool) -> None:
        super().__init__(address, _Handler)
        self.grounder, self.model_name, self.verbose = grounder, model_name, verbose
        self.started = time.time()


class BaselineServer:
    """``with BaselineServer(port=0) as s: s.base_url`` runs in a thread; ``serve_forever()`` blocks (the CLI)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, *, engine: OcrEngine | None = None,
                 model_name: str = BASELINE_MODEL, threshold: float = 0.7, verbose: bool = False) -> None:
        self._server = _Server((host, port), BaselineGrounder(engine, threshold), model_name, verbose)
        self._thread: threading.Thread | None = None

    @property
    def model_name(self) -> str:
        return self._server.model_name

    def warm_up(self) -> None:
        """Load the OCR engine now: raises OcrUnavailable (with the install command) before any request."""
        self._server.grounder.warm_up()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        host = str(self._server.server_address[0])
        return f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}/v1"

    def start(self) -> "BaselineServer":
        self._thread = threading.Thread(target=self._server.serve_forever, name="baseline-grounder", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        try:
            self._server.serve_forever()
        finally:
            self._server.server_close()

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> "BaselineServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
