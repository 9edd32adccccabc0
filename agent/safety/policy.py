"""A safety policy for actions, as a hook: allow, confirm or deny each action before it runs.

What a terminal will run is judged at Enter: ``agent.safety.line`` rebuilds the input line from every
keystroke-producing action (across steps and clicks) and ``agent.safety.shell`` reads the completed line with a
real shell parser and judges it by program and arguments. Rules match hotkeys (keys held together), action
types, or typed text (regular expressions, for the user's own rules); the first matching rule wins, the user's
rules before the defaults. Points outside the allowed region or the observed monitor get their own effect.
"confirm" asks a person through a callback (step mode, or a terminal prompt) and is refused in unattended mode
unless the configuration allows it. Every confirm/deny decision is kept in ``SafetyPolicy.records`` and
appended to ``safety.jsonl`` in the run directory.

This guards against a model's mistakes, not against an adversary: a line model can be fooled by what it cannot
see (a window that takes the focus by itself, a paste through a context menu, a script written by an editor).
The wall is the sandbox (``agent.safety.sandbox``, ``--sandbox``).
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
from actions.types import Action, ActionParseError, Hotkey, Press, TypeText, action_points, describe
from agent.hooks import AgentHooks, HookDecision, StepContext
from agent.safety.line import TERMINAL_CLASSES, LineModel

Effect = Literal["allow", "confirm", "deny"]
_STRICTNESS = {"allow": 0, "confirm": 1, "deny": 2}
_SIDED = {"ctrlleft": "ctrl", "ctrlright": "ctrl", "altleft": "alt", "altright": "alt", "shiftleft": "shift",
          "shiftright": "shift", "winleft": "win", "winright": "win"}


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


def _rule(name: str, effect: Effect, reason: str, *, text: str | None = None, keys: list[str] | None = None) -> Rule:
    return Rule(name=name, effect=effect, reason=reason, text=text, keys=keys)


# Shell commands are judged at Enter by agent.safety.shell (see SafetyPolicy); these rules cover keys.
DEFAULT_RULES: tuple[Rule, ...] = (
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
    strict: bool = False  # confirm every command typed into a terminal (``--safety strict``)
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


FocusProbe = Callable[[], "tuple[str, bool] | None"]  # (window id, is a terminal) of the focused window


class SafetyPolicy(AgentHooks):
    """The hook. ``unattended``: nobody to ask, so "confirm" is refused (unless the config allows it).

    ``focus``: tells which window has the keyboard focus (``attach(env)`` finds it for local desktops); without
    it keystrokes after a click go to a window the policy does not know, and the line model judges every way
    they could combine. ``before_action`` judges on a copy of the line model; what ran is committed at
    ``on_step_end`` (or ``commit`` for harnesses that act themselves).
    """

    def __init__(self, config: SafetyConfig | None = None, *, confirm: Confirm | None = None,
                 unattended: bool = False, audit_path: Path | None = None, strict: bool | None = None,
                 focus: FocusProbe | None = None) -> None:
        self.config = config or SafetyConfig()
        if strict is not None:
            self.config = self.config.model_copy(update={"strict": strict})
        self.confirm = confirm
        self.unattended = unattended
        self.audit_path = audit_path
        self.focus = focus
        self.records: list[SafetyRecord] = []
        self.lines = LineModel(strict=self.config.strict)
        self._step_focus: tuple[str, bool] | None = None
        self._refusals: dict[int, int] = {}

    def attach(self, env: object) -> None:
        """Learn the keyboard focus from ``env.focused_window()`` when the environment offers it."""
        probe = getattr(env, "focused_window", None)
        if self.focus is None and callable(probe):
            def focus() -> tuple[str, bool] | None:
                try:
                    window = probe()
                except Exception:
                    return None
                if window is None:
                    return None
                ident, wm_class = window
                return str(ident), is_terminal_class(wm_class)

            self.focus = focus

    def reset(self) -> None:
        """Forget the terminal lines and shell state (a new episode on a fresh machine)."""
        self.lines = LineModel(strict=self.config.strict)
        self._refusals.clear()

    def before_action(self, context: StepContext) -> HookDecision | None:
        return self.review(context)

    def review(self, context: StepContext) -> HookDecision | None:
        monitor = context.observation.geometry.monitor
        self._step_focus = self.focus() if self.focus else None
        lines = self.lines.copy()
        lines.begin_step(self._step_focus)
        notes: list[str] = []
        for action in context.actions:
            verdict = check_action(action, self.config, monitor=monitor, line_before=lines.visible_line())
            for enter in lines.feed(action):
                effect, rule, reason = self._user_line_rule(enter)
                if effect != "allow":
                    verdict = _stricter(verdict, SafetyVerdict(effect=effect, rule=rule, reason=reason))
            if verdict.effect != "allow":
                allowed, outcome = self._resolve(context.step, action, verdict)
                self._record(context, action, verdict, outcome)
                if not allowed:
                    return self._refuse(context.step, action, verdict, outcome)
                notes.append(f"{describe(action)}: {outcome} ({verdict.rule}: {verdict.reason})")
        self._refusals.pop(context.step, None)
        return HookDecision(verdict="execute", reason="safety: " + "; ".join(notes)) if notes else None

    def _user_line_rule(self, enter) -> tuple[Effect, str | None, str]:
        """The user's text rules, matched against each line Enter may submit, come before the shell judgement."""
        rules = [r for r in self.config.rules if r.text is not None and r.keys is None and r.actions is None]
        matched = []
        for line in enter.lines:
            rule = next((r for r in rules if re.search(r.text, line, re.IGNORECASE)), None)
            matched.append(rule)
        if matched and all(r is not None for r in matched):
            worst = max(matched, key=lambda r: _STRICTNESS[r.effect])
            return worst.effect, worst.name, worst.reason or worst.name
        return enter.effect, enter.rule, enter.reason

    def on_step_end(self, record: object) -> None:
        actions = list(getattr(record, "actions", None) or [])
        results = list(getattr(record, "results", None) or [])
        if results and all(r.skipped for r in results):
            return
        self.commit(actions[:len(results)])

    def commit(self, actions: list[Action]) -> None:
        """Advance the line model by the actions that were executed."""
        self.lines.begin_step(self._step_focus)
        for action in actions:
            self.lines.feed(action)

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


def is_terminal_class(wm_class: str | None) -> bool:
    """A window whose WM_CLASS names a terminal emulator (or an editor with a built-in terminal)."""
    if not wm_class:
        return False
    return any(part.lower() in TERMINAL_CLASSES for part in str(wm_class).replace(",", " ").split())


def default_policy(*, unattended: bool = True) -> SafetyPolicy:
    """What every entry point installs unless told otherwise: the default rules, nobody to confirm."""
    return SafetyPolicy(unattended=unattended)


class _DefaultSafety:
    def __repr__(self) -> str:
        return "DEFAULT_SAFETY"


DEFAULT_SAFETY: object = _DefaultSafety()  # Agent(safety=...) default: install the default policy


def find_policy(hooks: AgentHooks | None) -> SafetyPolicy | None:
    """The SafetyPolicy among ``hooks`` (a HookChain is searched), if any."""
    if isinstance(hooks, SafetyPolicy):
        return hooks
    for hook in getattr(hooks, "hooks", None) or []:
        found = find_policy(hook)
        if found is not None:
            return found
    return None


def install_safety(hooks: AgentHooks | None, env: object, safety: object = DEFAULT_SAFETY
                   ) -> tuple[AgentHooks, SafetyPolicy | None]:
    """The hooks an Agent runs, with the action policy first, and that policy (None: turned off).

    ``safety``: DEFAULT_SAFETY installs ``default_policy()`` unless ``hooks`` hold a policy already; a
    SafetyPolicy is put in front of ``hooks``; None adds nothing (the caller turned safety off explicitly).
    """
    from agent.hooks import HookChain

    existing = find_policy(hooks)
    if safety is None:
        policy = existing
    elif safety is DEFAULT_SAFETY:
        policy = existing or default_policy()
    elif isinstance(safety, SafetyPolicy):
        policy = safety
    else:
        raise TypeError(f"safety must be a SafetyPolicy or None, not {type(safety).__name__}")
    if policy is not None:
        policy.attach(env)
    if policy is not None and policy is not existing:
        hooks = HookChain([policy, hooks]) if hooks is not None else policy
    return hooks or AgentHooks(), policy


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
