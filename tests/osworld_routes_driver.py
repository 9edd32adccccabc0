"""Runs INSIDE .venv-osworld: desktop-env's own PythonController, SetupController and getters against a guest.

``python tests/osworld_routes_driver.py REQUEST.json`` prints one JSON object: what each call returned. Imports only
the standard library and desktop_env (kimi-cua is not installed in that venv).
"""
from __future__ import annotations

import base64
import json
import os
import sys
import time
import traceback


def main() -> int:
    request = json.loads(open(sys.argv[1], encoding="utf-8").read())
    real_stdout = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # the wheel prints: keep stdout for the answer
    sys.stdout = sys.stderr
    from desktop_env.controllers.python import PythonController
    from desktop_env.controllers.setup import SetupController
    from desktop_env.evaluators import getters

    port = request["port"]
    cache = request["cache"]
    pc = PythonController(vm_ip="127.0.0.1", server_port=port)
    pc.retry_interval = 0.2  # the wheel's own retries, shortened: a failing route fails fast
    sc = SetupController(vm_ip="127.0.0.1", server_port=port, chromium_port=request["chromium_port"],
                         cache_dir=cache, client_password="secret-pw", screen_width=1024, screen_height=768)
    out: dict = {}

    def call(name, fn):
        try:
            out[name] = fn()
        except Exception as exc:
            out[name] = {"exception": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}

    # ---- SetupController: every setup type that talks to the guest
    call("download", lambda: sc._download_setup([{"url": request["download_url"],
                                                   "path": "/home/user/Desktop/data.txt"}]))
    local = os.path.join(cache, "local.bin")
    with open(local, "wb") as f:
        f.write(bytes(range(256)) * 40)
    call("upload_file", lambda: sc._upload_file_setup([{"local_path": local, "path": "~/up/local.bin"}]))
    call("execute", lambda: sc._execute_setup(
        ["bash", "-c", "echo {SCREEN_WIDTH}x{SCREEN_HEIGHT} {SCREEN_WIDTH_HALF} {SCREEN_HEIGHT_HALF} "
                       "{CLIENT_PASSWORD} > ~/placeholders.txt; echo out; echo err >&2"],
        stdout="exec.out", stderr="exec.err"))
    call("execute_shell_until", lambda: sc._execute_setup(
        "test -f ~/flag || (sleep 0.3; touch ~/flag; exit 3)", shell=True, until={"returncode": 0}))
    call("command", lambda: sc._command_setup(["touch", "~/commanded"]))
    call("sleep", lambda: sc._sleep_setup(0.1))
    call("launch", lambda: sc._launch_setup(["python", request["editor"], "~/commanded"]))
    call("verify_window", lambda: sc._execute_with_verification_setup(
        ["true"], verification={"window_exists": "Editor - commanded"}, max_wait_time=30))
    call("activate_window", lambda: sc._activate_window_setup("Editor - commanded"))
    call("open", lambda: sc._open_setup("/home/user/Desktop/data.txt"))  # the guest waits for its window
    call("windows_after_open", lambda: __import__("subprocess").run(
        ["wmctrl", "-l"], capture_output=True, text=True, env=dict(os.environ, DISPLAY=request["display"])).stdout)
    call("close_window", lambda: sc._close_window_setup("Editor - commanded"))
    call("change_wallpaper", lambda: sc._change_wallpaper_setup("~/up/local.bin"))
    if request.get("chrome"):
        call("launch_chrome", lambda: sc._launch_setup(request["chrome"]))
        call("chrome_open_tabs", lambda: bool(sc._chrome_open_tabs_setup(request["tab_urls"])))

    # ---- PythonController: every route it calls
    shot = pc.get_screenshot()
    out["screenshot"] = {"png": bool(shot) and shot[:8] == b"\x89PNG\r\n\x1a\n", "bytes": len(shot or b"")}
    out["accessibility_tree"] = pc.get_accessibility_tree()
    out["terminal"] = pc.get_terminal_output()
    blob = pc.get_file("/home/user/up/local.bin")
    out["file"] = base64.b64encode(blob).decode() if blob else None
    out["missing_file"] = pc.get_file("~/no/such/file")
    out["execute"] = pc.execute_python_command("import os, pyautogui; print(os.environ['HOME'], pyautogui.size())")
    out["run_python"] = pc.run_python_script("import sys; print('py', sys.version_info[0]); sys.exit(0)")
    out["run_bash"] = pc.run_bash_script("echo $HOME; pwd; exit 4", timeout=20, working_dir="~/up")
    out["platform"] = pc.get_vm_platform()
    out["screen_size"] = pc.get_vm_screen_size()
    out["window_size"] = pc.get_vm_window_size("Tk")
    out["wallpaper"] = len(pc.get_vm_wallpaper() or b"")
    out["desktop_path"] = pc.get_vm_desktop_path()
    out["directory_tree"] = pc.get_vm_directory_tree("/home/user/up")
    pc.start_recording()
    time.sleep(1.5)
    recording = os.path.join(cache, "recording.mp4")
    pc.end_recording(recording)
    out["recording"] = os.path.getsize(recording) if os.path.exists(recording) else 0

    # ---- getters that go through the guest
    class Env:  # what the getters read from DesktopEnv
        vm_ip = "127.0.0.1"
        server_port = port
        chromium_port = request["chromium_port"]
        vlc_port = 8080
        cache_dir = cache
        controller = pc
        setup_controller = sc

        @property
        def vm_platform(self):
            return pc.get_vm_platform()

        @property
        def vm_screen_size(self):
            return pc.get_vm_screen_size()

    env = Env()
    call("get_vm_command_line", lambda: getters.get_vm_command_line(env, {"command": "cat ~/placeholders.txt",
                                                                          "shell": True}))
    call("get_vm_command_error", lambda: getters.get_vm_command_error(env, {"command": ["ls", "/nonexistent"]}))
    call("get_vm_file", lambda: getters.get_vm_file(env, {"path": "/home/user/Desktop/data.txt", "dest": "d.txt"}))
    call("get_vm_file_multi", lambda: getters.get_vm_file(env, {"path": ["~/commanded", "~/missing"],
                                                                "dest": ["c", "m"], "multi": True, "gives": [0, 1]}))
    call("get_list_directory", lambda: getters.get_list_directory(env, {"path": "~/up"}))
    call("get_vm_screen_size", lambda: getters.get_vm_screen_size(env, {}))
    call("get_vm_wallpaper", lambda: getters.get_vm_wallpaper(env, {"dest": "wall.png"}))
    call("get_cache_file", lambda: getters.get_cache_file(env, {"path": "exec.out"}))
    call("get_cloud_file", lambda: getters.get_cloud_file(env, {"path": request["download_url"], "dest": "cloud.txt"}))
    call("get_accessibility_tree", lambda: getters.get_accessibility_tree(env, {}))
    call("get_vm_terminal_output", lambda: getters.get_vm_terminal_output(env, {}))
    call("get_vlc_config", lambda: getters.get_vlc_config(env, {"dest": "vlcrc"}))
    if request.get("chrome"):
        call("get_open_tabs_info", lambda: getters.get_open_tabs_info(env, {}))
    real_stdout.write(json.dumps(out, default=str))
    real_stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
