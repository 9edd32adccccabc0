"""Shared fixtures: a real Xvfb display per test session (or per test when a size is needed); the suite's parallel
workers (pytest-xdist, scripts/test.sh) and the real vLLM servers' schedule."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

# ---- parallel workers (pytest-xdist: scripts/test.sh runs `-n 2 --dist loadgroup`). Each worker is a session of its
# own: it takes X displays and TCP ports from ranges of its own, so two workers never race for one. Set before the
# test modules are imported (tests/osworld_support.py reads its port range at import).
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
if _WORKER.startswith("gw") and _WORKER[2:].isdigit():
    _K = int(_WORKER[2:])
    os.environ.setdefault("KIMI_CUA_DISPLAYS", f"{100 + 20 * _K}-{119 + 20 * _K}")  # else :90-:99, :80-:89
    os.environ.setdefault("KIMI_CUA_TEST_PORT_LOW", str(8500 + 20 * _K))  # else 8220-8239
    os.environ.setdefault("KIMI_CUA_TEST_PORT_HIGH", str(8519 + 20 * _K))
    os.environ.setdefault("KIMI_CUA_VLLM_PORTS", f"{8300 + 20 * _K}-{8319 + 20 * _K}")  # else 8100-8119

# One OpenMP thread in every process of the run (the real vLLM servers, the in-process transformers backend, the
# baseline's OCR): two workers already keep both cores busy, and an idle OpenMP thread spins on a core while it waits.
# Measured on a vLLM test server (tests/real_vllm.py) generating 800 tokens: 20.4 CPU-s with the default, 11.9 CPU-s
# with OMP_NUM_THREADS=1, the same wall time. Set before anything imports torch or starts a server.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Tests that must run in one worker, one after the other (xdist_group, honoured by `--dist loadgroup`):
# "real_vllm": every test of a real vLLM server (the schedule below starts each server once, in that worker);
# "fixed_x": the attack corpus and the sandbox tests, which use fixed displays (:70-:78) and ports (8180-8189).
FIXED_X_FILES = ("tests/safety/test_attack_corpus.py", "tests/safety/test_sandbox.py")

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
from tests.real_vllm import own_vllm_server, real_vllm, real_vllm_limited  # noqa: F401,E402
from tests.kimi_cua_serve import kimi_cua_serve  # noqa: F401,E402  (registers `kimi-cua serve` in POOL)
from tests.real_vllm import POOL  # noqa: E402

# ---- the real vLLM servers: each started once, ahead of its first test, stopped after its last, two at most at once.
# A start costs 50-150 s on 2 cores (minutes on a busy machine), mostly three Python processes importing torch and
# vLLM one after the other. The servers of tests/real_vllm.py's POOL (the shared ones, and `kimi-cua serve` of
# tests/models/test_serve_real_vllm.py) start in a background thread as soon as one of the two slots is free, in the
# order the session first needs them, so each start overlaps the tests that run before its first test.
MAX_SERVERS = 2
_FIRST: dict[str, int] = {}
_LAST: dict[str, int] = {}
_INDEX: dict[str, int] = {}
_OWN: set[int] = set()  # tests that start a server of their own (fixture ``own_vllm_server``): each holds a slot


def _needs_vllm(item) -> bool:
    names = getattr(item, "fixturenames", ())
    return "own_vllm_server" in names or any(name in names for name in POOL.starters)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(session, config, items) -> None:
    """The tests of `kimi-cua serve` (serve's own and the agent loop's) go last, the one that stops it with SIGINT
    (marked ``stops_its_server``) the very last: that server then starts while the tests of the others run, instead
    of waiting for a free slot between them. In a parallel run, the real-vLLM tests come first (their worker, the
    longest, then starts at once) and each test that must share a worker gets its group."""
    items.sort(key=lambda item: (bool(_WORKER) and not _needs_vllm(item),
                                 "kimi_cua_serve" in getattr(item, "fixturenames", ()),
                                 item.get_closest_marker("stops_its_server") is not None))
    for item in items:
        if _needs_vllm(item):
            item.add_marker(pytest.mark.xdist_group("real_vllm"))
        elif item.nodeid.split("::")[0] in FIXED_X_FILES:
            item.add_marker(pytest.mark.xdist_group("fixed_x"))


def pytest_collection_finish(session) -> None:
    _FIRST.clear()
    _LAST.clear()
    _INDEX.clear()
    _OWN.clear()
    for index, item in enumerate(session.items):
        _INDEX[item.nodeid] = index
        if "own_vllm_server" in getattr(item, "fixturenames", ()):
            _OWN.add(index)
        for name in POOL.starters:
            if name in getattr(item, "fixturenames", ()):
                _FIRST.setdefault(name, index)
                _LAST[name] = index


_RUNS_VLLM: list[bool] = [not _WORKER]  # a parallel worker starts servers once it has been given a real-vLLM test


def _schedule(index: int, config) -> None:
    """Before test ``index``: start in the background the servers needed soonest, while a slot is free."""
    if not _RUNS_VLLM[0]:
        return
    busy = sum(POOL.running(name) for name in _FIRST) + (index in _OWN)
    upcoming = sorted([(_FIRST[name], name) for name in _FIRST if _LAST[name] >= index and not POOL.started(name)]
                      + [(own, "") for own in _OWN if own > index])
    for _, name in upcoming[:max(0, MAX_SERVERS - busy)]:
        if name:  # "": a slot kept for a test's own server
            POOL.prestart(name, config._tmp_path_factory)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    if _needs_vllm(item):
        _RUNS_VLLM[0] = True  # in parallel runs, this worker has the "real_vllm" group: every such test comes here
    if (_FIRST or _OWN) and item.nodeid in _INDEX:
        _schedule(_INDEX[item.nodeid], item.config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    yield  # the test's own fixtures are torn down first (e.g. a module's client of the server)
    index = _INDEX.get(item.nodeid)
    if index is None:
        return
    for name in _FIRST:
        if _LAST[name] == index:
            POOL.stop(name)
    if nextitem is not None and nextitem.nodeid in _INDEX:
        _schedule(_INDEX[nextitem.nodeid], item.config)  # a slot just freed: start the next server now


_WORKER_EVENTS: list[str] = []  # the servers' events of parallel workers, collected by the controller


def pytest_sessionfinish(session) -> None:
    POOL.stop_all()  # whatever a failed, skipped or interrupted test left running
    if hasattr(session.config, "workeroutput"):  # a parallel worker: hand the events to the controller
        session.config.workeroutput["vllm_events"] = list(POOL.events)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error) -> None:
    _WORKER_EVENTS.extend(getattr(node, "workeroutput", {}).get("vllm_events", []))


def pytest_terminal_summary(terminalreporter) -> None:
    events = POOL.events + _WORKER_EVENTS
    if events:
        terminalreporter.write_sep("-", "real vLLM servers")
        for line in events:
            terminalreporter.write_line(line)


from tests.osworld_support import osworld_workers  # noqa: E402,F401  (one desktop-env worker per session)
