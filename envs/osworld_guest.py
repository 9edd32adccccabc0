"""Our own OSWorld guest: OSWorld's in-VM HTTP API served on any X display (``kimi-cua guest``).

OSWorld's VM runs a small HTTP server (``desktop_env/server/main.py``, port 5000) that is not in the
``desktop-env`` wheel. This module serves the routes that the wheel's client side calls - ``PythonController``,
``SetupController`` and the getters (REFERENCE.md section 3) - with the answer shapes they read:

| route | method | body -> answer |
|---|---|---|
| ``/screenshot`` | GET | PNG of the whole screen, cursor drawn in |
| ``/accessibility`` | GET | ``{"AT": xml or null}`` (null: no AT-SPI on this desktop) |
| ``/terminal`` | GET | ``{"output": text or null}`` (SetupController polls it to see the server is up) |
| ``/platform`` | GET | ``Linux`` |
| ``/cursor_position`` | GET | ``[x, y]`` |
| ``/screen_size`` | POST | ``{"width", "height"}`` |
| ``/window_size`` | POST form ``app_class_name`` | ``{"width", "height"}`` of the first window of that class |
| ``/desktop_path`` | POST | ``{"desktop_path"}`` |
| ``/wallpaper`` | POST | the wallpaper file set by ``/setup/change_wallpaper`` (404 when none) |
| ``/file`` | POST form ``file_path`` | the file's bytes (404 when missing) |
| ``/list_directory`` | POST json ``path`` | ``{"directory_tree": {"type", "name", "children"}}`` |
| ``/execute``, ``/setup/execute`` | POST json ``command, shell`` | ``{"status", "output", "error", "returncode"}`` |
| ``/run_python`` | POST json ``code`` | ``{"status", "message", "output", "error", "returncode"}`` |
| ``/run_bash_script`` | POST json ``script, timeout, working_dir`` | ``{"status", "output", "error", "returncode"}`` |
| ``/setup/launch`` | POST json ``command, shell`` | text; the program keeps running |
| ``/setup/open_file`` | POST json ``path`` | opens it and waits for its window (404 when missing) |
| ``/setup/activate_window``, ``/setup/close_window`` | POST json ``window_name, strict, by_class`` | text |
| ``/setup/upload`` | POST multipart ``file_path, file_data`` | text |
| ``/setup/change_wallpaper`` | POST json ``path`` | text |
| ``/setup/execute_with_verification`` | POST json ``command, shell, verification, max_wait_time, check_interval`` | json |
| ``/start_recording``, ``/end_recording`` | POST | ffmpeg x11grab; the MP4 (500 when ffmpeg is missing) |

Commands run with the guest's environment: its DISPLAY, its HOME (``~`` in arguments and paths means that HOME),
and a PATH whose ``python``/``python3`` are this interpreter (OSWorld's controller runs ``python -c ...`` and
expects pyautogui there). ``home_alias`` (e.g. ``/home/user``, the VM user's home that OSWorld's task files name)
is mapped onto HOME in paths and command arguments, so a task's files land in the private HOME.

The guest runs whatever it is sent, as OSWorld's server does: bind it to 127.0.0.1 (the default) and give it to
trusted callers only.
"""
from __future__ import annotations

import email.parser
import email.policy
import io
import json
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from envs.app_env import app_env

COMMAND_TIMEOUT = 120.0  # what OSWorld's server allows one /execute
OPENERS = {  # used when xdg-open has no handler (a bare desktop): extension -> program
    (".xlsx", ".xls", ".csv", ".ods", ".docx", ".doc", ".odt", ".pptx", ".ppt", ".odp", ".rtf"): ["libreoffice"],
    (".png", ".jpg", ".jpeg", ".xcf", ".bmp", ".gif", ".tif", ".tiff", ".webp"): ["gimp"],
    (".mp4", ".mkv", ".avi", ".mov", ".mp3", ".wav", ".flac", ".ogg", ".webm"): ["vlc"],
    (".pdf", ".html", ".htm"): ["google-chrome"],
}


@dataclass
class GuestConfig:
    display: str
    home: Path
    home_alias: str | None = None  # e.g. "/home/user": paths under it are mapped to ``home``
    python: str = sys.executable
    open_timeout: float = 120.0  # /setup/open_file waits this long for the file's window
    extra_env: dict[str, str] = field(default_factory=dict)
    openers: dict[str, list[str]] = field(default_factory=dict)  # ".txt" -> command opening such files (first)
    app_output: bool = False  # launched programs print to the guest's own stderr (else their output is discarded)


class Guest:
    """The routes' logic, independent of HTTP; ``GuestServer`` puts it on a port."""

    def __init__(self, config: GuestConfig) -> None:
        self.config = config
        self.home = Path(config.home).absolute()
        self.home.mkdir(parents=True, exist_ok=True)
        self._shims = Path(tempfile.mkdtemp(prefix="kimi-cua-guest-bin-"))
        for name in ("python", "python3"):
            # A script, not a symlink: a virtual environment's interpreter reached through a symlink in another
            # folder finds no pyvenv.cfg beside it and runs as the base interpreter, without the environment's
            # packages (a venv-installed kimi-cua then launched task apps, e.g. envs.apps.tk_editor, that could not
            # import).
            shim = self._shims / name
            shim.write_text(f"#!/bin/sh\nexec {shlex.quote(str(config.python))} \"$@\"\n", encoding="utf-8")
            shim.chmod(0o755)
        env = app_env()
        env.pop("XAUTHORITY", None)
        env.update(config.extra_env)
        env.update(DISPLAY=config.display, HOME=str(self.home),
                   PATH=f"{self._shims}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}")
        self.env = env
        self._capture_lock = threading.Lock()
        self._capture: Any = None
        self._launched: list[subprocess.Popen[bytes]] = []
        self._recording: tuple[subprocess.Popen[bytes], Path] | None = None
        self._wallpaper: str | None = None

    # ---- paths and commands ------------------------------------------------------------------------
    def path(self, value: str) -> Path:
        """A path as the guest's user means it: ``~`` and ``home_alias`` point at the guest's HOME."""
        text = self.map_text(str(value))
        if text == "~" or text.startswith("~/"):
            text = str(self.home) + text[1:]
        return Path(text)

    def map_text(self, text: str) -> str:
        alias = self.config.home_alias
        if alias and alias.rstrip("/") != str(self.home):
            alias = alias.rstrip("/")
            text = text.replace(alias + "/", str(self.home) + "/")
            if text == alias:
                text = str(self.home)
        return text

    def command(self, command: Any, shell: bool) -> list[str] | str:
        if isinstance(command, str) and not shell:
            command = shlex.split(command)
        if isinstance(command, list):
            return [str(self.path(a)) if str(a).startswith("~") else self.map_text(str(a)) for a in command]
        return self.map_text(str(command))

    def run(self, command: Any, shell: bool = False, timeout: float = COMMAND_TIMEOUT,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(command, shell), shell=shell, env=self.env, cwd=cwd or self.home,
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)

    def launch(self, command: Any, shell: bool = False) -> subprocess.Popen[bytes]:
        argv = self.command(command, shell)
        out = subprocess.DEVNULL
        if self.config.app_output:  # to the guest's own stderr (``eval local``'s guest.log)
            out = sys.stderr.fileno()
            print(f"kimi-cua guest: launched {argv if isinstance(argv, str) else shlex.join(argv)}", file=sys.stderr,
                  flush=True)
        proc = subprocess.Popen(argv, shell=shell, env=self.env, cwd=self.home, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=out, start_new_session=True)
        self._launched.append(proc)
        return proc

    # ---- the screen ----------------------------------------------------------------------------------
    def screenshot(self) -> bytes:
        from PIL import Image, ImageDraw

        from envs.capture import ScreenCapture

        with self._capture_lock:
            if self._capture is None:
                self._capture = ScreenCapture(self.config.display, monitor=0)
            frame = self._capture.grab()
            cursor = self._capture.cursor()
        image = Image.frombuffer("RGB", (frame.width, frame.height), bytes(frame.data), "raw", "BGRX", 0, 1)
        if cursor is not None:  # OSWorld's screenshots show the pointer: a plain arrow, 12x19
            x, y = cursor[0] - frame.left, cursor[1] - frame.top
            arrow = [(x, y), (x, y + 16), (x + 4, y + 12), (x + 7, y + 18), (x + 9, y + 17), (x + 6, y + 11),
                     (x + 11, y + 11)]
            ImageDraw.Draw(image).polygon(arrow, fill="black", outline="white")
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)
        return buf.getvalue()

    def screen_size(self) -> tuple[int, int]:
        from Xlib import display as xdisplay

        d = xdisplay.Display(self.config.display)
        try:
            screen = d.screen()
            return screen.width_in_pixels, screen.height_in_pixels
        finally:
            d.close()

    def cursor_position(self) -> tuple[int, int]:
        with self._capture_lock:
            if self._capture is None:
                from envs.capture import ScreenCapture

                self._capture = ScreenCapture(self.config.display, monitor=0)
            position = self._capture.cursor()
        return position or (0, 0)

    def window_size(self, app_class_name: str) -> dict[str, int] | None:
        found = self.run(["xdotool", "search", "--onlyvisible", "--class", app_class_name], timeout=10)
        for wid in found.stdout.split():
            geometry = self.run(["xdotool", "getwindowgeometry", "--shell", wid], timeout=10).stdout
            values = dict(line.split("=", 1) for line in geometry.splitlines() if "=" in line)
            if "WIDTH" in values:
                return {"width": int(values["WIDTH"]), "height": int(values["HEIGHT"])}
        return None

    def windows(self) -> str:
        return self.run(["wmctrl", "-lx"], timeout=10).stdout

    def window_command(self, action: str, name: str, strict: bool, by_class: bool) -> subprocess.CompletedProcess[str]:
        flags = "-" + ("x" if by_class else "") + ("F" if strict else "") + action
        return self.run(["wmctrl", flags, name], timeout=10)

    # ---- files -------------------------------------------------------------------------------------
    def directory_tree(self, path: Path) -> dict[str, Any]:
        node: dict[str, Any] = {"type": "directory", "name": path.name, "children": []}
        for child in sorted(path.iterdir(), key=lambda p: p.name):
            if child.is_dir() and not child.is_symlink():
                node["children"].append(self.directory_tree(child))
            else:
                node["children"].append({"type": "file", "name": child.name})
        return node

    def open_file(self, path: Path) -> tuple[bool, str]:
        opener = self._opener(path)
        self.launch([*opener, str(path)])
        deadline = time.monotonic() + self.config.open_timeout
        stem = path.stem
        while time.monotonic() < deadline:
            listing = self.windows()
            if path.name in listing or stem in listing:
                return True, f"File opened successfully: {path}"
            time.sleep(0.5)
        return False, f"no window showing {path.name} appeared within {self.config.open_timeout:g} s ({opener[0]})"

    def _opener(self, path: Path) -> list[str]:
        suffix = path.suffix.lower()
        if suffix in self.config.openers:
            return list(self.config.openers[suffix])
        for suffixes, program in OPENERS.items():
            if suffix in suffixes and shutil.which(program[0]):
                return program
        return ["xdg-open"]

    # ---- recording -------------------------------------------------------------------------------------
    def start_recording(self) -> tuple[bool, str]:
        if self._recording is not None:
            return False, "a recording is already running"
        if shutil.which("ffmpeg") is None:
            return False, "ffmpeg is not installed (apt-get install -y ffmpeg)"
        width, height = self.screen_size()
        target = Path(tempfile.mkdtemp(prefix="kimi-cua-rec-")) / "recording.mp4"
        proc = subprocess.Popen(["ffmpeg", "-y", "-loglevel", "error", "-f", "x11grab", "-video_size",
                                 f"{width}x{height}", "-framerate", "10", "-i", self.config.display, "-c:v",
                                 "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(target)],
                                env=self.env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        self._recording = (proc, target)
        return True, "Started recording successfully"

    def end_recording(self) -> tuple[bytes | None, str]:
        if self._recording is None:
            return None, "no recording is running"
        proc, target = self._recording
        self._recording = None
        try:
            proc.communicate(b"q", timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if not target.is_file():
            return None, "the recording produced no file"
        data = target.read_bytes()
        shutil.rmtree(target.parent, ignore_errors=True)
        return data, "ok"

    def close(self) -> None:
        for proc in self._launched:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in self._launched:
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._launched = []
        if self._recording is not None:
            self._recording[0].kill()
            self._recording = None
        if self._capture is not None:
            self._capture.close()
            self._capture = None
        shutil.rmtree(self._shims, ignore_errors=True)


def _result(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    return {"status": "success", "output": done.stdout, "error": done.stderr, "returncode": done.returncode}


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Fields of a multipart/form-data body: name -> (filename, bytes)."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


class _Handler(BaseHTTPRequestHandler):
    guest: Guest  # set on the subclass made by GuestServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    # ---- replies
    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _text(self, status: int, text: str) -> None:
        self._send(status, text.encode(), "text/html; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"status": "error", "message": message, "error": message})

    # ---- requests
    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _data(self, body: bytes) -> dict[str, Any]:
        kind = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if kind == "application/x-www-form-urlencoded":
            return {k: v[0] for k, v in urllib.parse.parse_qs(body.decode("utf-8"), keep_blank_values=True).items()}
        if kind == "multipart/form-data":
            return {k: v for k, v in _multipart(self.headers["Content-Type"], body).items()}
        if not body.strip():
            return {}
        value = json.loads(body)
        return value if isinstance(value, dict) else {}

    def do_GET(self) -> None:  # noqa: N802
        self._route("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._route("POST")

    def _route(self, method: str) -> None:
        route = urllib.parse.urlsplit(self.path).path.rstrip("/") or "/"
        handler = ROUTES.get((method, route))
        if handler is None:
            self._text(405 if any(r == route for _, r in ROUTES) else 404, "Not Found")
            return
        try:
            body = self._body() if method == "POST" else b""
            handler(self, self._data(body) if method == "POST" else {})
        except (ValueError, KeyError, TypeError) as exc:
            self._error(400, f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # the server answers every failure, like OSWorld's
            self._error(500, f"{type(exc).__name__}: {exc}")

    # ---- routes
    def screenshot(self, _: dict[str, Any]) -> None:
        self._send(200, self.guest.screenshot(), "image/png")

    def accessibility(self, _: dict[str, Any]) -> None:
        self._json(200, {"AT": None})

    def terminal(self, _: dict[str, Any]) -> None:
        self._json(200, {"output": None})

    def platform_(self, _: dict[str, Any]) -> None:
        self._text(200, platform.system())

    def cursor_position(self, _: dict[str, Any]) -> None:
        self._json(200, list(self.guest.cursor_position()))

    def screen_size(self, _: dict[str, Any]) -> None:
        width, height = self.guest.screen_size()
        self._json(200, {"width": width, "height": height})

    def window_size(self, data: dict[str, Any]) -> None:
        size = self.guest.window_size(str(data["app_class_name"]))
        if size is None:
            self._error(404, f"no window of class {data['app_class_name']!r}")
        else:
            self._json(200, size)

    def desktop_path(self, _: dict[str, Any]) -> None:
        self._json(200, {"desktop_path": str(self.guest.home / "Desktop")})

    def wallpaper(self, _: dict[str, Any]) -> None:
        path = self.guest._wallpaper
        if not path or not Path(path).is_file():
            self._error(404, "no wallpaper set")
        else:
            self._send(200, Path(path).read_bytes(), "application/octet-stream")

    def file(self, data: dict[str, Any]) -> None:
        path = self.guest.path(str(data["file_path"]))
        if not path.is_file():
            self._error(404, f"File not found: {path}")
        else:
            self._send(200, path.read_bytes(), "application/octet-stream",
                       {"Content-Disposition": f"attachment; filename={urllib.parse.quote(path.name)}"})

    def list_directory(self, data: dict[str, Any]) -> None:
        path = self.guest.path(str(data["path"]))
        if not path.is_dir():
            self._error(404, f"Directory not found: {path}")
        else:
            self._json(200, {"directory_tree": self.guest.directory_tree(path)})

    def execute(self, data: dict[str, Any]) -> None:
        shell = bool(data.get("shell", False))
        try:
            done = self.guest.run(data.get("command", "" if shell else []), shell=shell)
        except (OSError, ValueError, subprocess.TimeoutExpired) as exc:
            self._error(500, str(exc))
            return
        self._json(200, _result(done))

    def run_python(self, data: dict[str, Any]) -> None:
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False, encoding="utf-8") as f:
            f.write(str(data["code"]))
        try:
            done = self.guest.run([self.guest.config.python, f.name], timeout=COMMAND_TIMEOUT)
        except subprocess.TimeoutExpired:
            self._json(200, {"status": "error", "message": "timed out", "output": "", "error": "timed out",
                             "returncode": -1})
            return
        finally:
            os.unlink(f.name)
        status = "success" if done.returncode == 0 else "error"
        self._json(200, {"status": status, "message": "executed" if status == "success" else "failed",
                         **{k: v for k, v in _result(done).items() if k != "status"}})

    def run_bash_script(self, data: dict[str, Any]) -> None:
        timeout = float(data.get("timeout") or 30)
        cwd = self.guest.path(str(data["working_dir"])) if data.get("working_dir") else None
        try:
            done = self.guest.run(["bash", "-c", str(data["script"])], timeout=timeout, cwd=cwd)
        except subprocess.TimeoutExpired:
            self._json(200, {"status": "error", "output": "", "error": f"Script execution timed out after "
                             f"{timeout:g} seconds", "returncode": -1})
            return
        self._json(200, {**_result(done), "status": "success" if done.returncode == 0 else "error"})

    def setup_launch(self, data: dict[str, Any]) -> None:
        shell = bool(data.get("shell", False))
        command = data.get("command")
        if not command:
            self._error(400, "Empty command to launch")
            return
        try:
            self.guest.launch(command, shell=shell)
        except OSError as exc:
            self._error(500, str(exc))
            return
        self._text(200, f"{command if isinstance(command, str) else ' '.join(map(str, command))} launched "
                        "successfully")

    def setup_open_file(self, data: dict[str, Any]) -> None:
        path = self.guest.path(str(data["path"]))
        if not path.exists():
            self._error(404, f"File not found: {path}")
            return
        ok, message = self.guest.open_file(path)
        if ok:
            self._text(200, message)
        else:
            self._error(500, message)

    def setup_activate_window(self, data: dict[str, Any]) -> None:
        done = self.guest.window_command("a", str(data["window_name"]), bool(data.get("strict")),
                                         bool(data.get("by_class")))
        if done.returncode == 0:
            self._text(200, "Window activated successfully")
        else:
            self._error(404, f"Window {data['window_name']!r} not found")

    def setup_close_window(self, data: dict[str, Any]) -> None:
        done = self.guest.window_command("c", str(data["window_name"]), bool(data.get("strict")),
                                         bool(data.get("by_class")))
        if done.returncode == 0:
            self._text(200, "Window closed successfully")
        else:
            self._error(404, f"Window {data['window_name']!r} not found")

    def setup_upload(self, data: dict[str, Any]) -> None:
        raw_path = data.get("file_path")
        file_data = data.get("file_data")
        if not raw_path or not isinstance(file_data, tuple):
            self._error(400, "file_path and file_data are required")
            return
        path = self.guest.path(raw_path[1].decode("utf-8") if isinstance(raw_path, tuple) else str(raw_path))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(file_data[1])
        self._text(200, "File uploaded")

    def setup_change_wallpaper(self, data: dict[str, Any]) -> None:
        path = self.guest.path(str(data["path"]))
        if not path.is_file():
            self._error(404, f"File not found: {path}")
            return
        self.guest._wallpaper = str(path)
        if shutil.which("gsettings"):  # on the task's own session bus (dbus-run-session), never the user's
            self.guest.run(["gsettings", "set", "org.gnome.desktop.background", "picture-uri", path.as_uri()],
                           timeout=10)
        self._text(200, "Wallpaper changed successfully")

    def setup_execute_with_verification(self, data: dict[str, Any]) -> None:
        shell = bool(data.get("shell", False))
        done = self.guest.run(data.get("command", "" if shell else []), shell=shell)
        verification = data.get("verification") or {}
        deadline = time.monotonic() + float(data.get("max_wait_time", 10))
        interval = float(data.get("check_interval", 1.0))
        while True:
            passed = True
            if verification.get("window_exists"):
                passed = str(verification["window_exists"]) in self.guest.windows()
            if passed and verification.get("command_success"):
                passed = self.guest.run(verification["command_success"], shell=True, timeout=30).returncode == 0
            if passed:
                self._json(200, {**_result(done), "verification": "passed"})
                return
            if time.monotonic() >= deadline:
                self._error(500, f"verification failed after {data.get('max_wait_time', 10)} s: {verification}")
                return
            time.sleep(interval)

    def start_recording(self, _: dict[str, Any]) -> None:
        ok, message = self.guest.start_recording()
        if ok:
            self._text(200, message)
        else:
            self._error(500 if "ffmpeg" in message else 400, message)

    def end_recording(self, _: dict[str, Any]) -> None:
        data, message = self.guest.end_recording()
        if data is None:
            self._error(400, message)
        else:
            self._send(200, data, "video/mp4")


ROUTES: dict[tuple[str, str], Any] = {
    ("GET", "/screenshot"): _Handler.screenshot,
    ("GET", "/accessibility"): _Handler.accessibility,
    ("GET", "/terminal"): _Handler.terminal,
    ("GET", "/platform"): _Handler.platform_,
    ("GET", "/cursor_position"): _Handler.cursor_position,
    ("POST", "/screen_size"): _Handler.screen_size,
    ("POST", "/window_size"): _Handler.window_size,
    ("POST", "/desktop_path"): _Handler.desktop_path,
    ("POST", "/wallpaper"): _Handler.wallpaper,
    ("POST", "/file"): _Handler.file,
    ("POST", "/list_directory"): _Handler.list_directory,
    ("POST", "/execute"): _Handler.execute,
    ("POST", "/setup/execute"): _Handler.execute,
    ("POST", "/run_python"): _Handler.run_python,
    ("POST", "/run_bash_script"): _Handler.run_bash_script,
    ("POST", "/setup/launch"): _Handler.setup_launch,
    ("POST", "/setup/open_file"): _Handler.setup_open_file,
    ("POST", "/setup/activate_window"): _Handler.setup_activate_window,
    ("POST", "/setup/close_window"): _Handler.setup_close_window,
    ("POST", "/setup/upload"): _Handler.setup_upload,
    ("POST", "/setup/change_wallpaper"): _Handler.setup_change_wallpaper,
    ("POST", "/setup/execute_with_verification"): _Handler.setup_execute_with_verification,
    ("POST", "/start_recording"): _Handler.start_recording,
    ("POST", "/end_recording"): _Handler.end_recording,
}


class GuestServer:
    """``with GuestServer(GuestConfig(display=":91", home=...), port=8221) as g: g.base_url``."""

    def __init__(self, config: GuestConfig, host: str = "127.0.0.1", port: int = 0) -> None:
        self.guest = Guest(config)
        handler = type("GuestHandler", (_Handler,), {"guest": self.guest})
        self._httpd = ThreadingHTTPServer((host, port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://{self._httpd.server_address[0]}:{self.port}"

    def start(self) -> "GuestServer":
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()
        self.guest.close()

    def __enter__(self) -> "GuestServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
