"""Contract tests of OSWorld's agent interface with OSWorld-style observations over real HTTP (loopback server)."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from agent.evals.osworld_agent import KimiCuaOSWorldAgent
from tests.e2e_support import kimi_reply, last_image_size
from tests.loopback import LoopbackServer


def _png(width: int = 1920, height: int = 1080) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (40, 80, 120)).save(buf, format="PNG")
    return buf.getvalue()


def _obs(width: int = 1920, height: int = 1080) -> dict:
    # What DesktopEnv returns: PNG bytes plus fields this agent does not need.
    return {"screenshot": _png(width, height), "accessibility_tree": None, "terminal": None, "instruction": "x"}


def _images(request: dict) -> int:
    return sum(1 for m in request["messages"] if isinstance(m.get("content"), list)
               for p in m["content"] if p.get("type") == "image_url")


@pytest.fixture
def make_agent(tmp_path):
    servers: list[LoopbackServer] = []

    def factory(policy, **kwargs):
        server = LoopbackServer(policy).start()
        servers.append(server)
        agent = KimiCuaOSWorldAgent(base_url=server.base_url, work_dir=tmp_path / "work", **kwargs)
        agent.reset()
        return agent, server

    yield factory
    for server in servers:
        server.stop()


def test_predict_returns_raw_response_and_generated_code_in_screen_pixels(make_agent):
    reply = kimi_reply("Click the OK button.", "pyautogui.click(x=0.5, y=0.25)")
    agent, server = make_agent([reply])
    response, actions = agent.predict("press OK", _obs())
    assert response == reply
    assert actions == ["pyautogui.click(x=960, y=270)"]
    assert last_image_size(server.requests[0]) == (1920, 1080)


def test_wait_and_terminate_become_osworld_keywords(make_agent):
    agent, _ = make_agent([kimi_reply("Loading.", "computer.wait()"),
                           kimi_reply("Done.", "computer.terminate(status='success')"),
                           kimi_reply("Impossible.", "computer.terminate(status='failure')")])
    assert agent.predict("t", _obs())[1] == ["WAIT"]
    assert agent.predict("t", _obs())[1] == ["DONE"]
    assert agent.predict("t", _obs())[1] == ["FAIL"]


def test_typing_and_keys_are_generated_not_copied_from_the_reply(make_agent):
    code = "pyautogui.write('hello')\npyautogui.hotkey('ctrl', 's')"
    agent, _ = make_agent([kimi_reply("Type and save.", code)])
    _, actions = agent.predict("t", _obs())
    assert actions == ["pyautogui.write('hello')", "pyautogui.hotkey('ctrl', 's')"]


def test_hostile_code_in_the_reply_yields_no_action_and_a_retry_note(make_agent):
    hostile = kimi_reply("Clean up.", "import os; os.system('rm -rf ~')")
    agent, server = make_agent([hostile, kimi_reply("Wait.", "computer.wait()")])
    response, actions = agent.predict("t", _obs())
    assert actions == []
    assert "answer not usable" in response
    assert agent.predict("t", _obs())[1] == ["WAIT"]
    assert "could not be used" in json.dumps(server.requests[1]["messages"])


def test_history_grows_within_an_episode_and_reset_clears_it(make_agent):
    agent, server = make_agent([kimi_reply("Wait.", "computer.wait()")] * 3)
    agent.predict("t", _obs())
    agent.predict("t", _obs())
    assert _images(server.requests[0]) == 1 and _images(server.requests[1]) == 2
    agent.reset()
    agent.predict("t", _obs())
    assert _images(server.requests[2]) == 1


def test_hidpi_screen_size_maps_to_logical_pixels(make_agent):
    agent, _ = make_agent([kimi_reply("Click.", "pyautogui.click(x=0.5, y=0.5)")], screen_size=(1280, 720))
    _, actions = agent.predict("t", _obs(2560, 1440))
    assert actions == ["pyautogui.click(x=640, y=360)"]


def test_observation_without_png_is_refused_with_a_reason(make_agent):
    agent, _ = make_agent([])
    with pytest.raises(ValueError, match="PNG screenshot"):
        agent.predict("t", {"screenshot": None})
