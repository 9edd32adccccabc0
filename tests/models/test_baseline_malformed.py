"""The baseline grounder server answers malformed requests with HTTP 400 (never a dropped connection) and
refuses decompression bombs from the image header, before decoding."""
from __future__ import annotations

import base64
import io
import json
import socket
import struct
import time
import zlib

import httpx
import pytest
from PIL import Image

from agent.models.baseline import BaselineServer
from agent.models.baseline.server import MAX_IMAGE_PIXELS


class StubEngine:
    """OCR that finds nothing; counts calls (a refused image must never reach it)."""

    def __init__(self) -> None:
        self.calls = 0

    def read(self, image: bytes):
        self.calls += 1
        with Image.open(io.BytesIO(image)) as im:
            return im.width, im.height, []


@pytest.fixture(scope="module")
def server():
    engine = StubEngine()
    with BaselineServer(port=0, engine=engine) as s:
        s.engine = engine
        yield s


def png(width: int, height: int) -> str:
    """A black 1-bit PNG, written by hand (PIL takes seconds to encode 144 megapixels)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + b"\x00" * ((width + 7) // 8)
    raw = zlib.compress(row * height, 9)
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))
    return "data:image/png;base64," + base64.b64encode(data).decode()


def chat(image_url: str) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "text", "text": "click the OK button"},
                                                      {"type": "image_url", "image_url": {"url": image_url}}]}]}


@pytest.mark.parametrize("body", [
    b"[1, 2]", b'"text"', b"null", b"{not json", b"\xff\xfe{}", b'{"messages": "hi"}', b'{"messages": []}',
    b'{"messages": ["hi"]}', b'{"messages": [{"role": "user", "content": 5}]}',
    b'{"messages": [{"role": "user", "content": ["x"]}]}',
    b'{"messages": [{"role": "user", "content": "hi"}], "stream_options": 3}',
    b'{"messages": [{"role": "user", "content": "hi"}], "model": 7}',
    json.dumps(chat("data:image/png;base64,!!!")).encode(),
    json.dumps(chat("data:image/png;base64," + base64.b64encode(b"not an image").decode())).encode(),
    json.dumps({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": 5}]}]}).encode(),
])
def test_malformed_bodies_get_a_400_with_a_reason(server, body):
    answer = httpx.post(server.base_url + "/chat/completions", content=body,
                        headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 400, answer.text
    assert answer.json()["message"]


def test_a_bad_content_length_gets_a_400_not_a_hang(server):
    host, port = server.base_url.split("//")[1].split("/")[0].split(":")
    for length in ("abc", "-5"):
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            conn.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                         "Connection: close\r\n\r\n{}".encode())
            data = conn.recv(4096)
        assert data.startswith(b"HTTP/1.") and b" 400 " in data.split(b"\r\n")[0]


def test_a_decompression_bomb_is_refused_from_its_header_fast(server):
    bomb = png(12000, 12000)  # a few KB of PNG, 144 million pixels
    assert len(bomb) < 100_000 and 12000 * 12000 > MAX_IMAGE_PIXELS
    calls = server.engine.calls
    start = time.perf_counter()
    answer = httpx.post(server.base_url + "/chat/completions", json=chat(bomb), timeout=30)
    assert time.perf_counter() - start < 2.0
    assert answer.status_code == 400 and "pixels" in answer.json()["message"]
    assert server.engine.calls == calls  # never decoded


def test_a_normal_screenshot_is_still_answered(server):
    answer = httpx.post(server.base_url + "/chat/completions", json=chat(png(1280, 720)), timeout=30)
    assert answer.status_code == 200
    assert "terminate" in answer.json()["choices"][0]["message"]["content"]
