"""The line a terminal is about to run, rebuilt from the keystrokes the agent sends.

Every action that produces keystrokes feeds one model: typed text (character by character, as pyautogui types
it, or pasted through the clipboard), key lists, ``press`` with ``presses``, hotkeys (folded ``keyDown``/
``keyUp`` included) and pastes. Editing keys are applied the way bash's readline applies them (backspace,
delete, left/right/home/end, ctrl+u/w/k/a/e/b/f/h/d/t/y, alt+b/f/d/backspace, caps lock). Keys whose effect on
the line cannot be known here (history recall, tab completion, pasting an unknown clipboard, other readline
commands) leave a mark, and a marked line asks for confirmation at Enter when it may be in a terminal.

Keystrokes are kept per window: a group of keystrokes goes to the window that had the focus when the step
started (asked from the X server when the environment can tell), and after a click, a drag or a
window-switching hotkey to a window not known yet. When Enter is pressed in a group, every way the earlier
groups of unknown windows could have gone into the same line is judged (at most 2^4 per window), so typing
half a command, clicking elsewhere and finishing it does not hide it. The line is judged only at Enter (or
ctrl+j, ctrl+m, ctrl+o, or the newline of typed text), by ``agent.safety.shell``; an incomplete line (open
quote, trailing pipe, here-document) is kept and judged whole when it is complete.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field

from actions.codegen import needs_clipboard
from actions.keys import normalize_key
from actions.types import Action, ActionParseError, Click, Drag, Hotkey, Press, TypeText
from agent.safety.shell import COMPLETION, UNKNOWN, Finding, ShellState, judge_line, judge_repl_line, leaves_repl

TAINT = "\x02"  # text the policy cannot see (history, unknown paste) stands in the line as this mark
TERMINAL_CLASSES = frozenset("""
xterm uxterm urxvt rxvt rxvt-unicode gnome-terminal gnome-terminal-server konsole xfce4-terminal terminator tilix
alacritty kitty st st-256color lxterminal mate-terminal qterminal terminology wezterm org.wezfurlong.wezterm foot
sakura guake tilda eterm aterm cool-retro-term yakuake x-terminal-emulator kgx io.elementary.terminal deepin-terminal
terminal code code-oss vscodium zutty contour blackbox ptyxis ghostty
""".split())
_MODIFIERS = {"ctrl", "ctrlleft", "ctrlright", "alt", "altleft", "altright", "shift", "shiftleft", "shiftright",
              "win", "winleft", "winright"}
_SHIFTED = dict(zip("`1234567890-=[]\\;',./", "~!@#$%^&*()_+{}|:\"<>?"))
_NO_EFFECT = {"f%d" % n for n in range(1, 25)} | {"printscreen", "volumeup", "volumedown", "volumemute",
                                                  "playpause", "nexttrack", "prevtrack", "numlock", "scrolllock",
                                                  "pause", "insert", "apps", "help"}
_ENTER_KEYS = {"enter"}
_HISTORY_KEYS = {"up", "down", "pageup", "pagedown"}
# Findings that say "this does not read as a safe shell line": expected of text that is not meant for a shell
# (a form, an editor, a Python prompt), so they count only where a shell may read the line.
_NOT_SHELL_NOISE = frozenset({"unreadable line", "unreadable quoting", "history expansion", "computed program name",
                              "program name is a pattern", "tab-completed program name"})
MAX_OPTIONAL_GROUPS = 4
MAX_GROUPS = 12


def _is_modifier(key: str) -> bool:
    return key in _MODIFIERS


def _canon(key: str) -> str:
    try:
        key = normalize_key(key)
    except ActionParseError:
        key = key.lower()
    return {"ctrlleft": "ctrl", "ctrlright": "ctrl", "altleft": "alt", "altright": "alt", "shiftleft": "shift",
            "shiftright": "shift", "winleft": "win", "winright": "win"}.get(key, key)


@dataclass
class Enter:
    """One Enter: the line(s) it may submit and what the policy thinks of them."""

    effect: str
    rule: str | None
    reason: str
    lines: list[str]
    terminal: bool | None  # the window's kind: True terminal, False not, None unknown


@dataclass
class _Group:
    token: str  # window id ("w:<id>") or an anonymous window ("a:<n>")
    seq: int
    terminal: bool | None
    events: list[tuple] = field(default_factory=list)

    @property
    def anonymous(self) -> bool:
        return self.token.startswith("a:")


class _Buffer:
    """readline's line buffer under the events of one hypothesis."""

    def __init__(self) -> None:
        self.chars: list[str] = []
        self.cursor = 0
        self.kill = ""
        self.meta = False
        self.ctrl_x = False
        self.taint: list[str] = []
        self.recall: int | None = None  # position in the session's history while recalling

    @property
    def text(self) -> str:
        return "".join(self.chars)

    def insert(self, text: str) -> None:
        self.chars[self.cursor:self.cursor] = list(text)
        self.cursor += len(text)

    def mark(self, why: str) -> None:
        if why not in self.taint:
            self.taint.append(why)
        self.insert(TAINT)

    def _word_left(self, alnum: bool) -> int:
        i = self.cursor
        sep = (lambda c: not c.isalnum()) if alnum else str.isspace
        while i > 0 and sep(self.chars[i - 1]):
            i -= 1
        while i > 0 and not sep(self.chars[i - 1]):
            i -= 1
        return i

    def _word_right(self) -> int:
        i = self.cursor
        while i < len(self.chars) and not self.chars[i].isalnum():
            i += 1
        while i < len(self.chars) and self.chars[i].isalnum():
            i += 1
        return i

    def _cut(self, start: int, end: int) -> None:
        self.kill = "".join(self.chars[start:end])
        del self.chars[start:end]
        self.cursor = start

    def apply(self, event: tuple, terminal: bool | None, history: list[str]) -> None:
        kind = event[0]
        if kind == "text":
            for ch in event[1]:
                if self.meta:
                    self.meta = False
                    self.alt(ch, terminal)
                else:
                    self.insert(ch)
            return
        if kind == "paste":
            self.meta = False
            if event[1] is None:
                self.mark("pasted text the policy did not see")
            else:
                self.insert(event[1])
            return
        if kind == "taint":
            self.mark(event[1])
            return
        if kind == "key":
            self.key(event[1], terminal, history)
        elif kind == "ctrl":
            self.ctrl(event[1], terminal)
        elif kind == "alt":
            self.alt(event[1], terminal)

    def key(self, key: str, terminal: bool | None, history: list[str]) -> None:
        if self.meta:
            self.meta = False
            if key == "backspace":
                self._cut(self._word_left(True), self.cursor)
                return
            if key not in ("esc",):
                self.mark(f"esc {key}")
                return
        if key == "backspace":
            if self.cursor > 0:
                del self.chars[self.cursor - 1]
                self.cursor -= 1
        elif key == "delete":
            if self.cursor < len(self.chars):
                del self.chars[self.cursor]
        elif key == "left":
            self.cursor = max(0, self.cursor - 1)
        elif key == "right":
            self.cursor = min(len(self.chars), self.cursor + 1)
        elif key == "home":
            self.cursor = 0
        elif key == "end":
            self.cursor = len(self.chars)
        elif key == "tab":
            if terminal is False:
                self.chars, self.cursor = [], 0  # the next field of a form
            else:
                self.insert(COMPLETION)  # completion: unknown text
        elif key == "esc":
            if terminal is not False:
                self.meta = True
        elif key in _HISTORY_KEYS:
            if terminal is False or (terminal is None and not history):
                return  # moving in a list or an editor
            position = (len(history) if self.recall is None else self.recall) + (-1 if key == "up" else 1)
            self.recall = max(-1, min(position, len(history)))
            if key in ("up", "down") and 0 <= self.recall < len(history):
                self.chars = list(history[self.recall])  # a line this session submitted (and judged)
            elif key == "down" and self.recall == len(history):
                self.chars = []
            else:
                self.chars = []
                self.mark("a line recalled from the shell history from before this run")
            self.cursor = len(self.chars)
        elif key == "space":
            self.insert(" ")
        elif len(key) == 1:
            self.insert(key)
        elif key not in _NO_EFFECT:
            if terminal is not False:
                self.mark(f"the key {key}")

    def ctrl(self, key: str, terminal: bool | None) -> None:
        if terminal is False:
            if key in ("a",):
                return
            return
        if self.ctrl_x:
            self.ctrl_x = False
            self.mark(f"ctrl+x ctrl+{key}")
            return
        if key == "a":
            self.cursor = 0
        elif key == "e":
            self.cursor = len(self.chars)
        elif key == "b":
            self.cursor = max(0, self.cursor - 1)
        elif key == "f":
            self.cursor = min(len(self.chars), self.cursor + 1)
        elif key == "h":
            self.key("backspace", terminal, [])
        elif key == "d":
            if self.cursor < len(self.chars):
                del self.chars[self.cursor]
        elif key == "u":
            self._cut(0, self.cursor)
        elif key == "k":
            self._cut(self.cursor, len(self.chars))
        elif key == "w":
            self._cut(self._word_left(False), self.cursor)
        elif key == "y":
            self.insert(self.kill)
        elif key == "t":
            if len(self.chars) >= 2 and self.cursor > 0:
                i = min(self.cursor, len(self.chars) - 1)
                self.chars[i - 1], self.chars[i] = self.chars[i], self.chars[i - 1]
                self.cursor = min(i + 1, len(self.chars))
        elif key == "x":
            self.ctrl_x = True
        elif key in ("l", "s", "q", "z", "g", "\\", "@", "space"):
            pass
        else:
            self.mark(f"ctrl+{key}")

    def alt(self, key: str, terminal: bool | None) -> None:
        if terminal is False:
            return
        if key == "b":
            self.cursor = self._word_left(True)
        elif key == "f":
            self.cursor = self._word_right()
        elif key == "d":
            self._cut(self.cursor, self._word_right())
        elif key == "backspace":
            self._cut(self._word_left(True), self.cursor)
        else:
            self.mark(f"alt+{key}")


class LineModel:
    """What each window's input line holds; ``feed(action)`` returns a judgement per Enter it sends."""

    def __init__(self, *, strict: bool = False) -> None:
        self.strict = strict
        self.shell = ShellState()
        self.groups: list[_Group] = []
        self.clears: dict[str, int] = {}  # window token -> seq of its last Enter
        self.clipboard: str | None = None  # None: unknown (not set by us, or copied from the screen)
        self.caps = False
        self.history: list[str] = []
        self._seq = 0
        self._anon = 0
        self._current: _Group | None = None
        self._focus: tuple[str, bool | None] | None = None  # the window a new group goes to

    def copy(self) -> "LineModel":
        return copy.deepcopy(self)

    # ---- where keystrokes go
    def begin_step(self, focus: tuple[str, bool] | None) -> None:
        """The window that has the keyboard focus as a step starts (None: the environment cannot tell)."""
        if focus is None:
            return
        token, terminal = f"w:{focus[0]}", focus[1]
        if self._current is not None and self._current.token == token:
            return
        self._current = None
        self._focus = (token, terminal)

    def _focus_changed(self) -> None:
        self._current = None
        self._focus = None

    def _group(self) -> _Group:
        if self._current is None:
            if self._focus is not None:
                token, terminal = self._focus
            else:
                self._anon += 1
                token, terminal = f"a:{self._anon}", None
            self._seq += 1
            self._current = _Group(token, self._seq, terminal)
            self.groups.append(self._current)
            self._prune()
        return self._current

    def _prune(self) -> None:
        self.groups = [g for g in self.groups if g.events or g is self._current]
        anonymous = [g for g in self.groups if g.anonymous and g is not self._current]
        for g in anonymous[: max(0, len(self.groups) - MAX_GROUPS)]:
            self.groups.remove(g)

    # ---- actions
    def feed(self, action: Action) -> list[Enter]:
        enters: list[Enter] = []
        if isinstance(action, Click):
            self._focus_changed()
            if action.button == "middle":
                self._event(("paste", None), enters)
            return enters
        if isinstance(action, Drag):
            self._focus_changed()
            return enters
        if isinstance(action, TypeText):
            if action.at is not None:
                self._focus_changed()
            if needs_clipboard(action.text):
                self.clipboard = action.text
                for i, piece in enumerate(action.text.replace("\r\n", "\n").replace("\r", "\n").split("\n")):
                    if i:
                        self._enter(enters)
                    if piece:
                        self._event(("paste", piece), enters)
            else:
                self._type(action.text, enters)
            return enters
        if isinstance(action, Press):
            key = _canon(action.key)
            for _ in range(action.count):
                self._key(key, enters)
            return enters
        if isinstance(action, Hotkey):
            self._hotkey([_canon(k) for k in action.keys], enters)
        return enters

    def _type(self, text: str, enters: list[Enter]) -> None:
        """pyautogui.write: one key press per character."""
        piece = []
        for ch in text:
            if ch in "\n\r":
                if piece:
                    self._event(("text", self._case("".join(piece))), enters)
                    piece = []
                self._enter(enters)
            elif ch == "\t":
                if piece:
                    self._event(("text", self._case("".join(piece))), enters)
                    piece = []
                self._event(("key", "tab"), enters)
            elif ch == "\b":
                if piece:
                    self._event(("text", self._case("".join(piece))), enters)
                    piece = []
                self._event(("key", "backspace"), enters)
            else:
                piece.append(ch)
        if piece:
            self._event(("text", self._case("".join(piece))), enters)

    def _case(self, text: str) -> str:
        return text.swapcase() if self.caps else text

    def _key(self, key: str, enters: list[Enter]) -> None:
        if key in _ENTER_KEYS:
            self._enter(enters)
        elif key == "capslock":
            self.caps = not self.caps
        elif _is_modifier(key):
            return
        elif len(key) == 1:
            self._event(("text", self._case(key)), enters)
        else:
            self._event(("key", key), enters)

    def _hotkey(self, keys: list[str], enters: list[Enter]) -> None:
        held = {k for k in keys if _is_modifier(k)}
        rest = [k for k in keys if not _is_modifier(k)]
        ctrl, alt, shift, win = "ctrl" in held, "alt" in held, "shift" in held, "win" in held
        if not rest:
            return
        if win or (ctrl and alt) or (alt and rest[0] in ("tab", "esc", "f4", "f2", "f1")) or (
                ctrl and rest[0] in ("pageup", "pagedown", "tab")) or (
                ctrl and shift and rest[0] in ("t", "n", "w", "tab")):
            self._focus_changed()
            return
        for key in rest:
            if ctrl and shift and key in ("c", "x"):
                self.clipboard = None
            elif ctrl and shift and key == "v" or (shift and key == "insert") or (ctrl and key == "v"):
                self._event(("paste", self.clipboard), enters)
            elif ctrl and key == "insert":
                self.clipboard = None
            elif ctrl:
                if key in ("c", "x"):
                    self.clipboard = None
                if key == "c":
                    self._clear()
                elif key in ("j", "m"):
                    self._enter(enters)
                elif key == "o":
                    self._enter(enters)
                    self._event(("taint", "ctrl+o loads the next history line"), enters)
                elif key == "d" and self._current_text() == "" and self.shell.repls:
                    self.shell.repls.pop()
                else:
                    self._event(("ctrl", key), enters)
            elif alt:
                if key == "3" and shift:  # alt+# comments the line out and submits it: nothing runs
                    self._clear()
                else:
                    self._event(("alt", key), enters)
            elif shift:
                if len(key) == 1:
                    self._event(("text", self._case(_SHIFTED.get(key, key.upper()))), enters)
                else:
                    self._key(key, enters)
            else:
                self._key(key, enters)

    def _event(self, event: tuple, enters: list[Enter]) -> None:
        self._group().events.append(event)

    def _current_text(self) -> str:
        group = self._current
        if group is None:
            return ""
        return self._replay([g for g in self.groups if g.token == group.token])[0].text

    def _clear(self) -> None:
        """ctrl+c: bash drops the line (and any continuation) of the focused window."""
        group = self._group()
        self._consume(group.token)

    def _consume(self, token: str) -> None:
        self._seq += 1
        self.clears[token] = self._seq
        current = self._current
        self.groups = [g for g in self.groups if g.token != token]
        if current is not None and current.token == token:
            current.events = []
            current.seq = self._seq
            self.groups.append(current)

    def _replay(self, groups: list[_Group]) -> tuple[_Buffer, bool | None]:
        buffer = _Buffer()
        terminal: bool | None = False
        for group in sorted(groups, key=lambda g: g.seq):
            for event in group.events:
                buffer.apply(event, group.terminal, self.history)
            if group.terminal is None:
                terminal = None if terminal is False else terminal
            elif group.terminal:
                terminal = True
        return buffer, terminal

    def _candidates(self, group: _Group) -> list[list[_Group]]:
        known = {g.token for g in self.groups if not g.anonymous}
        hypotheses = [[group.token]] + ([[group.token, t] for t in sorted(known)] if group.anonymous else [])
        out: list[list[_Group]] = []
        for tokens in hypotheses:
            floor = max(self.clears.get(t, 0) for t in tokens)
            mandatory = [g for g in self.groups if g.token in tokens]
            optional = [g for g in self.groups if g.anonymous and g.token not in tokens and g.seq > floor
                        and g.seq < group.seq and g.events][-MAX_OPTIONAL_GROUPS:]
            for n in range(len(optional) + 1):
                for subset in itertools.combinations(optional, n):
                    out.append(mandatory + list(subset))
        return out

    def _enter(self, enters: list[Enter]) -> None:
        group = self._group()
        verdicts: list[tuple[str, str | None, str]] = []
        lines: list[str] = []
        complete_states: list[ShellState] = []
        incomplete = False
        window_terminal = group.terminal
        for candidate in self._candidates(group):
            buffer, terminal = self._replay(candidate)
            line = buffer.text
            maybe_terminal = terminal is not False
            if not maybe_terminal:
                line = line.replace(TAINT, "").replace(COMPLETION, "")
            if line in lines:
                continue
            lines.append(line)
            state = self.shell.copy()
            findings: list[Finding] = []
            shown = line.replace(TAINT, "?").replace(COMPLETION, "?").replace(UNKNOWN, "?")
            if maybe_terminal and buffer.taint:
                findings.append(Finding("confirm", "line the policy cannot see",
                                        f"the line holds {', '.join(buffer.taint)}"))
            if self.strict and maybe_terminal and line.strip():
                findings.append(Finding("confirm", "strict: Enter in a terminal",
                                        "--safety strict confirms every command typed into a terminal"))
            repl = state.repls[-1] if state.repls else None
            if repl is not None:
                if leaves_repl(line, repl):
                    state.repls.pop()
                else:
                    j = judge_repl_line(line.replace(TAINT, "").replace(COMPLETION, ""), repl)
                    findings.extend(j.findings)
            judged = judge_line(line.replace(TAINT, UNKNOWN), state)
            shell_findings = judged.findings
            if repl is not None or not maybe_terminal:  # prose in a form, code in a Python prompt
                shell_findings = [f for f in shell_findings if f.rule not in _NOT_SHELL_NOISE]
            findings.extend(shell_findings)
            if not judged.complete and repl is None and maybe_terminal:
                incomplete = True
            else:
                complete_states.append(state)
            for f in findings:
                verdicts.append((f.effect, f.rule, f"Enter runs `{shown[:80]}`: {f.reason}"))
        rank = {"allow": 0, "confirm": 1, "deny": 2}
        vague = ("unreadable line", "line the policy cannot see")  # a specific reason is shown first
        worst = max(verdicts, key=lambda v: (rank[v[0]], v[1] not in vague)) if verdicts else ("allow", None, "")
        enters.append(Enter(worst[0], worst[1], worst[2], lines, window_terminal))
        if complete_states:
            merged = complete_states[0]
            for other in complete_states[1:]:
                merged.merge(other)
            self.shell = merged
        if incomplete:
            group.events.append(("text", "\n"))
            return
        if lines and lines[0].strip() and window_terminal is not False:
            self.history.append(lines[0])
        self._consume(group.token)

    def visible_line(self) -> str:
        """The current window's line as the policy models it (for rules that match typed text)."""
        return self._current_text()
