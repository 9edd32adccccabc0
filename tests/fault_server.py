"""Faults the loopback server cannot inject by itself: response headers, hanging up, hand-written streams.

``FaultServer`` is a ``LoopbackServer`` whose policy may also return a ``Fault``:
- ``Fault(reply=Reply(status=429), headers={"Retry-After": "1"})``: any loopback reply plus extra headers;
- ``Fault(hang_up=True)``: read the request, then close the connection without a word;
- ``Fault(stream=[b'data: {...}', ...])``: a hand-written SSE body (each item sent as one event), so tests
  can send garbage chunks, error events, or a stream that ends after ``finish_reason`` without ``[DONE]``;
  ``pace=S`` waits S seconds before each event (keep-alive comments every 0.5 s ...);
- ``Fault(trickle=b'...', pace=S)``: 200 and a body sent one byte every S seconds (``content_type`` says what).

``server.headers`` holds the request headers of every POST, in order.

``MemoryDesktop`` is an in-memory Environment (a solid-colour screenshot) for loop-level fault tests.
"""
from __future__ import annotations

import io
import json
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from actions.coords import Monitor
from envs.base import ActionResult, Observation, ScreenGeometry
from tests.loopback import LoopbackServer, Reply, _make_handler


@dataclass
class Fault:
    reply: Reply | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang_up: bool = False
    stream: list[bytes] | None = None
    pace: float = 0.0  # seconds before each stream event, or each byte of ``trickle``
    trickle: bytes | None = None  # a 200 body sent one byte at a time
    content_type: str = "text/event-stream"


def chunk(content: str | None = None, finish: str | None = None) -> bytes:
    """One SSE event in vLLM's chunk shape."""
    delta = {} if content is None else {"content": content}
    body = {"id": "chatcmpl-x", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + json.dumps(body).encode()


class _Intercept(Exception):
    def __init__(self, fault: Fault) -> None:
        self.fault = fault


class FaultServer(LoopbackServer):
    def __init__(self, policy: Any, **kwargs: Any) -> None:
        super().__init__(policy, **kwargs)
        self._current = threading.local()
        self.headers: list[dict[str, str]] = []
        self._httpd.RequestHandlerClass = _fault_handler(self)

    def next_reply(self, body: dict[str, Any]) -> Reply:
        answer = self.policy(body) if callable(self.policy) else None
        if answer is None:
            with self._lock:
                if self._next >= len(self.policy):
                    return Reply(status=500, content=f"fault script exhausted after {self._next} replies")
                answer = self.policy[self._next]
                self._next += 1
        self._current.headers = {}
        if isinstance(answer, Fault):
            if answer.hang_up or answer.stream is not None or answer.trickle is not None:
                raise _Intercept(answer)
            self._current.headers = answer.headers
            answer = answer.reply or Reply()
        return answer if isinstance(answer, Reply) else Reply(content=answer)


def _fault_handler(server: FaultServer) -> type:
    base = _make_handler(server)

    class FaultHandler(base):  # type: ignore[misc, valid-type]
        def end_headers(self) -> None:
            for name, value in getattr(server._current, "headers", {}).items():
                self.send_header(name, value)
            server._current.headers = {}
            super().end_headers()

        def do_POST(self) -> None:
            with server._lock:
                server.headers.append({k.lower(): v for k, v in self.headers.items()})
            try:
                super().do_POST()
            except _Intercept as intercepted:
                self._perform(intercepted.fault)

        def _perform(self, fault: Fault) -> None:
            if fault.hang_up:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.send_response(200)
            self.send_header("Content-Type", fault.content_type)
            if fault.trickle is not None:
                self.send_header("Content-Length", str(len(fault.trickle)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            pieces = ([fault.trickle[i:i + 1] for i in range(len(fault.trickle))] if fault.trickle is not None
                      else [event + b"\n\n" for event in fault.stream or []])
            try:
                for piece in pieces:
                    if fault.pace:
                        time.sleep(fault.pace)
                    self.wfile.write(piece)
                    self.wfile.flush()
            except OSError:
                pass  # the client gave up (a deadline): stop sending

    return FaultHandler


class MemoryDesktop:
    """An Environment with a fixed screenshot that records what it was asked to do."""

    def __init__(self, width: int = 640, height: int = 400, on_execute: Any = None) -> None:
        self.width, self.height = width, height
        self.image = self.paint("white")
        self.executed: list = []
        self.on_execute = on_execute  # called with (desktop, action) after recording it

    def paint(self, colour: str) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (self.width, self.height), colour).save(buf, "PNG")
        return buf.getvalue()

    def observe(self) -> Observation:
        geometry = ScreenGeometry(monitor=Monitor(width=self.width, height=self.height),
                                  screen_width=self.width, screen_height=self.height)
        return Observation(image=self.image, width=self.width, height=self.height, geometry=geometry)

    def execute(self, action) -> ActionResult:
        self.executed.append(action)
        if self.on_execute is not None:
            self.on_execute(self, action)
        return ActionResult()

    def close(self) -> None:
        pass
