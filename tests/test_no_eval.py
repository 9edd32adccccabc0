"""Nothing the model writes or the screen shows is ever run as code.

Two proofs: a scan of the project's own source for the calls that turn text into code, and a run of the
parser, the agent loop and code generation on hostile model replies with eval/exec/compile booby-trapped.
"""
from __future__ import annotations

import ast
import builtins
import io
import json
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from actions.codegen import osworld_action, to_pyautogui_code
from actions.coords import Monitor, to_screen
from actions.parser import parse_reply, parse_summary
from actions.types import ActionParseError, TypeText
from agent.models.vllm import VLLMClient
from agent.loop import Agent, AgentConfig
from agent.trajectory import read_trajectory
from tests.e2e_support import ROOT, kimi_reply
from tests.fault_server import MemoryDesktop
from tests.loopback import LoopbackServer

PROJECT_DIRS = ("actions", "agent", "envs", "prompts", "benchmarks", "scripts")
CODE_FROM_TEXT = {"eval", "exec", "compile", "__import__", "execfile", "runpy", "breakpoint"}
DANGEROUS_ATTRIBUTES = {("importlib", "import_module"), ("os", "system"), ("os", "popen"), ("pickle", "loads"),
                        ("pickle", "load"), ("marshal", "loads"), ("runpy", "run_path"), ("runpy", "run_module"),
                        ("builtins", "eval"), ("builtins", "exec"), ("builtins", "compile"), ("yaml", "load"),
                        ("code", "interact"), ("ctypes", "CDLL")}
# Each exception names the file and the constant it is limited to.
ALLOWED = {
    ("agent/cli/main.py", "importlib.import_module"): "imports the modules named in the constant COMMAND_MODULES",
    ("envs/encoding.py", "__import__"): "probes the optional module named in the constant ENCODERS table",
    ("envs/xvfb.py", "ctypes.CDLL"): "loads no library by name: CDLL(None) is this process's own C library, "
                                     "for prctl(PR_SET_PDEATHSIG)",
    ("envs/osworld_guest.py", "subprocess with shell=True"): "OSWorld's in-VM API runs what its trusted caller sends "
                                                        "(task setup commands; shell only when the request asks for it)",
}


def project_sources() -> list[Path]:
    return sorted(p for d in PROJECT_DIRS if (ROOT / d).is_dir() for p in (ROOT / d).rglob("*.py"))


def code_from_text_calls(path: Path) -> list[str]:
    """``file:line call`` for every call that can turn a string into running code or objects."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func, name = node.func, None
        if isinstance(func, ast.Name) and func.id in CODE_FROM_TEXT:
            name = func.id
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
                (func.value.id, func.attr) in DANGEROUS_ATTRIBUTES:
            name = f"{func.value.id}.{func.attr}"
        elif isinstance(func, ast.Attribute) and func.attr in {"eval", "exec"} and \
                isinstance(func.value, ast.Name) and func.value.id in {"builtins", "__builtins__"}:
            name = f"{func.value.id}.{func.attr}"
        if any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
               for k in node.keywords):
            name = "subprocess with shell=True"
        if name is not None:
            rel = path.relative_to(ROOT).as_posix()
            if (rel, name) not in ALLOWED:
                found.append(f"{rel}:{node.lineno} {name}")
    return found


def test_the_project_source_has_no_call_that_runs_text_as_code():
    sources = project_sources()
    assert len(sources) > 20  # the scan really looked at the project
    assert [hit for path in sources for hit in code_from_text_calls(path)] == []


def test_the_scan_finds_each_kind_of_call_it_looks_for(tmp_path):
    bad = ROOT / "agent" / "_scan_probe_test_no_eval.py"
    try:
        bad.write_text("import os, importlib, subprocess, pickle\n"
                       "eval(x)\nexec(x)\ncompile(x, 'f', 'exec')\n__import__(x)\nimportlib.import_module(x)\n"
                       "os.system(x)\nsubprocess.run(x, shell=True)\npickle.loads(x)\n", encoding="utf-8")
        hits = code_from_text_calls(bad)
    finally:
        bad.unlink()
    assert [h.split(" ", 1)[1] for h in hits] == ["eval", "exec", "compile", "__import__", "importlib.import_module",
                                                  "os.system", "subprocess with shell=True", "pickle.loads"]


CANARY = "kimi_cua_canary_5f1e"


def hostile_codes(marker: Path) -> list[str]:
    touch = f"__import__('os').system('touch {marker}')"
    return [
        touch,
        f"pyautogui.click(x={touch}, y=0.5)",
        f"pyautogui.write({touch})",
        f"exec(\"open('{marker}', 'w').write('{CANARY}')\")",
        f"eval(\"open('{marker}', 'w')\")",
        f"import os; os.system('touch {marker}')",
        f"pyautogui.click(x=0.5, y=0.5); {touch}",
        f"pyautogui.press(key=getattr(__builtins__, 'eval')(\"open('{marker}', 'w')\"))",
        f"(lambda: {touch})()",
        f"pyautogui.hotkey(*[{touch}])",
        f"pyautogui.click(**{{'x': {touch}, 'y': 0.1}})",
        f"[c for c in ().__class__.__base__.__subclasses__() if '{CANARY}']",
        f"pyautogui.write(f'{{{touch}}}')",
        f"computer.terminate(status='success', answer={touch})",
        f"pyautogui.moveTo(x=0.5, y=0.5) if {touch} else None",
        f"pyautogui.scroll(-3 if __import__('os').system('touch {marker}') else 1)",
    ]


@pytest.fixture
def trapped(monkeypatch):
    """eval/exec/compile raise when project code calls them, or when any argument carries the canary."""
    calls: list[str] = []
    # The client imports the openai SDK lazily and the SDK imports its resources lazily: do that before the trap,
    # whose repr() of a half-imported module's arguments would otherwise import more of it mid-import.
    import openai
    warm = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="unused")
    assert warm.chat.completions is not None and warm.models is not None
    warm.close()
    real = {name: getattr(builtins, name) for name in ("eval", "exec", "compile")}
    project = tuple(str(ROOT / d) for d in PROJECT_DIRS)

    def trap(name):
        def guarded(*args, **kwargs):
            import sys
            caller = sys._getframe(1).f_code.co_filename
            flags = args[3] if len(args) > 3 else kwargs.get("flags", 0)
            if name == "compile" and flags & ast.PyCF_ONLY_AST:  # ast.parse: a syntax tree, nothing runs
                return real[name](*args, **kwargs)
            if caller.startswith(project) or CANARY in repr(args) + repr(kwargs):
                calls.append(f"{name} from {caller}")
                raise AssertionError(f"{name} called from {caller} with {repr(args)[:200]}")
            return real[name](*args, **kwargs)
        return guarded

    for name in real:
        monkeypatch.setattr(builtins, name, trap(name))
    return calls


def test_hostile_code_is_never_run_by_the_parser_or_codegen(tmp_path, trapped):
    marker = tmp_path / CANARY
    monitor = Monitor(width=1280, height=720)
    for code in hostile_codes(marker):
        for text in (kimi_reply("Do it.", code), f"◁think▷{code}◁/think▷{code}", code, f"```python\n{code}\n```"):
            try:
                actions = parse_reply(text) if "◁" in text else parse_summary(text)
            except ActionParseError:
                continue
            for action in actions:
                screen = to_screen(action, shown_width=1280, shown_height=720, monitor=monitor)
                to_pyautogui_code(screen)
                osworld_action(screen)
    assert trapped == [] and not marker.exists()


def screen_with_text(text: str) -> bytes:
    image = Image.new("RGB", (640, 400), "white")
    ImageDraw.Draw(image).multiline_text((10, 10), text.replace("; ", "\n"), fill="black")
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_a_run_on_hostile_replies_and_a_hostile_screen_runs_nothing(tmp_path, trapped):
    marker = tmp_path / CANARY
    codes = hostile_codes(marker)
    replies = [kimi_reply("Do it.", code) for code in codes]
    typed = kimi_reply("Type it.", f"pyautogui.write({codes[0]!r})")
    desktop = MemoryDesktop()
    desktop.image = screen_with_text("\n".join(codes))  # the screen itself shows code
    with LoopbackServer(replies + [typed, kimi_reply("Done.", "computer.terminate(status='success')")]) as server:
        client = VLLMClient(server.base_url, retries=0)
        config = AgentConfig(max_steps=len(replies) + 2, max_format_errors=len(replies) + 2, out_dir=tmp_path / "run")
        result = Agent(desktop, client, config).run(f"run {codes[0]}")
    assert trapped == [] and not marker.exists()
    assert result.status == "done"
    # Text that looks like code is typed as text, character for character, and recorded as data.
    assert TypeText(text=codes[0]) in desktop.executed
    steps = read_trajectory(tmp_path / "run")
    assert len(steps) == len(replies) + 2
    assert json.loads((tmp_path / "run" / "trajectory.jsonl").read_text().splitlines()[0])["response"] == replies[0]
