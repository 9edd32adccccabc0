"""Judge a completed shell line by the programs it runs and their arguments.

The syntax is read with bashlex, a port of bash's own parser (quotes, escapes, ``$'...'``, pipelines, lists,
compound commands, functions, here-documents, command and process substitution): regular expressions over the
text are what let ``r""m -rf``, ``rm DIR -rf`` or ``X=rm; $X -rf`` through before. Words are then expanded
here, as bash would, from their source text: quote removal, ANSI-C strings, variables the session set
(``X=rm`` on an earlier line counts), ``${IFS}``, brace expansion, with anything computed at run time (command
substitution, unknown variables) kept as an UNKNOWN mark. Wrappers (``env``, ``time``, ``nohup``, ``xargs``,
``command``, ``exec``, ``sudo`` ...) are looked through, ``sh -c``/``eval``/``alias``/``trap`` strings are
judged as lines of their own, and files the session wrote are remembered so that running them later is judged
by what they hold (``curl -o x.sh``; ``sh x.sh``).

A line bash would read and bashlex cannot (or reads differently) asks for confirmation: the judgement is only as
good as the reading. This guards against a model's mistakes; it is not a wall against an adversary (the sandbox
is, ``agent.safety.sandbox``).
"""
from __future__ import annotations

import copy
import posixpath
import re
import shutil
import subprocess
from dataclasses import dataclass, field

from agent.safety.programs import (COMPLETION, INJECTORS, POWER, PRIVILEGE, SHELLS, UNKNOWN, WIPERS, _WRAPPERS,
                                   _WRITERS_ALL, _WRITERS_LAST, Effect, FileNote, Finding, ProgramRules, Word,
                                   _file_key, _interp, _name, _RISKY_NAMES, _Stdin, judge_code)

_RANK = {"allow": 0, "confirm": 1, "deny": 2}
_MAX_DEPTH = 6


def _bashlex():
    """bashlex, imported when a line is first read: building its parser tables costs ~0.2 s, which every
    ``kimi-cua`` command paid at start."""
    import bashlex
    import bashlex.errors

    return bashlex


@dataclass
class ShellState:
    """What earlier lines left behind that later lines depend on."""

    variables: dict[str, str | None] = field(default_factory=dict)  # None: set to something computed
    aliases: dict[str, str | None] = field(default_factory=dict)
    files: dict[str, FileNote] = field(default_factory=dict)  # by path as written and by base name
    repls: list[str] = field(default_factory=list)  # interactive interpreters started and not left

    def copy(self) -> "ShellState":
        return copy.deepcopy(self)

    def merge(self, other: "ShellState") -> None:
        """Keep what either hypothesis could have left (unknown where they disagree)."""
        for name, value in other.variables.items():
            if name in self.variables and self.variables[name] != value:
                self.variables[name] = None
            else:
                self.variables[name] = value
        for name, value in other.aliases.items():
            self.aliases[name] = value if self.aliases.get(name, value) == value else None
        for path, note in other.files.items():
            mine = self.files.get(path)
            self.files[path] = note if mine is None or mine == note else FileNote(None, "written by a command")
        for repl in other.repls:
            if repl not in self.repls:
                self.repls.append(repl)


@dataclass
class Judgement:
    effect: Effect
    rule: str | None = None
    reason: str = ""
    complete: bool = True  # False: bash waits for more lines (open quote, trailing pipe, here-document ...)
    findings: list[Finding] = field(default_factory=list)


# ---- word expansion ----------------------------------------------------------------------------------------
_ACTIVE, _SPLIT = 1, 2  # char flags: unquoted literal (braces/globs count), from an unquoted expansion (splits)
_ANSI = {"a": "\a", "b": "\b", "e": "\x1b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
         "\\": "\\", "'": "'", '"': '"', "?": "?"}


def _matching(text: str, start: int, open_: str, close: str) -> int:
    """Index just past the ``close`` that balances ``text[start]`` (an ``open_``), skipping quotes."""
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "'" and open_ != "{":
            j = text.find("'", i + 1)
            i = len(text) if j < 0 else j + 1
            continue
        if c == '"':
            i = _end_of_double(text, i + 1)
            continue
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return len(text)


def _end_of_double(text: str, i: int) -> int:
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
        elif c == '"':
            return i + 1
        elif text.startswith("$(", i):
            i = _matching(text, i + 1, "(", ")")
        elif c == "`":
            j = text.find("`", i + 1)
            i = len(text) if j < 0 else j + 1
        else:
            i += 1
    return len(text)


def _ansi_c(text: str, i: int) -> tuple[str, int]:
    """Decode ``$'...'`` whose content starts at ``i``; returns (value, index past the closing quote)."""
    out = []
    while i < len(text) and text[i] != "'":
        c = text[i]
        if c != "\\" or i + 1 >= len(text):
            out.append(c)
            i += 1
            continue
        n = text[i + 1]
        if n in _ANSI:
            out.append(_ANSI[n])
            i += 2
        elif n == "x":
            m = re.match(r"[0-9a-fA-F]{1,2}", text[i + 2:])
            out.append(chr(int(m.group(), 16)) if m else "\\x")
            i += 2 + (len(m.group()) if m else 0)
        elif n in "uU":
            m = re.match(r"[0-9a-fA-F]{1,%d}" % (4 if n == "u" else 8), text[i + 2:])
            out.append(chr(int(m.group(), 16)) if m else "\\" + n)
            i += 2 + (len(m.group()) if m else 0)
        elif n in "01234567":
            m = re.match(r"[0-7]{1,3}", text[i + 1:])
            out.append(chr(int(m.group(), 8) & 0xFF))
            i += 1 + len(m.group())
        elif n == "c" and i + 2 < len(text):
            out.append(chr(ord(text[i + 2]) & 0x1F))
            i += 3
        else:
            out.append("\\" + n)
            i += 2
    return "".join(out), i + 1


class _Expander:
    """Expands one word's source text into fields, the way bash would with what the session knows."""

    def __init__(self, lookup, flag) -> None:
        self.lookup = lookup  # name -> str | None (None: unknown)
        self.flag = flag  # (effect, rule, reason) for constructs the judge must see

    def fields(self, raw: str) -> list[Word]:
        chars = self._chars(raw)
        out: list[Word] = []
        for variant in _brace_expand(chars):
            out.extend(_split(variant))
        return out

    def scalar(self, raw: str) -> str:
        """An assignment's value: no splitting, no braces."""
        return "".join(c for c, _ in self._chars(raw))

    def _chars(self, raw: str) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        i, n = 0, len(raw)
        while i < n:
            c = raw[i]
            if c == "\\":
                if i + 1 < n and raw[i + 1] != "\n":
                    out.append((raw[i + 1], 0))
                i += 2
            elif c == "'":
                j = raw.find("'", i + 1)
                j = n if j < 0 else j
                out.extend((ch, 0) for ch in raw[i + 1:j])
                i = j + 1
            elif c == "$" and raw.startswith("$'", i):
                value, i = _ansi_c(raw, i + 2)
                out.extend((ch, 0) for ch in value)
            elif c == '"' or raw.startswith('$"', i):
                start = i + (2 if c == "$" else 1)
                end = _end_of_double(raw, start)
                out.extend(self._double(raw[start:end - 1] if end <= n and raw[end - 1:end] == '"' else raw[start:end]))
                i = end
            elif c == "$":
                value, i = self._dollar(raw, i)
                if value is None:
                    out.append((UNKNOWN, _SPLIT))
                else:
                    out.extend((ch, _SPLIT) for ch in value)
            elif c == "`":
                j = raw.find("`", i + 1)
                i = n if j < 0 else j + 1
                out.append((UNKNOWN, _SPLIT))
            elif c in "<>" and raw.startswith("(", i + 1):
                i = _matching(raw, i + 1, "(", ")")
                out.append((UNKNOWN, 0))
            else:
                out.append((c, _ACTIVE))
                i += 1
        return out

    def _double(self, body: str) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        i = 0
        while i < len(body):
            c = body[i]
            if c == "\\" and i + 1 < len(body) and body[i + 1] in '$`"\\\n':
                if body[i + 1] != "\n":
                    out.append((body[i + 1], 0))
                i += 2
            elif c == "$":
                value, i = self._dollar(body, i)
                out.append((UNKNOWN, 0)) if value is None else out.extend((ch, 0) for ch in value)
            elif c == "`":
                j = body.find("`", i + 1)
                i = len(body) if j < 0 else j + 1
                out.append((UNKNOWN, 0))
            else:
                out.append((c, 0))
                i += 1
        return out

    def _dollar(self, raw: str, i: int) -> tuple[str | None, int]:
        """The value of the expansion at ``raw[i] == '$'`` (None: computed) and the index after it."""
        rest = raw[i + 1:]
        if rest.startswith("(("):
            return None, _matching(raw, i + 1, "(", ")")
        if rest.startswith("("):
            return None, _matching(raw, i + 1, "(", ")")
        if rest.startswith("["):
            return None, _matching(raw, i + 1, "[", "]")
        if rest.startswith("{"):
            end = _matching(raw, i + 1, "{", "}")
            return self._braced(raw[i + 2:end - 1]), end
        m = re.match(r"[A-Za-z_][A-Za-z0-9_]*|[0-9@*#?$!\-]", rest)
        if not m:
            return "$", i + 1
        name = m.group()
        return (self.lookup(name) if re.match(r"[A-Za-z_]", name) else None), i + 1 + len(name)

    def _braced(self, expr: str) -> str | None:
        if "$(" in expr or "`" in expr or "<(" in expr:
            self.flag("confirm", "command inside ${...}", "runs a command inside a parameter expansion")
            return None
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(.*)", expr, re.S)
        if not m:
            return None
        name, op = m.groups()
        value = self.lookup(name)
        if op == "":
            return value
        if value is None:
            return None
        if op.startswith((":-", "-")):
            default = op.split("-", 1)[1]
            return value if value else self.scalar(default)
        sub = re.fullmatch(r":(-?\d+)(?::(-?\d+))?", op)
        if sub:
            start = int(sub.group(1))
            length = int(sub.group(2)) if sub.group(2) is not None else None
            piece = value[start:]
            return piece if length is None else (piece[:length] if length >= 0 else piece[:length])
        rep = re.fullmatch(r"(//?)([^/]*)/?(.*)", op, re.S)
        if rep and "*" not in rep.group(2) and "?" not in rep.group(2) and rep.group(2):
            old, new = self.scalar(rep.group(2)), self.scalar(rep.group(3))
            return value.replace(old, new) if rep.group(1) == "//" else value.replace(old, new, 1)
        if op == "^^":
            return value.upper()
        if op == ",,":
            return value.lower()
        return None


def _brace_expand(chars: list[tuple[str, int]]) -> list[list[tuple[str, int]]]:
    """bash's brace expansion over unquoted braces: ``{a,b}`` and ``{1..3}``."""
    opens = [i for i, (c, f) in enumerate(chars) if c == "{" and f & _ACTIVE]
    for start in opens:
        depth, commas, end = 0, [], None
        for j in range(start, len(chars)):
            c, f = chars[j]
            if not f & _ACTIVE:
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    end = j
                    break
            elif c == "," and depth == 1:
                commas.append(j)
        if end is None:
            continue
        head, tail = chars[:start], chars[end + 1:]
        if commas:
            bounds = [start] + commas + [end]
            pieces = [chars[a + 1:b] for a, b in zip(bounds, bounds[1:])]
        else:
            inner = "".join(c for c, _ in chars[start + 1:end])
            m = re.fullmatch(r"(-?\d+)\.\.(-?\d+)|([a-zA-Z])\.\.([a-zA-Z])", inner)
            if not m:
                continue
            if m.group(1) is not None:
                a, b = int(m.group(1)), int(m.group(2))
                seq = [str(v) for v in (range(a, b + 1) if a <= b else range(a, b - 1, -1))][:64]
            else:
                a, b = ord(m.group(3)), ord(m.group(4))
                seq = [chr(v) for v in (range(a, b + 1) if a <= b else range(a, b - 1, -1))]
            pieces = [[(ch, _ACTIVE) for ch in s] for s in seq]
        out = []
        for piece in pieces[:64]:
            out.extend(_brace_expand(head + piece + tail))
        return out[:256]
    return [chars]


def _split(chars: list[tuple[str, int]]) -> list[Word]:
    words: list[Word] = []
    current: list[tuple[str, int]] = []
    had_quoted = False
    for c, f in chars:
        if f & _SPLIT and c in " \t\n":
            if current or had_quoted:
                words.append(_word(current))
            current, had_quoted = [], False
            continue
        current.append((c, f))
        if not f & _SPLIT:
            had_quoted = True
    if current or had_quoted:
        words.append(_word(current))
    return words


def _word(chars: list[tuple[str, int]]) -> Word:
    text = "".join(c for c, _ in chars)
    active = "".join(c if f & _ACTIVE else " " for c, f in chars)
    return Word(text, glob=bool(re.search(r"[*?]|\[[^\]]+\]", active)))


# ---- the judge ---------------------------------------------------------------------------------------------
class _Judge(ProgramRules):
    def __init__(self, state: ShellState, depth: int = 0) -> None:
        self.state = state
        self.depth = depth
        self.findings: list[Finding] = []
        self.local: dict[str, str | None] = {}
        self._quoted_heredocs: set[str] = set()

    # -- results
    def flag(self, effect: Effect, rule: str, reason: str) -> None:
        self.findings.append(Finding(effect, rule, reason))

    def lookup(self, name: str) -> str | None:
        if name in self.local:
            return self.local[name]
        if name in self.state.variables:
            return self.state.variables[name]
        return {"IFS": " \t\n", "HOME": "~"}.get(name)

    # -- lines
    def line(self, text: str) -> bool:
        """Judge ``text``; False when bash would wait for more lines."""
        if self.depth > _MAX_DEPTH:
            self.flag("confirm", "nested too deep", "shell code nested too deep to read with confidence")
            return True
        text = self._expand_aliases(text)
        _prechecks(text, self)
        nodes, complete = _parse(text, self)
        if nodes is None:
            return complete
        for node in nodes:
            self.node(node)
        return True

    def sub(self, text: str, what: str) -> None:
        """Judge a string that a program will run as shell code."""
        if UNKNOWN in text:
            self.flag("confirm", f"{what} computed at run time",
                      f"{what} runs shell code that is only known at run time")
            return
        inner = _Judge(self.state, self.depth + 1)
        inner.local = dict(self.local)
        if not inner.line(text):
            inner.flag("confirm", "unreadable shell code", f"{what} runs shell code that does not parse")
        self.findings.extend(inner.findings)

    def _expand_aliases(self, text: str) -> str:
        if not self.state.aliases:
            return text
        for _ in range(5):
            try:
                nodes = _bashlex().parse(_preprocess(text)[0])
            except Exception:
                return text
            spans = []
            for node in nodes:
                for cmd in _walk(node, "command"):
                    words = [p for p in cmd.parts if p.kind == "word"]
                    if words and _preprocess(text)[0][words[0].pos[0]:words[0].pos[1]] in self.state.aliases:
                        spans.append(words[0].pos)
            if not spans:
                return text
            pre = _preprocess(text)[0]
            for start, end in sorted(spans, reverse=True):
                value = self.state.aliases[pre[start:end]]
                if value is None:
                    self.flag("confirm", "alias of computed text", f"the alias {pre[start:end]!r} was set to "
                              "text only known at run time")
                    value = ":"
                pre = pre[:start] + value + pre[end:]
            text = pre
        return text

    # -- the syntax tree
    def raw(self, node) -> str:
        return self.src[node.pos[0]:node.pos[1]]

    def expander(self) -> _Expander:
        return _Expander(self.lookup, self.flag)

    def node(self, node, stdin: _Stdin | None = None) -> None:
        kind = node.kind
        if kind == "list":
            for part in node.parts:
                if part.kind != "operator":
                    self.node(part)
        elif kind == "pipeline":
            commands = [p for p in node.parts if p.kind not in ("pipe", "reservedword")]
            previous = None
            for command in commands:
                self.node(command, stdin=self._pipe_from(previous) if previous is not None else None)
                previous = command
        elif kind == "compound":
            for part in node.list:
                if part.kind not in ("reservedword", "operator"):
                    self.node(part)
            for redirect in getattr(node, "redirects", []) or []:
                self.redirect(redirect, [])
        elif kind in ("if", "while", "until", "for"):
            if kind in ("while", "until"):
                self._endless_spawn(node)
            for part in node.parts:
                if part.kind == "word":
                    self.substitutions(part)
                elif part.kind not in ("reservedword", "operator"):
                    self.node(part)
        elif kind == "function":
            self.function(node)
        elif kind == "command":
            self.command(node, stdin)
        elif kind in ("word", "assignment"):
            self.substitutions(node)

    def substitutions(self, node) -> None:
        for part in getattr(node, "parts", []) or []:
            if part.kind in ("commandsubstitution", "processsubstitution"):
                self.node(part.command)
            else:
                self.substitutions(part)

    def _pipe_from(self, command) -> _Stdin:
        stdin = _Stdin("pipe")
        if command.kind != "command":
            stdin.producer = "a compound command"
            return stdin
        words = [p for p in command.parts if p.kind == "word"]
        fields = [f for w in words for f in self.expander().fields(self.raw(w))]
        if fields:
            stdin.producer = _name(fields[0])
            if stdin.producer in ("echo", "printf") and all(f.known for f in fields) and not any(
                    "\\" in f.text or "%" in f.text for f in fields[1:]):
                args = [f.text for f in fields[1:] if not (stdin.producer == "echo" and f.text in ("-n", "-e"))]
                stdin.text = " ".join(args) + "\n"
            elif stdin.producer == "cat":
                for part in command.parts:
                    if part.kind == "redirect" and part.type in ("<<", "<<-") and part.heredoc is not None:
                        stdin.text = _heredoc_body(part.heredoc.value)
                    elif part.kind == "redirect" and part.type == "<<<":
                        stdin.text = self.expander().scalar(self.raw(part.output)) + "\n"
        return stdin

    def _endless_spawn(self, node) -> None:
        condition = [p for p in node.parts if p.kind != "reservedword"][:1]
        text = self.raw(condition[0]).strip().rstrip(";").strip() if condition else ""
        body = self.raw(node)
        if text in ("true", ":", "[ 1 ]", "1") and re.search(r"&(?!&)", body.split("do", 1)[-1]):
            self.flag("confirm", "endless spawning", "an endless loop that starts background processes")

    def function(self, node) -> None:
        name_word = next((p for p in node.parts if p.kind == "word"), None)
        name = name_word.word if name_word else ""
        body = node.parts[-1]
        for command in _walk(body, "command"):
            words = [p for p in command.parts if p.kind == "word"]
            if words and words[0].word == name:
                self.flag("deny", "fork bomb", f"the function {name!r} starts itself: a fork bomb freezes the machine")
                return
        self.node(body)

    # -- one simple command
    def command(self, node, stdin: _Stdin | None) -> None:
        parts = node.parts
        for part in parts:
            self.substitutions(part)
        expander = self.expander()
        words = [p for p in parts if p.kind == "word"]
        assignments = [p for p in parts if p.kind == "assignment"]
        redirects = [p for p in parts if p.kind == "redirect"]
        env: dict[str, str | None] = {}
        for assignment in assignments:
            name, value = self._assignment(self.raw(assignment))
            if name:
                env[name] = value
        fields = [f for w in words for f in expander.fields(self.raw(w))]
        if not fields:
            for name, value in env.items():
                self.set_variable(name, value)
        else:
            for name, value in env.items():
                self._special_variable(name, value)
        stdin = self.redirect_stdin(redirects, stdin)
        self.redirects(redirects, fields, stdin)
        if fields:
            saved = dict(self.local)
            self.local.update({k: v for k, v in env.items()})
            try:
                self.run(fields, stdin or _Stdin())
            finally:
                self.local = saved

    def _assignment(self, raw: str) -> tuple[str, str | None]:
        m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)(\[[^\]]*\])?(\+?)=(.*)", raw, re.S)
        if not m:
            return "", None
        name, _, plus, value_raw = m.groups()
        if value_raw.startswith("("):
            return name, None
        value = self.expander().scalar(value_raw)
        if plus:
            old = self.lookup(name)
            value = None if old is None else old + value
        return name, (None if UNKNOWN in value else value)

    def set_variable(self, name: str, value: str | None) -> None:
        self._special_variable(name, value)
        self.local[name] = value
        self.state.variables[name] = value

    def _special_variable(self, name: str, value: str | None) -> None:
        if name == "PROMPT_COMMAND" or name.startswith("PROMPT_COMMAND"):
            self.sub(value if value is not None else UNKNOWN, "PROMPT_COMMAND")
        elif name in ("BASH_ENV", "ENV", "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONSTARTUP",
                      "PERL5OPT", "NODE_OPTIONS", "BASH_LOADABLES_PATH", "PYTHONPATH", "RUBYOPT", "GIT_SSH_COMMAND",
                      "GIT_EXTERNAL_DIFF", "PAGER", "EDITOR", "VISUAL") and name not in ("PAGER", "EDITOR", "VISUAL"):
            self.flag("confirm", "code loaded into later commands", f"setting {name} loads code into later commands")
        elif name in ("PS0", "PS1", "PS2", "PS4") and value is None:
            self.flag("confirm", "code in the prompt", f"{name} with a command substitution runs at every prompt")
        elif name == "PATH" and value is not None and not value.endswith(("$PATH", "/bin", "/sbin")) and \
                ":" not in value:
            self.flag("confirm", "PATH replaced", "PATH replaced: later program names resolve elsewhere")

    # -- redirections
    def redirect_stdin(self, redirects, stdin: _Stdin | None) -> _Stdin | None:
        for r in redirects:
            if r.type in ("<<", "<<-") and r.heredoc is not None:
                body = _heredoc_body(r.heredoc.value)
                delimiter = self.raw(r.output) if not isinstance(r.output, int) else ""
                if delimiter not in self._quoted_heredocs and re.search(r"\$\(|`", body):
                    self.flag("confirm", "command inside a here-document",
                              "a here-document runs commands through $(...) or backticks")
                stdin = _Stdin("heredoc", text=body)
            elif r.type == "<<<":
                stdin = _Stdin("herestring", text=self.expander().scalar(self.raw(r.output)) + "\n")
            elif r.type == "<" and not isinstance(r.output, int):
                path = self.expander().scalar(self.raw(r.output))
                stdin = _Stdin("file", path=path)
        return stdin

    def redirects(self, redirects, fields: list[Word], stdin: _Stdin | None = None) -> None:
        producer = _name(fields[0]) if fields else ""
        for r in redirects:
            if r.type in (">", ">>", ">|", "&>", "&>>", "<>", ">&") and not isinstance(r.output, int):
                target = self.expander().scalar(self.raw(r.output))
                if r.type == ">&" and re.fullmatch(r"\d+|-", target):
                    continue
                self.write_target(target, "redirects output into")
                self.note_file(target, fields, producer, stdin)

    def run(self, fields: list[Word], stdin: _Stdin, extra_unknown: bool = False) -> None:
        first = fields[0]
        if COMPLETION in first.text and UNKNOWN not in first.text:
            prefix = posixpath.basename(first.text.split(COMPLETION, 1)[0])
            if not prefix or any(name.startswith(prefix) for name in _RISKY_NAMES()):
                self.flag("confirm", "tab-completed program name",
                          f"tab completion of {prefix or 'a program name'!r} could start a risky program")
            return
        if not first.known:
            self.flag("confirm", "computed program name", f"the program name {first} is only known at run time")
            return
        if first.glob:
            self.flag("confirm", "program name is a pattern", f"the program name {first.text!r} is a wildcard pattern")
            return
        name = _name(first)
        args = fields[1:] + ([Word(UNKNOWN)] if extra_unknown else [])
        if "/" in first.text:
            self.run_file(first.text, "shell")
        if name in _WRAPPERS:
            self.wrapper(name, args, stdin)
            return
        handler = getattr(self, "p_" + re.sub(r"\W", "_", name), None)
        if handler is not None:
            handler(name, args, stdin)
            return
        language = _interp(name)
        if name in SHELLS:
            self.shell(name, args, stdin)
        elif language is not None:
            self.interpreter(name, language, args, stdin)
        elif name in PRIVILEGE:
            self.flag("confirm", "runs as root", f"{name} runs a command as root or another user")
        elif name in POWER or name.startswith("mkfs"):
            what = "formats a file system" if name.startswith("mkfs") else "turns the machine off or restarts it"
            self.flag("confirm", name, f"{name} {what}")
        elif name in WIPERS:
            self.flag("confirm", name, f"{name} destroys disk or file contents beyond recovery")
        elif name in INJECTORS:
            self.flag("confirm", "synthetic keystrokes", f"{name} types keystrokes the safety policy cannot see")
        if name in _WRITERS_LAST or name in _WRITERS_ALL:
            self.writer(name, args)

    def run_file(self, path: str, language: str) -> None:
        for key in _file_key(path):
            note = self.state.files.get(key)
            if note is None:
                continue
            if note.text is None:
                self.flag("confirm", f"runs a {note.source} file",
                          f"{path} was {note.source} in this session and its content is not known")
            else:
                if language == "shell" and not note.text.startswith("#!") or re.match(r"#!.*\b(ba|da|z)?sh\b",
                                                                                     note.text):
                    self.sub(note.text, f"the script {path}")
                else:
                    found = judge_code(note.text, language if language != "shell" else "script")
                    if found:
                        self.findings.append(found)
            return

def _walk(node, kind: str):
    if getattr(node, "kind", None) == kind:
        yield node
    for attr in ("parts", "list"):
        for child in getattr(node, attr, None) or []:
            yield from _walk(child, kind)
    for attr in ("command",):
        child = getattr(node, attr, None)
        if child is not None and hasattr(child, "kind"):
            yield from _walk(child, kind)


def _heredoc_body(value: str) -> str:
    return value.rsplit("\n", 1)[0] + "\n" if "\n" in value else ""


# ---- reading the line --------------------------------------------------------------------------------------
_HISTORY = re.compile(r"!(?=[^\s=(\"'])")


def _prechecks(text: str, judge: _Judge) -> None:
    unquoted = re.sub(r"'[^']*'", "''", text)
    if _HISTORY.search(unquoted):
        judge.flag("confirm", "history expansion", "! history expansion runs an earlier command again")
    if re.search(r"\$'[^']*\\'", text):
        judge.flag("confirm", "unreadable quoting", "an escaped quote inside $'...' is read differently by "
                   "the safety lexer than by bash")


def _preprocess(text: str) -> tuple[str, set[str]]:
    """Rewrite what bashlex does not implement into equivalents it reads (same judgement)."""
    quoted: set[str] = set()

    def heredoc(m: re.Match) -> str:
        word = m.group(2)
        plain = word.strip("'\"").replace("\\", "")
        if plain != word:
            quoted.add(plain)
        return m.group(1) + plain

    text = re.sub(r"(?<!<)(<<-?\s*)(?!<)('[^'\n]*'|\"[^\"\n]*\"|\\?\w+)", heredoc, text)
    text = re.sub(r"(^|[;&|(\n{]\s*|\b(?:then|do|else)\s+)time(\s+-p)?(?=\s)", r"\1    ", text)
    return text, quoted


def _parse(text: str, judge: _Judge):
    """(nodes, complete): nodes None when the line cannot be read (a finding says why) or is incomplete."""
    pre, quoted = _preprocess(text)
    judge._quoted_heredocs = quoted
    if re.search(r"\$\(\(", pre):
        if re.search(r"\$\(\((?:[^)]|\)(?!\)))*(\$\(|`|\[)", pre):
            judge.flag("confirm", "command inside arithmetic", "an arithmetic expansion that runs commands")
        pre = re.sub(r"\$\(\((?:[^)]|\)(?!\)))*\)\)", "${_KCA_ARITH}", pre)
    if _trailing_backslash(pre):
        return None, False
    last_error: Exception | None = None
    bashlex = _bashlex()
    for attempt in (pre, re.sub(r"\[\[|\]\]", lambda m: " [" if m.group() == "[[" else "] ", pre)):
        try:
            nodes = bashlex.parse(attempt)
            judge.src = attempt
            judge.src_text = attempt
            return nodes, True
        except (bashlex.errors.ParsingError, NotImplementedError, AttributeError, IndexError, TypeError,
                ValueError, AssertionError, RecursionError) as exc:
            last_error = exc
    if _bash_says_incomplete(text):
        return None, False
    judge.flag("confirm", "unreadable line", f"the line cannot be read with confidence ({last_error})"[:160])
    return None, True


def _trailing_backslash(text: str) -> bool:
    stripped = re.sub(r"'[^']*'", "", text)
    m = re.search(r"(\\+)$", stripped)
    return bool(m and len(m.group(1)) % 2 == 1)


def _bash_says_incomplete(text: str) -> bool:
    """bash itself (syntax check only, nothing runs) says the line waits for more input."""
    bash = shutil.which("bash")
    if bash is None:
        return False
    try:
        # -n: bash reads the line and runs nothing (no BASH_ENV either: a bare environment).
        proc = subprocess.run([bash, "--norc", "--noprofile", "-n", "-c", text], capture_output=True, text=True,
                              timeout=5, stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(re.search(r"unexpected (EOF|end of file)|delimited by end-of-file", proc.stderr))


def judge_line(text: str, state: ShellState) -> Judgement:
    """Judge one completed line (what Enter submits) and update ``state`` with what it leaves behind."""
    judge = _Judge(state)
    complete = judge.line(text)
    return _verdict(judge.findings, complete)


def _verdict(findings: list[Finding], complete: bool = True) -> Judgement:
    if not findings:
        return Judgement("allow", complete=complete)
    worst = max(findings, key=lambda f: _RANK[f.effect])
    return Judgement(worst.effect, worst.rule, worst.reason, complete=complete, findings=findings)


def judge_repl_line(text: str, language: str) -> Judgement:
    """A line typed into an interactive interpreter (python, node, ...) started earlier in the terminal."""
    found = judge_code(text, language)
    return _verdict([found] if found else [])


def leaves_repl(text: str, language: str) -> bool:
    return bool(re.fullmatch(r"\s*(exit|quit)\s*(\(\s*\)|\(\s*\d*\s*\))?\s*;?\s*|\s*\.exit\s*|\s*q\(\)\s*", text))
