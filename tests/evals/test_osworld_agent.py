"""Contract tests of OSWorld's agent interface with OSWorld-style observations over real HTTP (loopback server)."""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from actions.codegen import to_pyautogui_code
from actions.types import Wait
from agent.evals.osworld_agent import KimiCuaKimiRunnerAgent, KimiCuaOSWorldAgent, natural_language_action
from tests.e2e_support import kimi_reply, last_image_size
from tests.loopback import LoopbackServer


WAIT_CODE = to_pyautogui_code(Wait())  # computer.wait(): a real sleep in the VM, not OSWorld's WAIT (0 s by default)


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
        cls = kwargs.pop("cls", KimiCuaOSWorldAgent)
        agent = cls(base_url=server.base_url, work_dir=tmp_path / "work", **kwargs)
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


def test_wait_sleeps_in_the_vm_and_terminate_becomes_osworld_keywords(make_agent):
    agent, _ = make_agent([kimi_reply("Loading.", "computer.wait()"),
                           kimi_reply("Done.", "computer.terminate(status='success')"),
                           kimi_reply("Impossible.", "computer.terminate(status='failure')")])
    assert agent.predict("t", _obs())[1] == [WAIT_CODE]
    assert agent.predict("t", _obs())[1] == ["DONE"]
    assert agent.predict("t", _obs())[1] == ["FAIL"]


def test_typing_and_keys_are_generated_not_copied_from_the_reply(make_agent):
    code = "pyautogui.write('hello')\npyautogui.hotkey('ctrl', 's')"
    agent, _ = make_agent([kimi_reply("Type and save.", code)])
    _, actions = agent.predict("t", _obs())
    assert actions == ["import base64\npyautogui.write(base64.b64decode('aGVsbG8=').decode('utf-8', 'surrogatepass'))",
                       "pyautogui.hotkey('ctrl', 's')"]


def test_hostile_code_in_the_reply_yields_no_action_and_a_retry_note(make_agent):
    hostile = kimi_reply("Clean up.", "import os; os.system('rm -rf ~')")
    agent, server = make_agent([hostile, kimi_reply("Wait.", "computer.wait()")])
    response, actions = agent.predict("t", _obs())
    assert actions == []
    assert "answer not usable" in response
    assert agent.predict("t", _obs())[1] == [WAIT_CODE]
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


class FakeEnv:
    """What OSWorld's runners touch on DesktopEnv: reset, _get_obs, step, evaluate, controller recording."""

    def __init__(self) -> None:
        self.steps: list[str] = []
        self.vm_ip = "127.0.0.1"
        self.controller = type("C", (), {"start_recording": lambda s: None, "end_recording": lambda s, d: None})()

    def reset(self, task_config=None):
        return _obs()

    def _get_obs(self):
        return _obs()

    def step(self, action, pause=0):
        self.steps.append(action)
        return _obs(), 0, action in ("DONE", "FAIL"), {}

    def evaluate(self):
        return 1.0 if self.steps and self.steps[-1] == "DONE" else 0.0


def run_single_example_shape(agent, env, instruction, max_steps=5):
    """The calls of lib_run_single.run_single_example (reset with and without vm_ip, 2-value predict)."""
    try:
        agent.reset(object(), vm_ip=env.vm_ip)
    except Exception:
        agent.reset(object())
    obs = env.reset(task_config={})
    done, step = False, 0
    while not done and step < max_steps:
        response, actions = agent.predict(instruction, obs)
        for action in actions:
            obs, reward, done, info = env.step(action, 0)
            json.dumps({"action": action, "response": response, "info": info})
            if done:
                break
        step += 1
    return env.evaluate()


def run_single_example_kimi_shape(agent, env, instruction, max_steps=5):
    """The calls of lib_run_single.run_single_example_kimi (run_multienv_kimi_k25.py): 3-value predict,
    info_dict.get("action"), agent.last_step_info, stop on an empty action list."""
    agent.reset(object())
    obs = env.reset(task_config={})
    env.controller.start_recording()
    done, step, tokens = False, 0, 0
    while not done and step < max_steps:
        response, actions, info_dict = agent.predict(instruction, obs)
        step_info = getattr(agent, "last_step_info", {})
        tokens += step_info.get("total_tokens", 0)
        if not actions or len(actions) == 0 or actions[0] == "" or actions[0].lower().startswith("error"):
            break
        for action in actions:
            obs, reward, done, info = env.step(action, 0)
            json.dumps({"action": action, "natural_language_action": info_dict.get("action"),
                        "response": response}, ensure_ascii=False)
            if done:
                break
        step += 1
    env.controller.end_recording("recording.mp4")
    return env.evaluate(), tokens


def test_generic_runner_shape_with_the_pair_agent(make_agent):
    agent, _ = make_agent([kimi_reply("Click.", "pyautogui.click(x=0.5, y=0.5)"),
                           kimi_reply("Done.", "computer.terminate(status='success')")])
    env = FakeEnv()
    assert run_single_example_shape(agent, env, "t") == 1.0
    assert env.steps == ["pyautogui.click(x=960, y=540)", "DONE"]


@pytest.mark.parametrize("kwargs", [{"cls": KimiCuaKimiRunnerAgent}, {"predict_info": True}])
def test_kimi_runner_shape_gets_three_values_and_token_counts(make_agent, kwargs):
    hostile = kimi_reply("Clean up.", "import os; os.system('rm -rf ~')")
    agent, _ = make_agent([kimi_reply("Click the OK button.", "pyautogui.click(x=0.5, y=0.5)"), hostile,
                           kimi_reply("Wait for it.", "computer.wait()"),
                           kimi_reply("Done.", "computer.terminate(status='success')")], **kwargs)
    env = FakeEnv()
    score, tokens = run_single_example_kimi_shape(agent, env, "t")
    # an unusable answer does not end the episode (the Kimi runner stops on an empty list): WAIT, then go on
    assert env.steps == ["pyautogui.click(x=960, y=540)", "WAIT", WAIT_CODE, "DONE"] and score == 1.0
    assert tokens > 0 and agent.last_step_info["input_tokens"] > 0


def test_kimi_runner_info_names_the_action_in_words(make_agent):
    agent, _ = make_agent([kimi_reply("Click the OK button.", "pyautogui.click(x=0.5, y=0.5)")],
                          cls=KimiCuaKimiRunnerAgent)
    response, actions, info = agent.predict("t", _obs())
    assert info["action"] == "Click the OK button." and info["typed_actions"][0]["type"] == "click"
    assert set(agent.last_step_info) == {"request_time", "input_tokens", "output_tokens", "total_tokens"}


def test_the_pair_agent_still_returns_two_values(make_agent):
    agent, _ = make_agent([kimi_reply("Wait.", "computer.wait()")])
    assert len(agent.predict("t", _obs())) == 2


@pytest.mark.parametrize(("summary", "action"), [
    ("## Action:\nClick OK\n\n## Code:\n```python\nx\n```", "Click OK"),
    ("## Action: Type hello\n## Code:", "Type hello"), ("no sections", "")])
def test_natural_language_action(summary, action):
    assert natural_language_action(summary) == action
