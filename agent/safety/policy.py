"""A safety policy for actions, as a hook: allow, confirm or deny each action before it runs.

Rules match typed text (regular expressions: destructive shell commands), hotkeys (keys held together) or
action types; the first matching rule wins, the user's rules before the defaults. Points outside the allowed
region or the observed monitor get their own effect. "confirm" asks a person through a callback (step mode, or
a terminal prompt) and is refused in unattended mode unless the configuration allows it. Every confirm/deny
decision is kept in ``SafetyPolicy.records`` and appended to ``safety.jsonl`` in the run directory.
"""
from __future__ import annotations

import json
import re
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from actions.coords import Monitor
from actions.keys import normalize_key
from actions.types import Action, ActionParseError, Click, Drag, Hotkey, Press, TypeText, action_points, describe
from agent.hooks import AgentHooks, HookDecision, StepContext

Effect = Literal["allow", "confirm", "deny"]
_STRICTNESS = {"allow": 0, "confirm": 1, "deny": 2}
_SIDED = {"ctrlleft": "ctrl", "ctrlright": "ctrl", "altleft": "alt", "altright": "alt", "shiftleft": "shift",
          "shiftright": "shift", "winleft": "win", "winright": "win"}
_LINE_MEMORY = 500  # characters of the current input line kept to catch commands typed in pieces


class SafetyConfigError(ValueError):
    """A safety rules file that cannot be used; the message names the file and the problem."""


def canonical_key(name: str) -> str:
    """A key name as rules compare it: pyautogui's name, left/right variants folded together."""
    try:
        key = normalize_key(name)
    except ActionParseError:
        key = name.strip().lower()
    return _SIDED.get(key, key)


class Rule(BaseModel):
    """Matches when every condition given holds; at least one condition is required."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    effect: Effect
    reason: str = ""
    text: str | None = None  # regex, case-insensitive, searched in typed text (with what was typed before on the line)
    keys: list[str] | None = None  # held together; matches hotkeys containing all of them, in any order
    actions: list[str] | None = None  # action types ("click", "drag", "type", ...)

    @field_validator("text")
    @classmethod
    def _valid_regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc}): {value!r}") from None
        return value

    @field_validator("keys")
    @classmethod
    def _canonical_keys(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else sorted({canonical_key(k) for k in value})

    @model_validator(mode="after")
    def _has_condition(self) -> "Rule":
        if self.text is None and not self.keys and not self.actions:
            raise ValueError(f"rule {self.name!r} needs at least one of text, keys, actions")
        return self

    def matches(self, action: Action, line_before: str = "") -> bool:
        if self.actions is not None and action.type not in self.actions:
            return False
        if self.text is not None:
            if not isinstance(action, TypeText):
                return False
            # Only a match that reaches into the new text counts: text typed earlier was judged already.
            if not any(m.end() > len(line_before)
                       for m in re.finditer(self.text, line_before + action.text, re.IGNORECASE)):
                return False
        if self.keys:
            held = _held_keys(action)
            if held is None or not set(self.keys) <= held:
                return False
        return True


def _held_keys(action: Action) -> set[str] | None:
    if isinstance(action, Hotkey):
        return {canonical_key(k) for k in action.keys}
    if isinstance(action, Press):
        return {canonical_key(action.key)}
    return None


_CMD = r"(?:^|[;&|`(\n]|\$\(|\b(?:sudo|then|do|exec|xargs|nohup)\s+)\s*"  # where a command word may start


def _rule(name: str, effect: Effect, reason: str, *, text: str | None = None, keys: list[str] | None = None) -> Rule:
    return Rule(name=name, effect=effect, reason=reason, text=text, keys=keys)


DEFAULT_RULES: tuple[Rule, ...] = (
    _rule("recursive rm", "confirm", "deletes files recursively",
          text=r"\brm\s+(?:-{1,2}[\w-]+\s+)*(?:-[a-z]*r[a-z]*|--recursive)\b"),
    _rule("rm of a root or home path", "confirm", "deletes system or home files",
          text=r"\brm\s+(?:-\S+\s+)*(?:/|~|\$HOME|/\*)(?:\s|$)"),
    _rule("mkfs", "confirm", "formats a file system", text=r"\bmkfs(?:\.\w+)?\b|\bmke2fs\b|\bwipefs\b"),
    _rule("dd", "confirm", "copies raw blocks (can overwrite a disk)", text=r"\bdd\s+[^\n]*\b(?:if|of)="),
    _rule("write to a block device", "confirm", "overwrites a disk",
          text=r">\s*/dev/(?:sd|hd|vd|xvd|nvme|mmcblk|disk)\w*"),
    _rule("fork bomb", "deny", "a fork bomb freezes the machine", text=r":\s*\(\s*\)\s*\{|\bbomb\s*\(\s*\)\s*\{.*bomb\s*\|"),
    _rule("download piped to a shell", "confirm", "runs code downloaded from the network",
          text=r"\b(?:curl|wget|fetch)\b[^\n|]*\|\s*(?:sudo\s+)?(?:ba|z|da|k|fi)?sh\b|"
               r"\b(?:curl|wget)\b[^\n|]*\|\s*(?:sudo\s+)?python"),
    _rule("sudo / su", "confirm", "runs a command as root", text=_CMD + r"(?:sudo|su|doas|pkexec)\b"),
    _rule("recursive chmod/chown", "confirm", "changes permissions or owners of a tree",
          text=r"\bch(?:mod|own|grp)\s+(?:\S+\s+)*?(?:-[a-z]*R[a-z]*|--recursive)\b"),
    _rule("chmod 777 on /", "confirm", "opens the file system to everyone", text=r"\bchmod\s+(?:-\S+\s+)*0?777\s+/"),
    _rule("shutdown / reboot", "confirm", "turns the machine off or restarts it",
          text=_CMD + r"(?:shutdown|reboot|poweroff|halt)\b|\binit\s+[06]\b|\bsystemctl\s+(?:poweroff|reboot|halt|kexec)\b"),
    _rule("kill everything", "confirm", "kills every process", text=r"\bkill\s+-(?:9|KILL)\s+-1\b|\bkillall5?\b"),
    _rule("truncate a system file", "confirm", "overwrites a system file", text=r">\s*/(?:etc|boot|usr|bin|lib)/"),
    _rule("ctrl+alt+delete", "confirm", "logs out or reboots", keys=["ctrl", "alt", "delete"]),
    _rule("ctrl+alt+backspace", "confirm", "kills the X server", keys=["ctrl", "alt", "backspace"]),
    *(_rule(f"ctrl+alt+f{n}", "confirm", "switches to a text console", keys=["ctrl", "alt", f"f{n}"])
      for n in range(1, 13)),
    _rule("magic sysrq", "confirm", "kernel SysRq commands (reboot, kill)", keys=["alt", "printscreen"]),
    _rule("alt+f4", "confirm", "closes the active window", keys=["alt", "f4"]),
    _rule("lock screen", "confirm", "locks the session", keys=["win", "l"]),
)


class Region(BaseModel):
    """A rectangle of the virtual screen in screen pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    left: int
    top: int
    width: int = Field(gt=0)
    height: int = Field(gt=0)

    def contains(self, x: float, y: float) -> bool:
        return self.left <= x < self.left + self.width and self.top <= y < self.top + self.height


class SafetyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rules: list[Rule] = Field(default_factory=list)  # checked before the defaults; the first match wins
    use_defaults: bool = True
    region: Region | None = None  # actions must point inside it (screen pixels)
    outside_region: Effect = "confirm"
    outside_monitor: Effect = "confirm"  # points off the monitor the agent observes
    unattended_confirm: Literal["deny", "allow"] = "deny"
    on_refusal: Literal["retry", "skip", "stop"] = "retry"  # retry: ask the model again, with the reason
    max_refusals_per_step: int = Field(2, ge=1)  # then the step is skipped

    def all_rules(self) -> list[Rule]:
        return list(self.rules) + (list(DEFAULT_RULES) if self.use_defaults else [])


def load_safety_config(path: Path) -> SafetyConfig:
    """Read rules from a ``.json`` or ``.toml`` file (the fields of SafetyConfig)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SafetyConfigError(f"cannot read the safety rules {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8")) if path.suffix.lower() == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SafetyConfigError(f"{path} is not valid {'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: "
                                f"{exc}") from None
    try:
        return SafetyConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'file'}: {e['msg']}" for e in exc.errors())
        raise SafetyConfigError(f"{path} is not a valid safety configuration: {problems}") from None


class SafetyVerdict(BaseModel):
    effect: Effect
    rule: str | None = None
    reason: str = ""


class ConfirmRequest(BaseModel):
    """What a person is asked to approve."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    step: int
    action: Action
    description: str
    rule: str | None
    reason: str


class SafetyRecord(BaseModel):
    step: int
    action: str
    effect: Effect
    rule: str | None
    reason: str
    outcome: Literal["confirmed", "declined", "refused", "allowed unattended"]
    timestamp: float = Field(default_factory=time.time)


Confirm = Callable[[ConfirmRequest], bool]


def check_action(action: Action, config: SafetyConfig, *, monitor: Monitor | None = None,
                 line_before: str = "") -> SafetyVerdict:
    """The effect the configuration gives one action (screen pixels); pure, no prompting."""
    verdict = SafetyVerdict(effect="allow")
    for rule in config.all_rules():
        if rule.matches(action, line_before):
            verdict = SafetyVerdict(effect=rule.effect, rule=rule.name, reason=rule.reason or rule.name)
            break
    for point in action_points(action):
        if monitor is not None and not (monitor.left <= point.x < monitor.left + monitor.width
                                        and monitor.top <= point.y < monitor.top + monitor.height):
            verdict = _stricter(verdict, SafetyVerdict(
                effect=config.outside_monitor, rule="outside the monitor",
                reason=f"({point.x}, {point.y}) is off the observed monitor"))
        if config.region is not None and not config.region.contains(point.x, point.y):
            r = config.region
            verdict = _stricter(verdict, SafetyVerdict(
                effect=config.outside_region, rule="outside the allowed region",
                reason=f"({point.x}, {point.y}) is outside the allowed region "
                       f"{r.width}x{r.height}+{r.left}+{r.top}"))
    return verdict


def _stricter(a: SafetyVerdict, b: SafetyVerdict) -> SafetyVerdict:
    return b if _STRICTNESS[b.effect] > _STRICTNESS[a.effect] else a


class SafetyPolicy(AgentHooks):
    """The hook. ``unattended``: nobody to ask, so "confirm" is refused (unless the config allows it)."""

    def __init__(self, config: SafetyConfig | None = None, *, confirm: Confirm | None = None,
                 unattended: bool = False, audit_path: Path | None = None) -> None:
        self.config = config or SafetyConfig()
        self.confirm = confirm
        self.unattended = unattended
        self.audit_path = audit_path
        self.records: list[SafetyRecord] = []
        self._line = ""  # what was typed on the current input line, to catch commands typed in pieces
        self._refusals: dict[int, int] = {}

    def before_action(self, context: StepContext) -> HookDecision | None:
        monitor = context.observation.geometry.monitor
        line = self._line
        notes: list[str] = []
        for action in context.actions:
            if isinstance(action, TypeText) and action.at is not None:
                line = ""
            verdict = check_action(action, self.config, monitor=monitor, line_before=line)
            if verdict.effect != "allow":
                allowed, outcome = self._resolve(context.step, action, verdict)
                self._record(context, action, verdict, outcome)
                if not allowed:
                    return self._refuse(context.step, action, verdict, outcome)
                notes.append(f"{describe(action)}: {outcome} ({verdict.rule}: {verdict.reason})")
            line = _next_line(line, action)
        self._line = line
        self._refusals.pop(context.step, None)
        return HookDecision(verdict="execute", reason="safety: " + "; ".join(notes)) if notes else None

    def _resolve(self, step: int, action: Action, verdict: SafetyVerdict) -> tuple[bool, str]:
        if verdict.effect == "deny":
            return False, "refused"
        if self.unattended:
            if self.config.unattended_confirm == "allow":
                return True, "allowed unattended"
            return False, "refused"
        if self.confirm is None:
            return False, "refused"
        request = ConfirmRequest(step=step, action=action, description=describe(action), rule=verdict.rule,
                                 reason=verdict.reason)
        return (True, "confirmed") if self.confirm(request) else (False, "declined")

    def _refuse(self, step: int, action: Action, verdict: SafetyVerdict, outcome: str) -> HookDecision:
        why = {"refused": "unattended run" if self.unattended and verdict.effect == "confirm" else
               ("denied by the safety policy" if verdict.effect == "deny" else "nobody to confirm it"),
               "declined": "declined by the user"}.get(outcome, outcome)
        reason = f"safety: {describe(action)} {outcome} - {verdict.rule}: {verdict.reason} ({why})"
        count = self._refusals[step] = self._refusals.get(step, 0) + 1
        if self.config.on_refusal == "stop":
            return HookDecision(verdict="stop", reason=reason)
        if self.config.on_refusal == "skip" or count >= self.config.max_refusals_per_step:
            self._refusals.pop(step, None)
            return HookDecision(verdict="skip", reason=reason)
        hint = (f"The action '{describe(action)}' was refused by the safety policy ({verdict.reason}). "
                "Do not try it again; find a safer way or finish with computer.terminate(status='failure').")
        return HookDecision(verdict="retry", hint=hint, reason=reason)

    def _record(self, context: StepContext, action: Action, verdict: SafetyVerdict, outcome: str) -> None:
        record = SafetyRecord(step=context.step, action=describe(action), effect=verdict.effect, rule=verdict.rule,
                              reason=verdict.reason, outcome=outcome)  # type: ignore[arg-type]
        self.records.append(record)
        path = self.audit_path or (Path(context.screenshot_path).parent / "safety.jsonl"
                                   if context.screenshot_path else None)
        if path is not None:
            with open(path, "a", encoding="utf-8") as f:
                f.write(record.model_dump_json() + "\n")


def _next_line(line: str, action: Action) -> str:
    """The current input line after ``action`` ran (clicks, Enter and hotkeys start a new one)."""
    if isinstance(action, TypeText):
        line = (line + action.text).rsplit("\n", 1)[-1]
        return line[-_LINE_MEMORY:]
    if isinstance(action, (Click, Drag, Hotkey)) or (isinstance(action, Press) and action.key in ("enter", "esc")):
        return ""
    return line


def ask_on_terminal(request: ConfirmRequest) -> bool:
    """A ``confirm`` callback for an attended run: asks on the controlling terminal, default no."""
    try:
        with open("/dev/tty", "r+", encoding="utf-8") as tty:
            tty.write(f"\nkimi-cua safety: step {request.step} wants to {request.description}\n"
                      f"  rule: {request.rule} - {request.reason}\n  allow it? [y/N] ")
            tty.flush()
            return tty.readline().strip().lower() in ("y", "yes")
    except OSError:
        print("kimi-cua safety: no terminal to ask on; refusing", file=sys.stderr)
        return False
