"""The CPU baseline grounder reads real screenshots over real HTTP and points inside the named text."""
from __future__ import annotations

import io
import json
import selectors
import re
import subprocess
import sys
import textwrap
import time

import httpx
import pytest
from PIL import Image, ImageDraw, ImageFont

from agent.models.baseline import BASELINE_MODEL, BaselineServer, extract_target
from agent.models.vllm import RequestRefused, VLLMClient, image_part
from tests.e2e_support import read_state, run_cli

try:
    import rapidocr_onnxruntime  # noqa: F401
except ImportError:  # a missing engine is a broken test machine, not a reason to skip
    pytest.fail("the baseline grounder needs RapidOCR: pip install rapidocr-onnxruntime", pytrace=False)

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
OFFICIAL = ("Please observe the screenshot, please locate the following elements with action and point."
            "<instruction> {}")
CLICK = re.compile(r"pyautogui\.(click|doubleClick|rightClick)\(x=([0-9.]+), y=([0-9.]+)\)")


def render(labels: dict[str, tuple[int, int]], size: tuple[int, int] = (1280, 720)) -> tuple[bytes, dict[str, tuple]]:
    """A PNG with each label drawn at its position; returns the bytes and each word's pixel box."""
    image = Image.new("RGB", size, (236, 236, 236))
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 20)
    boxes: dict[str, tuple] = {}
    for text, (x, y) in labels.items():
        draw.text((x, y), text, fill="black", font=font)
        offset = 0
        for word in text.split(" "):
            if word:
                start = draw.textlength(text[:offset], font=font)
                x0, y0, x1, y1 = draw.textbbox((x + start, y), word, font=font)
                boxes[word] = (x0, y0, x1, y1)
            offset += len(word) + 1
        boxes[text] = draw.textbbox((x, y), text, font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), boxes


def point_in_pixels(text: str, size: tuple[int, int]) -> tuple[str, float, float]:
    match = CLICK.search(text)
    assert match, f"no pyautogui click in the reply: {text!r}"
    return match.group(1), float(match.group(2)) * size[0], float(match.group(3)) * size[1]


def inside(x: float, y: float, box: tuple, slack: float = 2.0) -> bool:
    return box[0] - slack <= x <= box[2] + slack and box[1] - slack <= y <= box[3] + slack


def ask(client: VLLMClient, prompt: str, png: bytes, **kw) -> str:
    return client.complete([{"role": "user", "content": [image_part(png, "image/png"),
                                                         {"type": "text", "text": prompt}]}], **kw).text


LABELS = {"File  Edit  View  Help": (40, 20), "Open recent documents": (500, 330), "Submit": (1100, 660),
          "Cancel": (960, 660)}


@pytest.fixture(scope="module")
def server():
    with BaselineServer(port=0) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    c = VLLMClient(server.base_url, retries=0)
    yield c
    c.close()


@pytest.fixture(scope="module")
def screen():
    return render(LABELS)


@pytest.mark.parametrize("instruction, word", [
    ("Submit button", "Submit"),
    ("Cancel", "Cancel"),
    ("Open recent documents", "Open recent documents"),
    ("Edit menu", "Edit"),  # one word inside a longer OCR line
    ("Help", "Help"),
])
def test_official_grounding_prompt_points_inside_the_text(client, screen, instruction, word):
    png, boxes = screen
    reply = ask(client, OFFICIAL.format(instruction), png)
    kind, x, y = point_in_pixels(reply, (1280, 720))
    assert kind == "click"
    assert inside(x, y, boxes[word]), (x, y, boxes[word], reply)


def test_reply_is_in_kimi_format_with_thinking_action_and_code(client, screen):
    png, _ = screen
    reply = client.complete([{"role": "user", "content": [image_part(png), {"type": "text",
                                                                            "text": OFFICIAL.format("Submit")}]}])
    assert reply.text.startswith("◁think▷") and "◁/think▷" in reply.text
    assert reply.thinking and not reply.truncated
    assert reply.summary.startswith("## Action:\n")
    assert "## Code:\n```python\npyautogui.click(x=0." in reply.summary
    assert reply.model == BASELINE_MODEL and reply.usage.completion_tokens > 0


def test_streaming_deltas_add_up_to_the_same_answer(client, screen):
    png, boxes = screen
    deltas: list[str] = []
    reply = client.complete([{"role": "user", "content": [image_part(png), {"type": "text",
                                                                            "text": 'Click "Cancel".'}]}],
                            stream=True, on_delta=deltas.append)
    assert len(deltas) > 1 and "".join(deltas) == reply.text
    _, x, y = point_in_pixels(reply.text, (1280, 720))
    assert inside(x, y, boxes["Cancel"])
    assert reply.usage.total_tokens > 0


def test_agent_prompt_uses_the_last_screenshot_of_the_conversation(client):
    old, old_boxes = render({"Save": (100, 100)})
    new, new_boxes = render({"Save": (900, 500), "Quit": (100, 600)})
    messages = [
        {"role": "system", "content": "You are a GUI agent. Answer with ## Action and ## Code."},
        {"role": "user", "content": [image_part(old), {"type": "text", "text": "Task: save the file."}]},
        {"role": "assistant",
         "content": "## Action:\nClick Save.\n## Code:\n```python\npyautogui.click(x=0.1, y=0.15)\n```"},
        {"role": "user",
         "content": [image_part(new), {"type": "text", "text": "Now double-click on the Save button."}]},
    ]
    reply = client.complete(messages)
    kind, x, y = point_in_pixels(reply.text, (1280, 720))
    assert kind == "doubleClick"
    assert inside(x, y, new_boxes["Save"]) and not inside(x, y, old_boxes["Save"])


def test_text_that_is_not_on_screen_gives_a_failure_terminate(client, screen):
    png, _ = screen
    reply = ask(client, OFFICIAL.format("Preferences"), png)
    assert 'computer.terminate(status="failure"' in reply
    assert "Preferences" in reply and "pyautogui" not in reply


def test_request_without_an_image_gives_a_failure_terminate(client):
    reply = client.complete([{"role": "user", "content": "click OK"}])
    assert 'computer.terminate(status="failure"' in reply.text and "no screenshot" in reply.text


def test_remote_image_url_is_refused_with_a_reason(client):
    with pytest.raises(RequestRefused) as info:
        client.complete([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://example.invalid/x.png"}},
            {"type": "text", "text": "click OK"}]}])
    assert info.value.status == 400 and "data: URLs" in info.value.server_message


def test_models_and_health_speak_vllms_protocol(server, client):
    served = client.models()
    assert [m.id for m in served] == [BASELINE_MODEL] and served[0].max_model_len == 131072
    assert client.model == BASELINE_MODEL
    assert httpx.get(server.base_url.removesuffix("/v1") + "/health").status_code == 200


@pytest.mark.parametrize("prompt, phrase, kind", [
    (OFFICIAL.format("Submit button"), "Submit", "click"),
    ('Click "Save As" in the dialog', "Save As", "click"),
    ("right-click the icon labelled Trash.", "Trash", "rightClick"),
    ("double-click on the File menu", "File", "doubleClick"),
    ("Click the 'OK' button", "OK", "click"),
])
def test_instruction_target_is_extracted_from_official_and_agent_prompts(prompt, phrase, kind):
    target = extract_target(prompt)
    assert phrase in target.phrases and target.kind == kind


TK_APP = textwrap.dedent("""
    import sys, tkinter as tk
    root = tk.Tk(); root.geometry("1280x720+0+0"); root.configure(bg="white")
    def pressed(name):
        print("pressed", name, flush=True)
    for i, name in enumerate(["Apply changes", "Discard", "Show details"]):
        tk.Button(root, text=name, font=("DejaVu Sans", 16), command=lambda n=name: pressed(n)).place(
            x=150 + 350 * i, y=200 + 150 * i)
    root.after(200, lambda: print("ready", flush=True))
    root.mainloop()
""")


def read_line(proc: subprocess.Popen, timeout: float = 10.0) -> str:
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    ready = selector.select(timeout)
    selector.close()
    assert ready, f"the Tk app printed nothing within {timeout} s"
    return proc.stdout.readline().strip()


def test_grounded_click_presses_the_real_tk_button_on_xvfb(xdisplay, client):
    import mss
    import pyautogui

    app = subprocess.Popen([sys.executable, "-c", TK_APP], env=xdisplay.env, stdout=subprocess.PIPE, text=True)
    try:
        assert read_line(app) == "ready"
        time.sleep(0.5)  # let openbox map and draw the window
        with getattr(mss, "MSS", mss.mss)() as grabber:
            shot = grabber.grab(grabber.monitors[1])
            png = mss.tools.to_png(shot.rgb, shot.size)
        reply = ask(client, OFFICIAL.format("Show details"), png)
        _, x, y = point_in_pixels(reply, (shot.width, shot.height))
        pyautogui.PAUSE = 0
        pyautogui.click(round(x), round(y))
        assert read_line(app) == "pressed Show details"
    finally:
        app.terminate()
        app.wait(timeout=5)


def test_kimi_cua_run_with_the_baseline_presses_the_button_and_finishes(xdisplay, app, server, tmp_path):
    """The newcomer path with no GPU: the real CLI, the baseline server reading real screenshots, a real app."""
    out = tmp_path / "run"
    proc = run_cli(["run", "click 'Press me'", "--base-url", server.base_url, "--out", str(out), "--max-steps", "4"],
                   env_display=xdisplay.display)
    assert proc.returncode == 0, proc.stderr
    assert read_state(app)["pressed"] == 1
    steps = [json.loads(line) for line in (out / "trajectory.jsonl").read_text().splitlines()]
    assert [s["action"]["type"] for s in steps] == ["click", "done"]
    assert steps[0]["usage"]["prompt_tokens"] < 5000  # images counted by Kimi-VL's rule, not by base64 length


# ---- kimi-cua's own message layout (issue 19): the task and the step line in one message; a skipped step -------
def agent_messages(task: str, png: bytes, steps: list[tuple[str, str]] = (), note: str = "") -> list[dict]:
    """Messages as kimi-cua's loop lays them out: the task opens the first user message, each user message ends
    with the step line (prompts/step.txt), earlier answers are assistant messages."""
    from prompts import render

    def step_text(n: int, extra: str = "") -> str:
        return render("step", step=n, max_steps=20, width=1280, height=720, note=extra)

    messages: list[dict] = [{"role": "system", "content": "You are a GUI agent."}]
    lead = [{"type": "text", "text": render("task", task=task)}]
    for n, (_user, answer) in enumerate(steps, 1):
        messages.append({"role": "user", "content": lead + [image_part(png, "image/png"),
                                                            {"type": "text", "text": step_text(n)}]})
        messages.append({"role": "assistant", "content": answer})
        lead = []
    messages.append({"role": "user", "content": lead + [image_part(png, "image/png"),
                                                        {"type": "text", "text": step_text(len(steps) + 1, note)}]})
    return messages


def test_the_task_not_the_step_line_is_the_instruction_when_both_arrive_in_one_message(client, screen):
    png, boxes = screen
    from agent.models.baseline.server import instruction_text

    messages = agent_messages("Press the Submit button", png)
    assert instruction_text(messages) == "Press the Submit button"
    kind, x, y = point_in_pixels(client.complete(messages).text, (1280, 720))
    assert kind == "click" and inside(x, y, boxes["Submit"])


def test_after_a_skip_the_grounder_clicks_again_instead_of_claiming_the_click(client, screen):
    png, boxes = screen
    first = client.complete(agent_messages("Press the Submit button", png)).text
    answered = [("", first)]
    # the click ran: the same answer again means the one-shot grounder is done
    assert 'terminate(status="success")' in client.complete(agent_messages("Press the Submit button", png,
                                                                           answered)).text
    # the click was skipped in the debugger: the loop says so, and the grounder clicks again
    skipped = "\nYour previous action (click (1130, 670)) was skipped by the user and did not run."
    again = client.complete(agent_messages("Press the Submit button", png, answered, note=skipped)).text
    kind, x, y = point_in_pixels(again, (1280, 720))
    assert kind == "click" and inside(x, y, boxes["Submit"]) and "terminate" not in again

