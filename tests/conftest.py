"""Shared fixtures: a real Xvfb display per test session (or per test when a size is needed)."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from envs.xvfb import VirtualDisplay
from tests.e2e_support import start_app


def _require_xvfb() -> None:
    if shutil.which("Xvfb") is None:
        # A missing Xvfb is a broken test machine, not a reason to pass: fail loudly.
        pytest.fail("Xvfb is not installed: run `bash .ci/run` or apt-get install -y xvfb openbox xdotool xclip")


@pytest.fixture(scope="session")
def xdisplay() -> Iterator[VirtualDisplay]:
    """A 1280x720 Xvfb desktop with openbox, shared by the session. DISPLAY is set for this process."""
    _require_xvfb()
    old = os.environ.get("DISPLAY")
    with VirtualDisplay(1280, 720) as vd:
        os.environ["DISPLAY"] = vd.display
        yield vd
    if old is None:
        os.environ.pop("DISPLAY", None)
    else:
        os.environ["DISPLAY"] = old


@pytest.fixture
def make_display():
    """Factory for a private display of a given size: ``vd = make_display(3840, 2160)``."""
    _require_xvfb()
    started: list[VirtualDisplay] = []

    def factory(width: int = 1280, height: int = 720, window_manager: str | None = "openbox") -> VirtualDisplay:
        vd = VirtualDisplay(width, height, window_manager=window_manager).start()
        started.append(vd)
        return vd

    yield factory
    for vd in started:
        vd.stop()


@pytest.fixture
def app(xdisplay, tmp_path):
    """The Tk target app (tests/apps/target_app.py) on the session display; yields its state file."""
    state = tmp_path / "state.json"
    proc = start_app(xdisplay.display, state)
    yield state
    proc.terminate()
    proc.wait(timeout=5)
from tests.real_vllm import real_vllm, real_vllm_limited  # noqa: F401,E402
from tests import real_vllm as _real_vllm  # noqa: E402

_LAST_USER: dict[str, str] = {}  # shared real-vLLM fixture -> node id of the last test (of this run) that uses it


def pytest_collection_finish(session) -> None:
    """Note the last test that needs each shared real vLLM: the server stops right after it (3.5 GB and a share of
    the CPU each, and tests/real_vllm.py keeps at most two of them running with the module servers)."""
    _LAST_USER.clear()
    for item in session.items:
        for name in ("real_vllm", "real_vllm_limited"):
            if name in getattr(item, "fixturenames", ()):
                _LAST_USER[name] = item.nodeid


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # the test's own fixtures are torn down first (e.g. a module's client of the server)
    for name, nodeid in _LAST_USER.items():
        if nodeid == item.nodeid:
            _real_vllm.stop_shared(name)
from tests.osworld_support import osworld_workers  # noqa: E402,F401  (one desktop-env worker per session)
