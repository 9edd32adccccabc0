"""``kimi-cua doctor``: check the display, input, clipboard and model server, and say how to fix each failure."""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from pydantic import BaseModel

from agent.models.vllm import (
    DEFAULT_BASE_URL,
    ContextLengthExceeded,
    EmptyReply,
    EncoderCacheTooSmall,
    ServerError,
    TooManyImages,
    VLLMClient,
    image_part,
)
from agent.cli.validate import DEFAULT_SIZE, positive_float, positive_int, screen_size
from agent.tokens import IMAGE_WRAPPER_TOKENS, image_tokens, in_token_limit_for

Status = Literal["ok", "warn", "fail", "skip"]
X11_PACKAGES = "apt-get install -y xvfb xauth openbox xdotool xclip x11-utils"
TEXT_MARGIN = 512  # tokens a step's prompt spends besides its screenshots (system prompt, task, history text)


class Check(BaseModel):
    """One row of the doctor's table. A failing ``required`` check makes the exit code 1."""

    name: str
    status: Status
    detail: str
    fix: str = ""
    required: bool = True


class DoctorSettings(BaseModel):
    """The agent settings the server is checked against (the same flags as ``kimi-cua run``)."""

    base_url: str = DEFAULT_BASE_URL
    model: str | None = None
    api_key: str | None = None
    max_context: int | None = None  # None: the agent uses the server's max_model_len
    max_images: int = 64
    max_tokens: int | None = None  # the agent's reply limit (None: the variant's default, as `run` does)
    size: tuple[int, int] | None = None  # the screenshot size `run` will send (None: the screen's, else 1920x1080)
    timeout: float = 30.0


class ScreenInfo(BaseModel):
    width: int
    height: int
    monitors: int


# ---- display ---------------------------------------------------------------------------------------------

_INPUT_PROBE = """
import json, pyautogui
pyautogui.FAILSAFE = False
pyautogui.PAUSE = 0
width, height = pyautogui.size()
before = pyautogui.position()
target = (width // 3 + 7, height // 3 + 5)
pyautogui.moveTo(*target)
got = pyautogui.position()
pyautogui.moveTo(before.x, before.y)
print(json.dumps({"size": [width, height], "target": list(target), "got": [got.x, got.y]}))
"""


def display_checks(display: str | None) -> tuple[list[Check], ScreenInfo | None]:
    """DISPLAY, geometry (mss), a screenshot, pointer input (pyautogui in a child process) and the clipboard."""
    if not display:
        return [Check(name="display", status="fail", detail="DISPLAY is not set",
                      fix="run inside an X11 session, export DISPLAY=:0, or use --env virtual (private Xvfb)")], None
    rows: list[Check] = []
    try:
        import mss
    except ImportError:
        return [Check(name="display", status="fail", detail="mss is not installed", fix="pip install mss")], None
    try:
        with getattr(mss, "MSS", mss.mss)(display=display) as grabber:
            monitors = grabber.monitors[1:]
            primary = monitors[0]
            info = ScreenInfo(width=primary["width"], height=primary["height"], monitors=len(monitors))
            layout = ", ".join(f"{m['width']}x{m['height']}+{m['left']}+{m['top']}" for m in monitors)
            rows.append(Check(name="display", status="ok", detail=f"{display}: {len(monitors)} monitor(s) {layout}"))
            started = time.perf_counter()
            shot = grabber.grab(primary)
            took = (time.perf_counter() - started) * 1000
            if shot.width != info.width or shot.height != info.height or not shot.rgb:
                rows.append(Check(name="screenshot", status="fail", detail=f"got {shot.width}x{shot.height}",
                                  fix="check the X server's screen configuration (xdpyinfo)"))
            else:
                rows.append(Check(name="screenshot", status="ok",
                                  detail=f"{shot.width}x{shot.height} in {took:.1f} ms"))
    except Exception as exc:  # mss raises ScreenShotError and Xlib errors; all mean the same to a user
        return [Check(name="display", status="fail", detail=f"cannot open {display}: {exc}",
                      fix=f"check that the X server on {display} runs and allows this user (xhost/XAUTHORITY); "
                      f"for a private desktop use --env virtual ({X11_PACKAGES})")], None
    rows.append(input_check(display, info))
    rows.append(clipboard_check(display))
    return rows, info


def input_check(display: str, screen: ScreenInfo) -> Check:
    env = dict(os.environ, DISPLAY=display)
    try:
        done = subprocess.run([sys.executable, "-c", _INPUT_PROBE], env=env, capture_output=True, text=True,
                              timeout=30)
    except subprocess.TimeoutExpired:
        return Check(name="input", status="fail", detail="pyautogui hung for 30 s",
                     fix="check the X server; another client may grab the pointer")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return Check(name="input", status="fail", detail=f"pyautogui failed: {last[:160]}",
                     fix="pip install pyautogui python-xlib (in one command, so the old python3-xlib is not used)")
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    if probe["got"] != probe["target"]:
        return Check(name="input", status="fail",
                     detail=f"moved the pointer to {probe['target']}, it is at {probe['got']}",
                     fix="pointer moves do not arrive: check that XTEST is enabled and nothing grabs the pointer")
    size = probe["size"]
    if size != [screen.width, screen.height] and screen.monitors == 1:
        return Check(name="input", status="warn", required=False,
                     detail=f"input frame {size[0]}x{size[1]} differs from screenshot {screen.width}x{screen.height}",
                     fix="display scaling is on: keep --coords auto so points are converted with the scale")
    return Check(name="input", status="ok", detail=f"pointer moved to {probe['target']} and read back")


def clipboard_check(display: str) -> Check:
    fix = "apt-get install -y xclip (typing non-ASCII text pastes through the clipboard)"
    if shutil.which("xclip") is None:
        return Check(name="clipboard", status="fail", required=False, detail="xclip is not installed", fix=fix)
    env = dict(os.environ, DISPLAY=display)
    sample = f"kimi-cua doctor ✓ {os.getpid()}"
    try:
        # -loops 1: xclip serves one paste and exits (it otherwise lives on to own the selection).
        subprocess.run(["xclip", "-selection", "clipboard", "-loops", "1", "-i"], input=sample.encode(), env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=5, check=True)
        read = subprocess.run(["xclip", "-selection", "clipboard", "-o"], env=env, capture_output=True, timeout=5)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as exc:
        return Check(name="clipboard", status="fail", required=False, detail=f"xclip failed: {exc}", fix=fix)
    if read.stdout.decode(errors="replace") != sample:
        return Check(name="clipboard", status="fail", required=False,
                     detail=f"wrote {sample!r}, read back {read.stdout[:60]!r}",
                     fix="another clipboard manager may rewrite the clipboard; stop it")
    return Check(name="clipboard", status="ok", detail="xclip round trip with Unicode")


# ---- model server ----------------------------------------------------------------------------------------

def _tiny_png() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (28, 28), (200, 200, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def server_checks(settings: DoctorSettings, screen: ScreenInfo | None) -> list[Check]:
    """Reachability, served models, context, reply limit, one real-size screenshot and the image limit versus the
    agent's settings, round-trip time."""
    client = VLLMClient(settings.base_url, model=settings.model, api_key=settings.api_key,
                        timeout=settings.timeout, retries=0)
    try:
        return list(_server_rows(client, settings, screen))
    finally:
        client.close()


def _server_rows(client: VLLMClient, settings: DoctorSettings, screen: ScreenInfo | None) -> Iterator[Check]:
    names = ("served model", "context", "max tokens", "screenshot fit", "image limit", "round trip")
    try:
        started = time.perf_counter()
        served = client.models()
        took = (time.perf_counter() - started) * 1000
    except ServerError as exc:
        yield Check(name="model server", status="fail", detail=str(exc).split(": start it")[0][:200],
                    fix=f"start it with `kimi-cua serve` (GPU) or `kimi-cua serve --baseline` (CPU), or pass "
                    f"--base-url; tried {settings.base_url}")
        for name in names:
            yield Check(name=name, status="skip", detail="model server unreachable")
        return
    yield Check(name="model server", status="ok", detail=f"{settings.base_url} answered /models in {took:.0f} ms")
    listing = ", ".join(f"{m.id} (max_model_len {m.max_model_len})" for m in served) or "none"
    try:
        model = client.model
    except ServerError as exc:
        yield Check(name="served model", status="fail", detail=f"serves {listing}", fix=str(exc))
        for name in names[1:]:
            yield Check(name=name, status="skip", detail="no model chosen")
        return
    if model not in [m.id for m in served]:
        yield Check(name="served model", status="fail", detail=f"{model} is not served; the server has {listing}",
                    fix="pass --model with one of the served names")
        return
    yield Check(name="served model", status="ok", detail=listing)
    server_len = client.max_model_len()
    max_tokens = settings.max_tokens or client.defaults.max_tokens
    size = settings.size or ((screen.width, screen.height) if screen is not None else DEFAULT_SIZE)
    yield context_check(server_len, model, settings, size, max_tokens)
    yield max_tokens_check(server_len, model, size, max_tokens)
    yield screenshot_fit_check(client, server_len, size, max_tokens)
    yield image_limit_check(client, settings)
    yield round_trip_check(client)


def step_tokens(model: str, size: tuple[int, int]) -> int:
    """Prompt tokens of a step that sends one screenshot of ``size`` (our estimate: image rule + a text margin)."""
    return image_tokens(*size, in_token_limit_for(model)) + IMAGE_WRAPPER_TOKENS + TEXT_MARGIN


def context_check(server_len: int | None, model: str, settings: DoctorSettings, size: tuple[int, int],
                  max_tokens: int) -> Check:
    if server_len is None:
        return Check(name="context", status="warn", required=False, detail="the server does not report max_model_len",
                     fix="pass --max-context to the agent (vLLM reports it; other servers may not)")
    wanted = settings.max_context or server_len
    if wanted > server_len:
        return Check(name="context", status="fail",
                     detail=f"agent --max-context {wanted} > server max_model_len {server_len}",
                     fix=f"use --max-context {server_len}, or restart vLLM with --max-model-len {wanted}")
    detail = f"agent context {wanted} <= server max_model_len {server_len}"
    per_image = image_tokens(*size, in_token_limit_for(model)) + IMAGE_WRAPPER_TOKENS
    fit = max(0, (wanted - max_tokens) // per_image)
    detail += f"; holds ~{fit} screenshots of {size[0]}x{size[1]} ({per_image} tokens each)"
    if fit < min(settings.max_images, 3):
        return Check(name="context", status="warn", required=False, detail=detail,
                     fix="the agent will keep very few screenshots; raise --max-model-len or lower the screen size")
    return Check(name="context", status="ok", detail=detail)


def max_tokens_check(server_len: int | None, model: str, size: tuple[int, int], max_tokens: int) -> Check:
    """vLLM refuses a request whose max_tokens alone exceeds max_model_len (every step would fail)."""
    if server_len is None:
        return Check(name="max tokens", status="skip", required=False,
                     detail="the server does not report max_model_len")
    if max_tokens <= server_len:
        return Check(name="max tokens", status="ok", detail=f"reply limit {max_tokens} <= max_model_len {server_len}")
    room = server_len - step_tokens(model, size)
    fix = (f"pass --max-tokens {room} (what is left beside one {size[0]}x{size[1]} screenshot), or restart vLLM "
           f"with --max-model-len {max_tokens + step_tokens(model, size)} or more") if room > 0 else \
        f"restart vLLM with --max-model-len {max_tokens + step_tokens(model, size)} or more"
    return Check(name="max tokens", status="fail",
                 detail=f"reply limit {max_tokens} (--max-tokens) > server max_model_len {server_len}: vLLM refuses "
                 "such requests", fix=fix)


def _blank_png(size: tuple[int, int]) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 200, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def screenshot_fit_check(client: VLLMClient, server_len: int | None, size: tuple[int, int],
                         max_tokens: int) -> Check:
    """Send one screenshot of the size `run` sends: finds the encoder-cache limit and the context fit up front."""
    w, h = size
    content = [image_part(_blank_png(size), "image/png"), {"type": "text", "text": "Reply with OK."}]
    try:
        reply = client.complete([{"role": "user", "content": content}], max_tokens=8, temperature=0)
    except EncoderCacheTooSmall as exc:
        return Check(name="screenshot fit", status="fail",
                     detail=f"a {w}x{h} screenshot is {exc.item_tokens} image tokens, more than vLLM's encoder cache "
                     f"({exc.cache_size}): every step would be refused",
                     fix=f"restart vLLM with --max-num-batched-tokens {max(8192, exc.item_tokens)} or more "
                     "(`kimi-cua serve` sizes it), or send smaller screenshots (--size)")
    except ContextLengthExceeded as exc:
        return Check(name="screenshot fit", status="fail",
                     detail=f"one {w}x{h} screenshot does not fit max_model_len {exc.limit or server_len} "
                     f"({exc.requested or '?'} prompt tokens)",
                     fix="restart vLLM with a larger --max-model-len, or send smaller screenshots (--size)")
    except EmptyReply:
        return Check(name="screenshot fit", status="ok", detail=f"a {w}x{h} screenshot was accepted (empty reply)")
    except ServerError as exc:
        return Check(name="screenshot fit", status="fail", detail=f"a {w}x{h} screenshot was refused: "
                     f"{str(exc)[:200]}", fix="see the server log")
    prompt = reply.usage.prompt_tokens
    detail = f"a {w}x{h} screenshot was accepted ({prompt} prompt tokens)"
    if server_len is None or not prompt:
        return Check(name="screenshot fit", status="ok", detail=detail)
    room = server_len - prompt - TEXT_MARGIN  # a step's prompt also carries the task, system prompt, history text
    if room < max_tokens:
        return Check(name="screenshot fit", status="fail",
                     detail=f"{detail}; a step with it leaves ~{max(room, 0)} of max_model_len {server_len} for "
                     f"a {max_tokens}-token reply: vLLM cuts replies short",
                     fix=(f"pass --max-tokens {room} or less, " if room > 0 else "") +
                     f"restart vLLM with --max-model-len {prompt + TEXT_MARGIN + max_tokens} or more, or send "
                     "smaller screenshots (--size)")
    return Check(name="screenshot fit", status="ok", detail=f"{detail}; leaves ~{room} tokens for the reply")


def image_limit_check(client: VLLMClient, settings: DoctorSettings) -> Check:
    """Send ``max_images`` tiny images (vLLM does not report --limit-mm-per-prompt, so ask it)."""
    part = image_part(_tiny_png(), "image/png")
    content = [part] * settings.max_images + [{"type": "text", "text": "Reply with OK."}]
    try:
        client.complete([{"role": "user", "content": content}], max_tokens=8, temperature=0)
    except TooManyImages as exc:
        limit = exc.limit if exc.limit is not None else "its limit"
        return Check(name="image limit", status="fail",
                     detail=f"the server takes {limit} images per prompt, the agent sends up to {settings.max_images}",
                     fix=f"use --max-images {exc.limit or ''} for the agent, or restart vLLM with a larger "
                     f"--limit-mm-per-prompt (kimi-cua serve --max-images {settings.max_images})".replace("  ", " "))
    except ServerError as exc:
        return Check(name="image limit", status="fail", detail=f"a request with {settings.max_images} images "
                     f"failed: {str(exc)[:160]}", fix="see the server log")
    return Check(name="image limit", status="ok", detail=f"accepted {settings.max_images} images in one request")


def round_trip_check(client: VLLMClient) -> Check:
    try:
        # 8 tokens, not 1: a thinking model's first token alone may decode to whitespace, an "empty" answer.
        reply = client.complete([{"role": "user", "content": "Reply with OK."}], max_tokens=8, temperature=0)
    except ServerError as exc:
        return Check(name="round trip", status="fail", detail=str(exc)[:160], fix="see the server log")
    return Check(name="round trip", status="ok",
                 detail=f"{reply.latency_ms:.0f} ms for a reply of {reply.usage.completion_tokens} token(s) "
                 f"({reply.usage.prompt_tokens} prompt tokens)")


# ---- the whole run ---------------------------------------------------------------------------------------

@contextmanager
def _display_for(env: str, size: tuple[int, int]) -> Iterator[tuple[str | None, list[Check]]]:
    if env == "local":
        yield os.environ.get("DISPLAY"), []
        return
    from envs.base import DisplayError
    from envs.xvfb import VirtualDisplay

    try:
        vd = VirtualDisplay(*size).start()
    except DisplayError as exc:
        yield None, [Check(name="virtual display", status="fail", detail=str(exc).split(";")[0],
                           fix=X11_PACKAGES)]
        return
    try:
        yield vd.display, [Check(name="virtual display", status="ok",
                                 detail=f"Xvfb {vd.display} {size[0]}x{size[1]} + openbox")]
    finally:
        vd.stop()


def run_checks(settings: DoctorSettings, env: Literal["local", "virtual"] = "local") -> list[Check]:
    """Display checks (``local``: $DISPLAY; ``virtual``: a private Xvfb of ``settings.size``, as `run` would start)
    then the server checks, with a screenshot the size `run` will send."""
    if env == "virtual" and settings.size is None:
        settings = settings.model_copy(update={"size": DEFAULT_SIZE})
    with _display_for(env, settings.size or DEFAULT_SIZE) as (display, rows):
        if display is not None or not rows:
            more, screen = display_checks(display)
            rows += more
        else:
            screen = None
    return rows + server_checks(settings, screen)


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.required and c.status == "fail" for c in checks) else 0


def render_table(checks: list[Check]) -> str:
    marks = {"ok": "ok", "warn": "WARN", "fail": "FAIL", "skip": "skip"}
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        lines.append(f"{c.name:<{width}}  {marks[c.status]:<4}  {c.detail}")
        if c.fix and c.status in ("fail", "warn"):
            lines.append(f"{'':<{width}}        fix: {c.fix}")
    failed = [c.name for c in checks if c.required and c.status == "fail"]
    lines.append("all required checks passed" if not failed else f"failed: {', '.join(failed)}")
    return "\n".join(lines)


def handle(args: argparse.Namespace) -> int:
    settings = DoctorSettings(base_url=args.base_url, model=args.model, api_key=args.api_key,
                              max_context=args.max_context, max_images=args.max_images, max_tokens=args.max_tokens,
                              size=args.size, timeout=args.timeout)
    checks = run_checks(settings, args.env)
    if args.json:
        print(json.dumps([c.model_dump() for c in checks], indent=2))
    else:
        print(render_table(checks))
    return exit_code(checks)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("doctor", help="check display, input, clipboard and the model server",
                       description="Run every check and print a table with fixes. Exit 0 when all required "
                       "checks pass, 1 otherwise.")
    p.add_argument("--base-url", default=DEFAULT_BASE_URL, help=f"model server (default {DEFAULT_BASE_URL})")
    p.add_argument("--model", help="served model name (default: the only one served)")
    p.add_argument("--api-key", help="bearer token, if the server wants one")
    p.add_argument("--env", choices=["local", "virtual"], default="local",
                   help="check $DISPLAY (local) or a private Xvfb desktop (virtual)")
    p.add_argument("--max-context", type=positive_int, help="the agent's context tokens (default: the server's)")
    p.add_argument("--max-images", type=positive_int, default=64, help="screenshots per request the agent sends (default 64)")
    p.add_argument("--max-tokens", type=positive_int, help="the agent's reply limit (default: the variant's, as for run)")
    p.add_argument("--size", type=screen_size, metavar="WxH",
                   help="screenshot size the agent will send, and of the Xvfb desktop with --env virtual "
                   f"(default: the screen's; --env virtual: {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}, as run)")
    p.add_argument("--timeout", type=positive_float, default=30.0, help="seconds per server request (default 30)")
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(handler=handle)
