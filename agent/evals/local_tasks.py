"""OSWorld-format task files for ``kimi-cua eval local``: loading them as upstream reads them, and a preflight.

A task file has OSWorld's shape: ``{id, instruction, config: [{type, parameters}], evaluator: {func, result,
expected, options, conj, postconfig}, ...}``. Nothing here sets up or scores a task: that is OSWorld's own code
(``SetupController``, metrics and getters from the desktop-env wheel, agent/evals/osworld_worker.py) talking to our
guest. A task is kept as the JSON object it is (``TaskFile.raw``), so upstream reads exactly what is in the file;
loading only checks what upstream would trip over, and a folder with bad files reports and skips them.

Task files are trusted code: their setup steps run shell commands (as the user running kimi-cua, with a private HOME
on a private display and session bus, see README).

The preflight (``preflight``) marks a task ``unsupported`` before any model call when this machine cannot set it up
or score it: a metric, getter or setup type the installed wheel does not have, one that needs an account (Google
Drive, logins) or AT-SPI, a program that is not installed, a download that is neither cached nor reachable.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

APPS_DIR = Path(__file__).resolve().parents[2] / "envs" / "apps"
BUILTIN_TASKS_DIR = Path(__file__).parent / "tasks"
PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")

# Kinds no local desktop can offer, and why (also read by benchmarks/osworld_coverage.py).
NEEDS_ACCOUNT_SETUP = {"googledrive": "a Google Drive account (pydrive credentials)",
                       "login": "a website account (settings file with a password)"}
NOT_IMPLEMENTED_SETUP = {"act": "not implemented upstream", "replay": "not implemented upstream",
                         "tidy_desktop": "not implemented upstream"}
NEEDS_NETWORK_SETUP = {"update_browse_history": "downloads a history database from the model hub",
                       "proxy": "a proxy pool configuration"}
NEEDS_ACCOUNT_GETTER = {"googledrive_file": "a Google Drive account (pydrive credentials)"}
NEEDS_ATSPI_GETTER = {"accessibility_tree": "the AT-SPI accessibility tree (not served by kimi-cua's guest)",
                      "active_url_from_accessTree": "the AT-SPI accessibility tree (not served by kimi-cua's guest)",
                      "vm_terminal_output": "terminal text read through AT-SPI (not served by kimi-cua's guest)"}
NEEDS_NETWORK_GETTER = {"info_from_website": "a live website", "number_of_search_results": "a live search engine",
                        "gotoRecreationPage_and_get_html_content": "a live website",
                        "macys_product_url_parse": "a live website"}
NEEDS_OCR_METRIC = {"compare_image_text": "easyocr (a torchvision build for this torch, and OCR weights from the "
                                          "internet)"}
# What a task's related_apps or commands need on PATH.
APP_PROGRAMS = {"chrome": "google-chrome", "google-chrome": "google-chrome", "chromium": "google-chrome",
                "libreoffice_calc": "libreoffice", "libreoffice_writer": "libreoffice",
                "libreoffice_impress": "libreoffice", "libreoffice": "libreoffice", "gimp": "gimp", "vlc": "vlc",
                "thunderbird": "thunderbird", "vs_code": "code", "vscode": "code", "code": "code"}
SHELL_WORDS = {"sudo", "sh", "bash", "env", "nohup", "timeout", "setsid", "exec", "echo", "cd", "export", "if", "then",
               "fi", "for", "do", "done", "while", "test", "[", "true", "false"}


class TaskError(RuntimeError):
    """A task file that cannot be loaded; the message names the file."""


class TaskFile(BaseModel):
    path: Path
    domain: str  # the parent folder's name, as in OSWorld's examples/<domain>/<id>.json
    task_id: str
    instruction: str
    raw: dict[str, Any] = Field(default_factory=dict)  # the file's JSON object, handed to upstream unchanged

    @property
    def related_apps(self) -> list[str]:
        apps = self.raw.get("related_apps") or []
        return [str(a) for a in apps] if isinstance(apps, list) else []


class LoadProblem(BaseModel):
    path: str
    error: str


def _check(raw: Any, path: Path) -> None:
    if not isinstance(raw, dict):
        raise TaskError(f"{path}: not a JSON object")
    for key in ("id", "instruction"):
        if not isinstance(raw.get(key), str) or not raw[key].strip():
            raise TaskError(f"{path}: {key!r} must be a non-empty string")
    if not PLAIN_NAME.match(raw["id"]):
        raise TaskError(f"{path}: id {raw['id']!r} is not a plain name (letters, digits, . _ -): it names a folder")
    config = raw.get("config", [])
    if not isinstance(config, list) or not all(isinstance(s, dict) and isinstance(s.get("type"), str)
                                               and isinstance(s.get("parameters", {}), dict) for s in config):
        raise TaskError(f"{path}: 'config' must be a list of {{type, parameters}} objects")
    evaluator = raw.get("evaluator")
    if not isinstance(evaluator, dict):
        raise TaskError(f"{path}: 'evaluator' must be an object")
    func = evaluator.get("func")
    funcs = func if isinstance(func, list) else [func]
    if not funcs or not all(isinstance(f, str) and f for f in funcs):
        raise TaskError(f"{path}: evaluator 'func' must be a name or a list of names")
    if isinstance(func, list):  # upstream asserts these lengths (DesktopEnv._set_evaluator_info)
        for key in ("result", "expected", "options"):
            value = evaluator.get(key)
            if isinstance(value, list) and len(value) != len(func) and not (key == "expected" and not value):
                raise TaskError(f"{path}: evaluator {key!r} has {len(value)} entries for {len(func)} metrics")
    if not isinstance(evaluator.get("postconfig", []), list):
        raise TaskError(f"{path}: evaluator 'postconfig' must be a list")


def load_task(path: Path | str) -> TaskFile:
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TaskError(f"{path}: not a readable JSON file: {exc}") from exc
    _check(raw, path)
    domain = path.parent.name
    if not PLAIN_NAME.match(domain):
        raise TaskError(f"{path}: folder name {domain!r} is not a plain name: it names the domain's folder")
    return TaskFile(path=path, domain=domain, task_id=raw["id"], instruction=raw["instruction"], raw=raw)


def load_tasks(target: Path | str, problems: list[LoadProblem] | None = None) -> list[TaskFile]:
    """A task file, a folder of them (searched recursively, sorted), or ``builtin`` for the shipped suite.
    With ``problems``, bad files are appended there and skipped; without it the first one raises TaskError."""
    path = BUILTIN_TASKS_DIR if str(target) == "builtin" else Path(target)
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(path.rglob("*.json"))
        if not files:
            raise TaskError(f"{path}: no task files (*.json) found")
    else:
        raise TaskError(f"{path}: no such task file or folder (use 'builtin' for the shipped suite)")
    items: list[TaskFile] = []
    seen: dict[tuple[str, str], Path] = {}
    for file in files:
        try:
            item = load_task(file)
            if (item.domain, item.task_id) in seen:
                raise TaskError(f"{file}: task id {item.task_id!r} is also used by {seen[(item.domain, item.task_id)]}")
        except TaskError as exc:
            if problems is None:
                raise
            problems.append(LoadProblem(path=str(file), error=str(exc)))
            continue
        seen[(item.domain, item.task_id)] = file
        items.append(item)
    return items


# ---- preflight -----------------------------------------------------------------------------------------------
def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def getter_types(raw: dict[str, Any]) -> list[str]:
    evaluator = raw.get("evaluator") or {}
    types = []
    for key in ("result", "expected"):
        for getter in _as_list(evaluator.get(key)):
            if isinstance(getter, dict) and getter.get("type"):
                types.append(str(getter["type"]))
    return types


def setup_steps(raw: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in (raw.get("config") or []) + ((raw.get("evaluator") or {}).get("postconfig") or [])
            if isinstance(s, dict)]


def metric_names(raw: dict[str, Any]) -> list[str]:
    return [str(f) for f in _as_list((raw.get("evaluator") or {}).get("func"))]


def programs_needed(raw: dict[str, Any]) -> set[str]:
    """Programs the task starts (launch/execute/command steps) or names in related_apps."""
    needed = {APP_PROGRAMS[a] for a in (raw.get("related_apps") or []) if isinstance(a, str) and a in APP_PROGRAMS}
    for step in setup_steps(raw):
        if step.get("type") not in ("launch", "execute", "command", "execute_with_verification"):
            continue
        command = (step.get("parameters") or {}).get("command")
        if isinstance(command, list) and len(command) == 1 and isinstance(command[0], str) and " " in command[0]:
            command = command[0]  # ["cmd arg arg"] with shell: true
        if isinstance(command, str):
            try:
                words = shlex.split(command)
            except ValueError:
                words = command.split()
            candidates = [w for w in words[:1] + [words[i + 1] for i, w in enumerate(words[:-1])
                                                   if w in ("&&", ";", "|", "||", "sudo", "-S")]]
        elif isinstance(command, list) and command:
            candidates = [str(command[0])]
        else:
            candidates = []
        for word in candidates:
            name = Path(word).name
            if word and not word.startswith(("-", "{", "$", "~", ".")) and name not in SHELL_WORDS and "=" not in word:
                needed.add(name)
    return needed


def download_urls(raw: dict[str, Any]) -> list[tuple[str, str]]:
    """(url, path on the guest) of every ``download`` setup file."""
    found = []
    for step in setup_steps(raw):
        if step.get("type") == "download":
            for f in (step.get("parameters") or {}).get("files") or []:
                if isinstance(f, dict) and f.get("url"):
                    found.append((str(f["url"]), str(f.get("path", ""))))
    return found


def cloud_urls(raw: dict[str, Any]) -> list[str]:
    urls = []
    evaluator = raw.get("evaluator") or {}
    for key in ("result", "expected"):
        for getter in _as_list(evaluator.get(key)):
            if isinstance(getter, dict) and getter.get("type") == "cloud_file":
                urls += [str(u) for u in _as_list(getter.get("path"))]
    return urls


def download_cache_path(cache_dir: Path, task_id: str, url: str, path: str) -> Path:
    """Where upstream's SetupController keeps a download (``<cache>/<task id>/<uuid5(url)>_<name>``)."""
    return Path(cache_dir) / task_id / f"{uuid.uuid5(uuid.NAMESPACE_URL, url)}_{Path(path).name}"


class Inventory(BaseModel):
    """What the installed desktop-env wheel offers (from the worker's ``inventory``)."""

    metrics: list[str]
    getters: list[str]
    setup: list[str]
    easyocr_stub: bool = False


def preflight(item: TaskFile, inventory: Inventory, *, cache_dir: Path,
              reachable: Callable[[str], str | None], which: Callable[[str], str | None] = shutil.which) -> str | None:
    """None when this machine can set the task up and score it; else why not (the task is ``unsupported``)."""
    raw = item.raw
    for func in metric_names(raw):
        if func == "infeasible":
            continue
        if func not in inventory.metrics:
            return f"metric {func!r} is not in the installed desktop-env"
        if func in NEEDS_OCR_METRIC and inventory.easyocr_stub:
            return f"metric {func!r} needs {NEEDS_OCR_METRIC[func]}"
    for kind in getter_types(raw):
        if kind not in inventory.getters:
            return f"getter {kind!r} is not in the installed desktop-env"
        for table in (NEEDS_ACCOUNT_GETTER, NEEDS_ATSPI_GETTER, NEEDS_NETWORK_GETTER):
            if kind in table:
                return f"getter {kind!r} needs {table[kind]}"
    for step in setup_steps(raw):
        kind = str(step.get("type"))
        if kind not in inventory.setup:
            return f"setup type {kind!r} is not in the installed desktop-env"
        for table in (NEEDS_ACCOUNT_SETUP, NOT_IMPLEMENTED_SETUP, NEEDS_NETWORK_SETUP):
            if kind in table:
                return f"setup type {kind!r} needs {table[kind]}"
    missing = sorted(p for p in programs_needed(raw) if which(p) is None)
    if missing:
        return (f"needs {', '.join(missing)}, not installed here (scripts/install.sh --osworld-apps installs "
                "chromium as google-chrome, libreoffice, gimp, vlc, thunderbird)")
    for url, path in download_urls(raw):
        if download_cache_path(cache_dir, item.task_id, url, path).is_file():
            continue
        problem = reachable(url)
        if problem:
            return f"download {url} is not cached and not reachable: {problem}"
    for url in cloud_urls(raw):
        problem = reachable(url)
        if problem:
            return f"expected file {url} is not reachable: {problem}"
    return None


def url_reachability(timeout: float = 8.0) -> Callable[[str], str | None]:
    """A checker that asks each host once (HEAD, then a 1-byte GET): None when it answers below 400."""
    import httpx

    verdicts: dict[str, str | None] = {}

    def check(url: str) -> str | None:
        if url in verdicts:
            return verdicts[url]
        try:
            with httpx.Client(timeout=timeout, follow_redirects=True) as client:
                response = client.head(url)
                if response.status_code >= 400:
                    response = client.get(url, headers={"Range": "bytes=0-0"})
            verdicts[url] = None if response.status_code < 400 else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            verdicts[url] = f"{type(exc).__name__}: {exc}"[:200]
        return verdicts[url]

    return check
