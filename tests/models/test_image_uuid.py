"""Each screenshot's bytes go to a server once: uuids, the fallback when the server does not hold one, per-server
knowledge, ``--resend-images always``, bytes per request in the trajectory (against the loopback, whose uuid
behaviour is vLLM 0.32's: tests/test_contract_vllm.py ``images_given_by_uuid``)."""
from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from agent.loop import Agent, AgentConfig
from agent.models import image_cache
from agent.models.vllm import VLLMClient
from agent.trajectory import read_trajectory
from tests.e2e_support import DONE, kimi_reply
from tests.fault_server import MemoryDesktop
from tests.loopback import LoopbackServer, Reply

CLICK = kimi_reply("Click the middle.", "pyautogui.click(x=0.5, y=0.25)")


@pytest.fixture(autouse=True)
def _fresh_knowledge():
    image_cache.forget_servers()
    yield
    image_cache.forget_servers()


def shot(colour: tuple[int, int, int], size: tuple[int, int] = (320, 200)) -> dict:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()}}


def history(n: int) -> list[dict]:
    """An agent's request at step n: screenshots 1..n, each in its own user turn."""
    messages: list[dict] = []
    for i in range(1, n + 1):
        messages.append({"role": "user", "content": [shot((i, 2 * i, 3 * i)), {"type": "text", "text": f"step {i}"}]})
        if i < n:
            messages.append({"role": "assistant", "content": f"answer {i}"})
    return messages


def image_parts(body: dict) -> list[dict]:
    return [p for m in body["messages"] if isinstance(m.get("content"), list) for p in m["content"]
            if p.get("type") == "image_url"]


def test_each_image_is_sent_once_then_named_by_its_uuid():
    with LoopbackServer(["ok"] * 3) as server, VLLMClient(server.base_url, retries=0) as client:
        replies = [client.complete(history(n), max_tokens=8) for n in (1, 2, 3)]
    sent = [image_parts(b) for b in server.sent]
    assert [[p["image_url"] is not None for p in parts] for parts in sent] == [
        [True], [False, True], [False, False, True]]
    uuids = [[p["uuid"] for p in parts] for parts in sent]
    assert uuids[1][0] == uuids[0][0] and uuids[2][:2] == uuids[1]  # stable: a hash of the image
    assert len(set(uuids[2])) == 3
    stats = [r.usage.request for r in replies]
    assert [(s.images_with_data, s.images_by_uuid, s.requests, s.resent) for s in stats] == [
        (1, 0, 1, 0), (1, 1, 1, 0), (1, 2, 1, 0)]
    # bytes on the wire: the Content-Length of each request, and the third request no bigger than the first's
    # image plus its text
    assert stats[0].bytes == len(json.dumps(server.sent[0]).encode()) or stats[0].bytes > 0
    assert stats[2].bytes < stats[0].bytes + 1000
    # the model still sees every image (the same prompt tokens as a request with all the data)
    assert replies[2].usage.prompt_tokens == server.count_prompt(server.requests[2])[0]


def test_a_restarted_server_costs_one_request_sent_again_with_the_data():
    with LoopbackServer(["ok"] * 4) as server, VLLMClient(server.base_url, retries=0) as client:
        client.complete(history(1), max_tokens=8)
        client.complete(history(2), max_tokens=8)
        server.forget_images()  # as a restarted vLLM: its cache is empty
        reply = client.complete(history(3), max_tokens=8)
        after = client.complete(history(4), max_tokens=8)
    assert server.refusals == ["Cache miss for image at index 0 but data is not provided."]
    resent = image_parts(server.sent[3])
    assert all(p["image_url"] is not None and p["uuid"] for p in resent)  # every image with its data, once
    assert reply.usage.request.resent == 1 and reply.usage.request.requests == 2
    assert reply.usage.request.images_with_data == 3 and reply.usage.request.images_by_uuid == 0
    # and then back to naming them
    assert (after.usage.request.images_by_uuid, after.usage.request.images_with_data) == (3, 1)
    assert client.image_state().resent == 1


def test_resend_images_always_sends_every_image_without_uuids():
    with LoopbackServer(["ok"] * 2) as server, \
            VLLMClient(server.base_url, retries=0, resend_images="always") as client:
        client.complete(history(1), max_tokens=8)
        reply = client.complete(history(2), max_tokens=8)
    for body in server.sent:
        assert all("uuid" not in p and p["image_url"]["url"].startswith("data:") for p in image_parts(body))
    assert (reply.usage.request.images_with_data, reply.usage.request.images_by_uuid) == (2, 0)
    with pytest.raises(ValueError, match="resend_images"):
        VLLMClient("http://127.0.0.1:1/v1", resend_images="never")


def test_what_a_server_holds_is_kept_per_server():
    with LoopbackServer(["ok"] * 3) as one, LoopbackServer(["ok"] * 3) as two, \
            VLLMClient(one.base_url, retries=0) as a, VLLMClient(two.base_url, retries=0) as b:
        a.complete(history(2), max_tokens=8)
        b.complete(history(2), max_tokens=8)  # a replica that never saw them: data, not uuids
        a.complete(history(3), max_tokens=8)
    assert two.refusals == [] and one.refusals == []
    assert all(p["image_url"] is not None for p in image_parts(two.sent[0]))
    assert [p["image_url"] is not None for p in image_parts(one.sent[1])] == [False, False, True]


def test_a_server_that_refuses_uuids_gets_plain_requests_from_then_on():
    def policy(body: dict) -> Reply | str:
        if any("uuid" in p for p in image_parts(body)):
            return Reply(status=400, content="Unrecognized field 'uuid' in content part")
        return "ok"

    with LoopbackServer(policy) as server, VLLMClient(server.base_url, retries=0) as client:
        first = client.complete(history(1), max_tokens=8)
        second = client.complete(history(2), max_tokens=8)
    assert [any("uuid" in p for p in image_parts(b)) for b in server.sent] == [True, False, False]
    assert first.usage.request.uuids_refused == 1 and first.usage.request.requests == 2
    assert second.usage.request.requests == 1 and second.usage.request.images_with_data == 2
    assert client.image_state().mode == "plain"


def test_a_server_that_is_not_vllm_never_gets_uuids():
    from agent.models.baseline import BaselineServer

    with BaselineServer(port=0) as server, VLLMClient(server.base_url, retries=0) as client:
        assert client.models()[0].owned_by != "vllm"
        client.complete(history(1), max_tokens=64)
        assert client.image_state().mode == "plain"


def test_the_trajectory_records_the_bytes_of_each_request(tmp_path):
    colours = iter(["red", "green", "blue", "black"])

    def repaint(desktop, action):
        desktop.image = desktop.paint(next(colours))

    with LoopbackServer([CLICK, CLICK, DONE]) as server:
        desktop = MemoryDesktop(640, 400, on_execute=repaint)
        client = VLLMClient(server.base_url, retries=0)
        result = Agent(desktop, client, AgentConfig(max_steps=5, out_dir=tmp_path / "run")).run("click, then finish")
        client.close()
    records = read_trajectory(result.out_dir)
    stats = [r.usage.request for r in records]
    assert [s.images_by_uuid for s in stats] == [0, 1, 2]
    assert [s.images_with_data for s in stats] == [1, 1, 1]
    assert all(s.bytes > 0 for s in stats)
    line = json.loads((result.out_dir / "trajectory.jsonl").read_text().splitlines()[-1])
    assert line["usage"]["request"]["bytes"] == stats[-1].bytes
