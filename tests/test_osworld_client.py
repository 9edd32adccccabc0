"""The OSWorld in-VM server client over real HTTP on an Xvfb desktop.

Runs against OSWorld's real server code when it can be found (see tests/osworld_server.py: an OSWorld
checkout via $OSWORLD_DIR; no desktop-env release on PyPI ships it), reported as skipped with the reason
otherwise, or failed when $KIMI_CUA_REQUIRE_OSWORLD_SERVER=1. The same tests always run against the
stand-in server that mirrors the real routes and answer shapes.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from actions.types import Click, Hotkey, Point, TypeText, Wait
from envs.base import Environment
from agent.evals.local_tasks import APPS_DIR
from envs.osworld_client import OSWorldServerClient, OSWorldServerError, OSWorldVMEnvironment, png_size
from envs.xvfb import VirtualDisplay
from tests.osworld_server import OSWorldServer, ServerSourceUnavailable
from tests.osworld_standin import StandInOSWorldServer

WIDTH, HEIGHT = 1024, 768


@pytest.fixture(scope="module")
def desktop():
    with VirtualDisplay(WIDTH, HEIGHT) as vd:
        yield vd


@pytest.fixture(scope="module", params=["standin", "real"])
def server_url(request, desktop):
    if request.param == "standin":
        with StandInOSWorldServer(desktop.env) as server:
            yield server.base_url
        return
    try:
        server = OSWorldServer.start_on(desktop.env)
    except ServerSourceUnavailable as exc:
        if os.environ.get("KIMI_CUA_REQUIRE_OSWORLD_SERVER") == "1":
            pytest.fail(str(exc))
        pytest.skip(f"real OSWorld server not available: {exc}")
    with server.start():
        yield server.base_url


@pytest.fixture
def client(server_url):
    c = OSWorldServerClient(server_url, python=sys.executable)
    yield c
    c.close()


def test_platform_and_screen_size_describe_the_desktop(client):
    assert client.platform() == "Linux"
    assert client.screen_size() == (WIDTH, HEIGHT)


def test_screenshot_is_a_png_of_the_whole_screen(client):
    assert png_size(client.screenshot()) == (WIDTH, HEIGHT)


def test_run_reports_output_and_exit_code(client):
    ok = client.run(["echo", "hello from the vm"])
    assert ok.ok and ok.output == "hello from the vm\n"
    failed = client.run("exit 3", shell=True)
    assert not failed.ok and failed.returncode == 3


def test_environment_observes_with_screen_geometry(server_url):
    env = OSWorldVMEnvironment(server_url, python=sys.executable, settle_seconds=0)
    try:
        assert isinstance(env, Environment)
        obs = env.observe()
        assert (obs.width, obs.height) == (WIDTH, HEIGHT)
        assert obs.geometry.monitor.width == WIDTH and obs.geometry.monitor.scale == 1.0
        assert obs.image.startswith(b"\x89PNG")
    finally:
        env.close()


def test_click_runs_as_generated_code_and_moves_the_pointer(server_url, client):
    env = OSWorldVMEnvironment(server_url, python=sys.executable, settle_seconds=0)
    try:
        result = env.execute(Click(at=Point(x=321, y=234)))
        assert result.ok, result.error
        assert client.cursor_position() == (321, 234)
        assert env.execute(Wait(seconds=0)).ok
    finally:
        env.close()


def test_typing_and_hotkey_reach_an_app_on_the_desktop(server_url, desktop, tmp_path: Path):
    target = tmp_path / "typed.txt"
    app = subprocess.Popen([sys.executable, str(APPS_DIR / "tk_editor.py"), str(target)], env=desktop.env)
    env = OSWorldVMEnvironment(server_url, python=sys.executable, settle_seconds=0)
    try:
        subprocess.run(["xdotool", "search", "--sync", "--name", "Editor - typed.txt"], env=desktop.env,
                       check=True, capture_output=True, timeout=20)
        time.sleep(0.3)
        assert env.execute(Click(at=Point(x=300, y=300))).ok  # into the text area
        assert env.execute(TypeText(text="sent through /execute")).ok
        assert env.execute(Hotkey(keys=["ctrl", "s"])).ok
        deadline = time.monotonic() + 5
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert target.read_text() == "sent through /execute"
    finally:
        env.close()
        app.terminate()
        app.wait(timeout=5)


def test_failed_action_reports_the_vm_error(server_url):
    env = OSWorldVMEnvironment(server_url, python="/nonexistent/python", settle_seconds=0)
    try:
        result = env.execute(Click(at=Point(x=1, y=1)))
        assert not result.ok and result.error
    finally:
        env.close()


def test_accessibility_tree_is_none_without_at_spi(client):
    assert client.accessibility_tree() is None


def test_unreachable_server_error_names_the_url():
    client = OSWorldServerClient("http://127.0.0.1:9", timeout=2)
    with pytest.raises(OSWorldServerError, match="127.0.0.1:9.*unreachable"):
        client.platform()
