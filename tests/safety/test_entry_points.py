"""Every entry point runs the policy unless told otherwise; --safety strict; the line model's window logic."""
from __future__ import annotations

import argparse
import json

from actions.types import Click, Hotkey, Point, Press, TypeText
from agent.evals.osworld_agent import KimiCuaOSWorldAgent
from agent.hooks import AgentHooks, HookChain
from agent.loop import Agent, AgentConfig
from agent.safety.guards import add_guard_arguments, guard_hooks
from agent.safety.line import LineModel
from agent.safety.policy import SafetyPolicy, find_policy
from agent.models.vllm import VLLMClient
from tests.e2e_support import DONE, kimi_reply
from tests.fault_server import MemoryDesktop
from tests.loopback import LoopbackServer

DANGER = kimi_reply("Clean up.", "pyautogui.write('rm -rf ~/work\\n')")


def client(server: LoopbackServer) -> VLLMClient:
    return VLLMClient(server.base_url, retries=0)


def test_agent_installs_the_default_policy_unless_safety_none(tmp_path):
    with LoopbackServer([DONE]) as server:
        agent = Agent(MemoryDesktop(), client(server), AgentConfig(out_dir=tmp_path / "a"))
        assert isinstance(agent.safety, SafetyPolicy) and agent.safety.unattended
        assert find_policy(agent.hooks) is agent.safety
        bare = Agent(MemoryDesktop(), client(server), AgentConfig(out_dir=tmp_path / "b"), safety=None)
        assert bare.safety is None and find_policy(bare.hooks) is None
        mine = SafetyPolicy(strict=True)
        chained = Agent(MemoryDesktop(), client(server), hooks=HookChain([AgentHooks(), mine]))
        assert chained.safety is mine  # a policy already among the hooks is used, not doubled


def test_the_python_api_refuses_and_with_safety_none_types(tmp_path):
    def script(request):
        refused = "refused by the safety policy" in json.dumps(request["messages"][-1])
        return DONE if refused or script.typed else DANGER

    script.typed = False
    desktop = MemoryDesktop()
    with LoopbackServer(script) as server:
        result = Agent(desktop, client(server), AgentConfig(max_steps=3, out_dir=tmp_path / "r")).run("x")
    assert result.status == "done" and desktop.executed == []
    desktop = MemoryDesktop()
    with LoopbackServer([DANGER, DONE]) as server:
        Agent(desktop, client(server), AgentConfig(max_steps=3, out_dir=tmp_path / "s"), safety=None).run("x")
    assert [a.type for a in desktop.executed] == ["type"]


def test_eval_osworld_agent_refuses_asks_again_and_returns_no_action(tmp_path):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (320, 200), "white").save(buffer, format="PNG")
    with LoopbackServer([DANGER, DANGER]) as server:
        agent = KimiCuaOSWorldAgent(server.base_url, work_dir=tmp_path)
        response, actions = agent.predict("free some space", {"screenshot": buffer.getvalue()})
        asked_again = "refused by the safety policy" in json.dumps(server.requests[-1]["messages"])
    assert actions == [] and asked_again and len(server.requests) == 2
    with LoopbackServer([kimi_reply("List.", "pyautogui.write('ls\\n')")]) as server:
        agent = KimiCuaOSWorldAgent(server.base_url, work_dir=tmp_path / "2")
        _, actions = agent.predict("list files", {"screenshot": buffer.getvalue()})
    assert len(actions) == 1 and "pyautogui.write" in actions[0]


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_guard_arguments(parser)
    return parser.parse_args(list(argv))


def test_safety_strict_flag_and_rules_file_together(tmp_path):
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"name": "no esc", "effect": "confirm", "keys": ["esc"]}]}))
    _, hooks = guard_hooks(parse("--safety", "strict", "--safety", str(rules), "--unattended"))
    [policy] = [h for h in hooks if isinstance(h, SafetyPolicy)]
    assert policy.config.strict and policy.config.rules[0].name == "no esc"
    _, hooks = guard_hooks(parse("--unattended"))
    assert not [h for h in hooks if isinstance(h, SafetyPolicy)][0].config.strict


def enters(model: LineModel, *actions) -> list[tuple[str, list[str]]]:
    out = []
    for action in actions:
        out += [(e.effect, e.lines) for e in model.feed(action)]
    return out


def test_lines_are_kept_per_window_when_the_focus_is_known():
    model = LineModel()
    model.begin_step(("terminal", True))
    enters(model, TypeText(text="rm -r"))
    model.begin_step(("browser", False))
    assert enters(model, TypeText(text="hello\n")) == [("allow", ["hello"])]  # the browser's own line
    model.begin_step(("terminal", True))
    assert enters(model, TypeText(text="f ~/x\n"))[0][0] == "confirm"  # the terminal still held "rm -r"


def test_after_a_click_every_combination_of_unknown_windows_is_judged():
    model = LineModel()
    result = enters(model, TypeText(text="echo '"), Click(at=Point(x=1, y=1)), TypeText(text="rm -rf ~/x"),
                    Click(at=Point(x=1, y=1)), TypeText(text="'"), Click(at=Point(x=1, y=1)), Press(key="enter"))
    effect, lines = result[-1]
    assert effect == "confirm" and "rm -rf ~/x" in lines


def test_ctrl_c_clears_the_line_and_history_recall_is_known_or_marked():
    model = LineModel()
    model.begin_step(("t", True))
    assert enters(model, TypeText(text="rm -rf ~/x"), Hotkey(keys=["ctrl", "c"]), TypeText(text="ls\n")) == [
        ("allow", ["ls"])]
    assert enters(model, Press(key="up"), Press(key="enter")) == [("allow", ["ls"])]
    assert enters(model, Press(key="up", count=5), Press(key="enter"))[0][0] == "confirm"


def test_strict_mode_asks_for_every_terminal_command_only():
    model = LineModel(strict=True)
    model.begin_step(("t", True))
    assert enters(model, TypeText(text="ls\n"))[0][0] == "confirm"
    model.begin_step(("form", False))
    assert enters(model, TypeText(text="Alice\n"))[0][0] == "allow"


def test_a_tab_in_a_form_moves_to_the_next_field_and_in_a_terminal_completes():
    model = LineModel()
    model.begin_step(("form", False))
    assert enters(model, TypeText(text="John\tDoe\n")) == [("allow", ["Doe"])]
    model.begin_step(("t", True))
    assert enters(model, TypeText(text="r\t -rf ~/x\n"))[0][0] == "confirm"
