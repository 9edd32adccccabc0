"""OSWorld's own code in its own interpreter: a worker that runs inside .venv-osworld (scripts/install_osworld.sh).

Started by kimi-cua as ``.venv-osworld/bin/python agent/evals/osworld_worker.py`` (by file path: this file imports
only the standard library and ``desktop_env``, never kimi-cua, whose dependencies are not in that venv). It speaks
JSON lines: one request object per line on stdin, one answer per line on the original stdout (everything the
wheel prints or logs goes to stderr). It keeps one ``desktop_env.desktop_env.DesktopEnv`` for the session, pointed
at an OSWorld guest (ours, ``kimi-cua guest``, or a VM's server) instead of a VM provider, so ``reset`` runs the
wheel's ``SetupController``, ``step`` the wheel's ``_fix_pyautogui_less_than_bug`` and ``PythonController``, and
``evaluate`` the wheel's metrics and getters - unchanged.

Requests (``op``):
- ``connect``: ``{guest_url, chromium_port, vlc_port, cache_dir, screen_size, client_password}``;
- ``reset``: ``{task}`` -> ``{ok}`` (setup steps ran; an exception is an answer with ``error`` and ``traceback``);
- ``step``: ``{actions, pause}`` -> ``{ok, results}`` (each through ``DesktopEnv.step``);
- ``evaluate``: ``{task, actions}`` -> ``{score}`` (``actions``: the episode's action history, e.g. ``["DONE"]``;
  ``task`` again when this worker did not run the setup);
- ``inventory``: -> the wheel's metric names, getter types and setup types (for preflight and coverage);
- ``quit``.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import traceback
import urllib.parse
from typing import Any

PROTOCOL_OUT = None  # the real stdout; sys.stdout is pointed at stderr so the wheel's prints never mix in


def _answer(value: dict[str, Any]) -> None:
    PROTOCOL_OUT.write(json.dumps(value, default=str) + "\n")
    PROTOCOL_OUT.flush()


def make_env(request: dict[str, Any]) -> Any:
    """A DesktopEnv attached to a running guest: everything __init__ sets, without a VM provider."""
    from desktop_env.controllers.python import PythonController
    from desktop_env.controllers.setup import SetupController
    from desktop_env.desktop_env import DesktopEnv

    url = urllib.parse.urlsplit(request["guest_url"])
    ip, port = url.hostname or "127.0.0.1", int(url.port or 5000)
    width, height = request.get("screen_size") or (1920, 1080)
    env = DesktopEnv.__new__(DesktopEnv)
    env.region = None
    env.provider_name = "kimi-cua-guest"
    env.enable_proxy = False
    env.current_use_proxy = False
    env.client_password = request.get("client_password", "password")
    env.screen_width, env.screen_height = int(width), int(height)
    env.server_port = port
    env.chromium_port = int(request.get("chromium_port", 9222))
    env.vnc_port = 8006
    env.vlc_port = int(request.get("vlc_port", 8080))
    env.os_type = "Ubuntu"
    env.is_environment_used = False  # never revert a snapshot: there is none
    env.path_to_vm = None
    env.snapshot_name = "init_state"
    env.cache_dir_base = request.get("cache_dir", "cache")
    env.headless = True
    env.require_a11y_tree = bool(request.get("require_a11y_tree", False))
    env.require_terminal = False
    env.vm_ip = ip
    env.controller = PythonController(vm_ip=ip, server_port=port)
    env.setup_controller = SetupController(vm_ip=ip, server_port=port, chromium_port=env.chromium_port,
                                           vlc_port=env.vlc_port, cache_dir=env.cache_dir_base,
                                           client_password=env.client_password, screen_width=env.screen_width,
                                           screen_height=env.screen_height)
    env.instruction = None
    env.action_space = request.get("action_space", "pyautogui")
    env._traj_no = -1
    env._step_no = 0
    env.action_history = []
    return env


def inventory() -> dict[str, Any]:
    import inspect

    from desktop_env.controllers.setup import SetupController
    from desktop_env.evaluators import getters, metrics

    return {
        "metrics": sorted(n for n, f in vars(metrics).items() if callable(f) and not n.startswith("_")
                          and not inspect.isclass(f) and not inspect.ismodule(f)),
        "getters": sorted(n[len("get_"):] for n, f in vars(getters).items() if n.startswith("get_") and callable(f)),
        "setup": sorted(n[1:-len("_setup")] for n in dir(SetupController) if n.startswith("_")
                        and n.endswith("_setup") and not n.startswith("__")),
        "easyocr_stub": bool(getattr(sys.modules.get("easyocr"), "__kimi_cua_stub__", False)),
    }


def handle(env: Any, request: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    op = request.get("op")
    if op == "connect":
        return make_env(request), {"ok": True}
    if op == "inventory":
        return env, inventory()
    if env is None:
        raise RuntimeError(f"{op!r} before connect")
    if op == "reset":
        env.reset(task_config=request["task"])
        return env, {"ok": True}
    if op == "step":
        results = []
        for action in request.get("actions", []):
            _obs, reward, done, info = env.step(action, float(request.get("pause", 0)))
            results.append({"done": done, "info": info})
        return env, {"ok": True, "results": results}
    if op == "evaluate":
        if request.get("task") is not None:
            env._set_task_info(request["task"])
            env.setup_controller.reset_cache_dir(env.cache_dir)
        if "actions" in request:
            env.action_history = list(request["actions"])
        return env, {"score": float(env.evaluate())}
    raise ValueError(f"unknown op {op!r}")


def main() -> int:
    global PROTOCOL_OUT
    PROTOCOL_OUT = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    logging.basicConfig(level=os.environ.get("KIMI_CUA_OSWORLD_LOG", "WARNING"), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    env = None
    try:
        import desktop_env.desktop_env  # noqa: F401  (imports every metric and getter: fail here, once)
    except Exception as exc:
        _answer({"error": f"desktop_env does not import: {type(exc).__name__}: {exc}",
                 "traceback": traceback.format_exc()})
        return 1
    _answer({"ready": True, "python": sys.executable})
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError as exc:
            _answer({"error": f"not JSON: {exc}"})
            continue
        if request.get("op") == "quit":
            _answer({"ok": True})
            break
        try:
            env, answer = handle(env, request)
        except Exception as exc:  # the answer names it; the session goes on
            answer = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
        _answer(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
