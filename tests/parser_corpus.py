"""Realistic model outputs with the exact result ``parse_reply`` must give.

Each case is (name, model output, expected): a list of actions, or ``Rejected("words the error must hold")``.
Outputs follow the dialects of REFERENCE.md section 1 (OSWorld / ScreenSpot-Pro Kimi prompts, the tech report's
Toolcall trace, grounding boxes) plus decoys, truncation, garbage and hostile text.
"""
from __future__ import annotations

from dataclasses import dataclass

from actions.types import Click, Done, Drag, Fail, Hotkey, Move, Point, Press, Scroll, TypeText, Wait


@dataclass(frozen=True)
class Rejected:
    says: str  # a fragment the ActionParseError message must contain


def P(x: float, y: float) -> Point:
    return Point(x=x, y=y)


T = "◁think▷"
E = "◁/think▷"

CORPUS: list[tuple[str, str, object]] = [
    # --- OSWorld / ScreenSpot-Pro style: ## Action + ## Code python block --------------------------
    ("osworld_click", f"{T}The Save button is at the top.{E}## Action:\nClick the Save button.\n## Code:\n```python\npyautogui.click(x=0.879, y=0.294)\n```",
     [Click(at=P(0.879, 0.294))]),
    ("osworld_positional", "## Action:\nClick File.\n## Code:\n```python\npyautogui.click(0.031, 0.052)\n```",
     [Click(at=P(0.031, 0.052))]),
    ("osworld_double", "## Code:\n```python\npyautogui.doubleClick(x=0.5, y=0.25)\n```", [Click(at=P(0.5, 0.25), count=2)]),
    ("osworld_right", "## Code:\n```python\npyautogui.rightClick(x=0.4, y=0.6)\n```", [Click(at=P(0.4, 0.6), button="right")]),
    ("osworld_middle", "## Code:\n```python\npyautogui.middleClick(0.2, 0.3)\n```", [Click(at=P(0.2, 0.3), button="middle")]),
    ("osworld_triple", "## Code:\n```python\npyautogui.tripleClick(x=0.33, y=0.44)\n```", [Click(at=P(0.33, 0.44), count=3)]),
    ("click_keyword_button_clicks", "```python\npyautogui.click(x=0.1, y=0.2, clicks=2, button='right')\n```",
     [Click(at=P(0.1, 0.2), count=2, button="right")]),
    ("click_positional_all", "```python\npyautogui.click(0.1, 0.2, 1, 0.0, 'middle')\n```", [Click(at=P(0.1, 0.2), button="middle")]),
    ("click_here", "```python\npyautogui.click()\n```", [Click()]),
    ("click_tuple", "```python\npyautogui.click((0.25, 0.75))\n```", [Click(at=P(0.25, 0.75))]),
    ("several_calls", ("## Action:\nClick the search box and type the query, then press Enter.\n## Code:\n```python\n"
                       "pyautogui.click(x=0.5, y=0.1)\npyautogui.write('kimi vl')\npyautogui.press('enter')\n```"),
     [Click(at=P(0.5, 0.1)), TypeText(text="kimi vl"), Press(key="enter")]),
    ("import_lines_ignored", "```python\nimport pyautogui\nimport time\npyautogui.click(0.3, 0.3)\ntime.sleep(2)\n```",
     [Click(at=P(0.3, 0.3)), Wait(seconds=2)]),
    ("comment_in_code", "```python\n# open the menu\npyautogui.click(x=0.02, y=0.03)  # File\n```", [Click(at=P(0.02, 0.03))]),
    ("pixels_in_code", "```python\npyautogui.click(x=960, y=540)\n```", [Click(at=P(960, 540))]),
    ("move_to", "```python\npyautogui.moveTo(0.6, 0.7, duration=0.5)\n```", [Move(at=P(0.6, 0.7))]),
    ("move_then_drag", "```python\npyautogui.moveTo(0.1, 0.2)\npyautogui.dragTo(0.5, 0.6, duration=1.0, button='left')\n```",
     [Drag(start=P(0.1, 0.2), end=P(0.5, 0.6))]),
    ("drag_from_pointer", "```python\npyautogui.dragTo(x=0.9, y=0.9)\n```", [Drag(end=P(0.9, 0.9))]),
    ("scroll_down", "```python\npyautogui.scroll(-5)\n```", [Scroll(dy=-5)]),
    ("scroll_at_point", "```python\npyautogui.scroll(3, x=0.5, y=0.5)\n```", [Scroll(dy=3, at=P(0.5, 0.5))]),
    ("hscroll", "```python\npyautogui.hscroll(-2)\n```", [Scroll(dx=-2)]),
    ("typewrite_keys_list", "```python\npyautogui.typewrite(['down', 'down', 'enter'])\n```",
     [Press(key="down"), Press(key="down"), Press(key="enter")]),
    ("typewrite_text_interval", "```python\npyautogui.typewrite('hello world', interval=0.05)\n```", [TypeText(text="hello world")]),
    ("write_unicode", "```python\npyautogui.write('naïve 日本語 😀 <b>')\n```", [TypeText(text="naïve 日本語 😀 <b>")]),
    ("write_escapes", "```python\npyautogui.write(\"line1\\nline2\\t'q'\")\n```", [TypeText(text="line1\nline2\t'q'")]),
    ("press_presses", "```python\npyautogui.press('tab', presses=3)\n```", [Press(key="tab", count=3)]),
    ("press_alias_names", "```python\npyautogui.press('Return')\npyautogui.press('ESC')\npyautogui.press('PgDn')\n```",
     [Press(key="enter"), Press(key="esc"), Press(key="pagedown")]),
    ("press_list", "```python\npyautogui.press(['left', 'left'])\n```", [Press(key="left"), Press(key="left")]),
    ("hotkey", "```python\npyautogui.hotkey('ctrl', 'c')\n```", [Hotkey(keys=["ctrl", "c"])]),
    ("hotkey_aliases", "```python\npyautogui.hotkey('Control', 'Shift', 'T')\npyautogui.hotkey('cmd', 'space')\n```",
     [Hotkey(keys=["ctrl", "shift", "t"]), Hotkey(keys=["win", "space"])]),
    ("hotkey_plus_string", "Toolcall: hotkey('ctrl+alt+delete')", [Hotkey(keys=["ctrl", "alt", "delete"])]),
    ("key_down_up", "```python\npyautogui.keyDown('ctrl')\npyautogui.press('a')\npyautogui.keyUp('ctrl')\n```",
     [Hotkey(keys=["ctrl", "a"])]),
    ("key_down_down_up_up", "```python\npyautogui.keyDown('shift')\npyautogui.keyDown('tab')\npyautogui.keyUp('tab')\npyautogui.keyUp('shift')\n```",
     [Hotkey(keys=["shift", "tab"])]),
    ("computer_wait", "## Action:\nWait for the page to load.\n## Code:\n```python\ncomputer.wait()\n```", [Wait()]),
    ("computer_terminate_success", "## Code:\n```python\ncomputer.terminate(status=\"success\", answer=\"The total is 42\")\n```",
     [Done(answer="The total is 42")]),
    ("computer_terminate_failure", "## Code:\n```python\ncomputer.terminate(status='failure')\n```", [Fail()]),
    ("words_in_block", "## Code:\n```\nDONE\n```", [Done()]),
    ("last_block_counts", "Earlier I tried:\n```python\npyautogui.click(0.1, 0.1)\n```\nThat failed, so:\n```python\npyautogui.click(0.2, 0.2)\n```",
     [Click(at=P(0.2, 0.2))]),
    ("unclosed_fence", "## Code:\n```python\npyautogui.click(x=0.7, y=0.8)", [Click(at=P(0.7, 0.8))]),
    # --- tech report Toolcall / bare calls ---------------------------------------------------------
    ("toolcall_click", "Thought: The icon is in the dock.\nAction: Click the icon.\nToolcall: click(x=0.365, y=0.317)", [Click(at=P(0.365, 0.317))]),
    ("toolcall_scroll", "Thought: Need to see more.\nAction: Scroll down.\nToolcall: scroll(-5)", [Scroll(dy=-5)]),
    ("toolcall_type", "Toolcall: type(content='hello')", [TypeText(text="hello")]),
    ("toolcall_in_block", "```python\nToolcall: click(x=0.5, y=0.5)\n```", [Click(at=P(0.5, 0.5))]),
    ("bare_click_inline", "I will click(x=0.12, y=0.34) now.", [Click(at=P(0.12, 0.34))]),
    ("bare_pyautogui_inline", "Answer: `pyautogui.click(x=0.88, y=0.07)`", [Click(at=P(0.88, 0.07))]),
    ("two_toolcalls", "Toolcall: click(x=0.1, y=0.9)\nToolcall: press('enter')", [Click(at=P(0.1, 0.9)), Press(key="enter")]),
    ("time_sleep", "time.sleep(3)", [Wait(seconds=3)]),
    ("finished_content", "finished(content='done it')", [Done(answer="done it")]),
    ("scroll_direction", "scroll(direction='down', amount=3)", [Scroll(dy=-3)]),
    # --- grounding outputs: points and boxes -------------------------------------------------------
    ("point_xy_parens", "(x=0.5, y=0.5)", [Click(at=P(0.5, 0.5))]),
    ("point_tuple", "The element is at (0.25, 0.6).", [Click(at=P(0.25, 0.6))]),
    ("bbox_2d_json", '{"bbox_2d": [0.28, 0.50, 0.52, 0.70]}', [Click(at=P(0.4, 0.6))]),
    ("bbox_pixels", "[100, 200, 300, 400]", [Click(at=P(200, 300))]),
    ("bbox_odd_pixels", "[101, 200, 300, 401]", [Click(at=P(200.5, 300.5))]),
    ("bbox_in_json_block", '```json\n[{"bbox_2d": [10, 20, 30, 40], "label": "OK"}]\n```', [Click(at=P(20, 30))]),
    ("point_list", "[0.75, 0.125]", [Click(at=P(0.75, 0.125))]),
    ("grounding_after_think", f"{T}Candidates: [0.9, 0.9, 0.95, 0.95] or (0.1, 0.1).{E}(x=0.31, y=0.62)", [Click(at=P(0.31, 0.62))]),
    # --- words -------------------------------------------------------------------------------------
    ("word_wait", "WAIT", [Wait()]),
    ("word_done_after_think", f"{T}Everything is saved.{E}DONE", [Done()]),
    ("word_fail", "## Action:\nThe task is infeasible.\n## Code:\nFAIL", [Fail()]),
    # --- thinking decoys and truncation ------------------------------------------------------------
    ("decoy_in_thinking", f"{T}Maybe pyautogui.click(x=0.9, y=0.9)? No, the button is lower.{E}## Code:\n```python\npyautogui.click(x=0.4, y=0.8)\n```",
     [Click(at=P(0.4, 0.8))]),
    ("decoy_only_in_thinking", f"{T}pyautogui.click(x=0.9, y=0.9){E}I am not sure what to do.", Rejected("no action")),
    ("last_end_marker_wins", f"{T}a{E} pyautogui.click(0.1, 0.1) {T}b{E}pyautogui.click(0.2, 0.3)", [Click(at=P(0.2, 0.3))]),
    ("truncated_thinking", f"{T}The button is at pyautogui.click(x=0.5, y=0.5) and then", Rejected("cut off")),
    ("empty_answer", f"{T}hmm{E}   ", Rejected("empty")),
    ("empty_text", "", Rejected("empty")),
    # --- garbage -----------------------------------------------------------------------------------
    ("prose_only", "I think we should look at the settings menu first.", Rejected("no action")),
    ("bad_syntax_block", "```python\npyautogui.click(x=0.5, y=\n```", Rejected("not valid python")),
    ("unknown_call", "```python\npyautogui.locateOnScreen('ok.png')\n```", Rejected("not an allowed action")),
    ("unknown_key", "```python\npyautogui.press('hyperdrive')\n```", Rejected("unknown key")),
    ("missing_y", "```python\npyautogui.click(x=0.5)\n```", Rejected("both x and y")),
    ("negative_coordinate", "pyautogui.click(x=-0.2, y=0.5)", Rejected("not a point")),
    ("relative_move", "```python\npyautogui.moveRel(10, 0)\n```", Rejected("relative")),
    ("mouse_down", "```python\npyautogui.mouseDown(0.1, 0.1)\n```", Rejected("mouseDown")),
    ("bad_status", "computer.terminate(status='maybe')", Rejected("status")),
    ("too_many_presses", "pyautogui.press('down', presses=1000)", Rejected("between 1 and 100")),
    ("click_prose_args", "Toolcall: click(the OK button)", Rejected("not a valid call")),
    ("held_key_during_click", "```python\npyautogui.keyDown('shift')\npyautogui.click(0.5, 0.5)\npyautogui.keyUp('shift')\n```",
     Rejected("held down")),
    ("loop", "```python\nfor i in range(3):\n    pyautogui.press('down')\n```", Rejected("For statements")),
    # --- hostile -----------------------------------------------------------------------------------
    ("dunder_import", "```python\n__import__('os').system('rm -rf ~')\n```", Rejected("only plain calls")),
    ("os_system", "```python\nimport os\nos.system('id')\n```", Rejected("importing os")),
    ("os_system_call_only", "```python\nos.system('id')\n```", Rejected("not an allowed action")),
    ("subprocess_prose", "Toolcall: subprocess.click(x=0.1, y=0.1)", Rejected("not an allowed action")),
    ("attribute_chain", "```python\npyautogui.click.__globals__['os'].system('id')\n```", Rejected("only plain calls")),
    ("chained_in_prose", "click(x=0.5, y=0.5).__class__.__bases__", Rejected("chained")),
    ("eval_argument", "```python\npyautogui.write(eval('1+1'))\n```", Rejected("eval() is not allowed in a value")),
    ("name_argument", "```python\npyautogui.click(x=secret, y=0.5)\n```", Rejected("is not a value")),
    ("comprehension", "```python\npyautogui.click(x=[i for i in range(9**9)], y=1)\n```", Rejected("ListComp")),
    ("lambda", "```python\npyautogui.click(x=(lambda: 0.5)(), y=0.5)\n```", Rejected("not allowed")),
    ("fstring", "```python\npyautogui.write(f'{open(\"/etc/passwd\").read()}')\n```", Rejected("JoinedStr")),
    ("assignment", "```python\npyautogui.FAILSAFE = False\npyautogui.click(0.5, 0.5)\n```", Rejected("only assignments to plain names")),
    ("huge_number", "pyautogui.click(x=10**100, y=0.5)", Rejected("BinOp")),
    ("huge_literal", "pyautogui.click(x=1" + "0" * 400 + ", y=0.5)", Rejected("far too large")),
    ("nan_inf", "pyautogui.click(x=1e999, y=0.5)", Rejected("finite")),
    ("nan_call", "pyautogui.click(x=float('nan'), y=0.5)", Rejected("must be a number")),
    ("starred", "```python\npyautogui.hotkey(*['ctrl', 'c'])\n```", Rejected("not allowed")),
    ("kwargs_splat", "```python\npyautogui.click(**{'x': 0.5, 'y': 0.5})\n```", Rejected("not allowed")),
    ("deep_nesting", "```python\npyautogui.click(x=" + "[" * 50 + "]" * 50 + ", y=1)\n```", Rejected("too")),
    ("megabyte", "pyautogui.write('" + "A" * 1_000_000 + "')", Rejected("characters long")),
]
