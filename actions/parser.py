"""Model text -> typed actions, in the frame of the image the model was shown. Nothing is ever evaluated.

Accepted dialects (one summary may hold several actions, in order):
- ``## Action:`` prose + ``## Code:`` fenced python of pyautogui calls (keyword or positional arguments);
  the LAST fenced block is the code, as in OSWorld's Kimi agent;
- ``Toolcall: click(x=0.365, y=0.317)``, ``scroll(-5)``, bare ``click(x=..., y=...)`` anywhere in prose;
- ``computer.wait()``, ``computer.terminate(status="success"|"failure", answer=...)``, ``time.sleep(n)``;
- a bare point or box: ``(x=0.5, y=0.5)``, ``(0.5, 0.5)``, ``[x, y]``, ``{"bbox_2d": [x1, y1, x2, y2]}``,
  ``[x1, y1, x2, y2]`` (a box becomes a click at its centre);
- the words ``WAIT``, ``DONE``, ``FAIL``.

Readings that would do something other than what was written are refused or ranked (issue 18):
- in prose, a call the sentence negates (``I will not click(0.5, 0.5)``) is not an action;
- calls win over the words, and a word wins over numbers in prose (``DONE (1, 1)`` is DONE, never a click);
- the bare-point fallback fires only when the answer is one point or box and nothing else that could mean
  something: no other number, no call, no word, no negation (``getattr(pyautogui, 'click')(0.5, 0.5)`` is refused);
- a fenced block tagged with a shell or another language (```` ```bash ````) is refused, never read as prose;
- any unexpected exception while parsing becomes an ``ActionParseError`` (a format error fed back to the model).

Code is read with ``ast``: only calls to whitelisted names with literal arguments (numbers, strings,
booleans, None, and lists/tuples of those) are understood. Anything else raises ``ActionParseError``
with a message meant to be fed back to the model.
"""
from __future__ import annotations

import ast
import itertools
import re
import warnings
from actions import arith
from actions.calls import (
    ALLOWED_MODULES,
    FORMAT_HINT,
    KNOWN_CALL_NAMES,
    MAX_ACTIONS,
    MAX_CODE_STATEMENTS,
    WORDS,
    Args,
    NotLiteral,
    Step,
    convert_call,
    convert_statement,
    fail,
    coordinate,
    finite,
    fold,
    point_from,
)
from actions.types import Action, ActionParseError, Click, Point

__all__ = ["FORMAT_HINT", "KNOWN_CALL_NAMES", "MAX_SUMMARY_CHARS", "parse_reply", "parse_summary", "split_reply"]

THINK_OPEN = "◁think▷"
THINK_CLOSE = "◁/think▷"

MAX_SUMMARY_CHARS = 32_768
# --------------------------------------------------------------------------------------------------
# Reply splitting (the one place this rule lives; agent/reply.py uses it)


def split_reply(text: str) -> tuple[str, str, bool]:
    """Return (thinking, summary, truncated): the summary is the text after the LAST end marker."""
    if THINK_CLOSE in text:
        head, _, summary = text.rpartition(THINK_CLOSE)
        return head.replace(THINK_OPEN, "", 1).strip(), summary.strip(), False
    if THINK_OPEN in text:
        return text.split(THINK_OPEN, 1)[1].strip(), "", True
    return "", text.strip(), False


def parse_reply(text: str) -> list[Action]:
    """Parse a full model reply (thinking + summary). Coordinates inside the thinking never count."""
    try:
        return _parse_reply(text)
    except ActionParseError:
        raise
    except Exception as exc:  # noqa: BLE001 - see parse_summary
        raise fail(f"the answer could not be read ({type(exc).__name__})") from None


def _parse_reply(text: str) -> list[Action]:
    if not isinstance(text, str):
        raise ActionParseError(f"model output must be text, got {type(text).__name__}")
    _, summary, truncated = split_reply(text)
    if truncated:
        raise ActionParseError(
            "your reply was cut off inside the thinking (no ◁/think▷), so it has no action; "
            "think more briefly and end with ◁/think▷ followed by the action"
        )
    return parse_summary(summary)


# --------------------------------------------------------------------------------------------------
# Finding the code in the summary

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n?(.*?)(?:```|\Z)", re.DOTALL)
_CALL_START = re.compile(r"(?<![\w.])((?:[A-Za-z_]\w*\.)?)([A-Za-z_]\w*)\(")
_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_BARE_POINT = re.compile(
    rf"[\[(]\s*(?:x\s*[=:]\s*)?({_NUM})\s*,\s*(?:y\s*[=:]\s*)?({_NUM})"
    rf"(?:\s*,\s*({_NUM})\s*,\s*({_NUM}))?\s*[\])]"
)
_WORD = re.compile(r"(?<![\w.])(WAIT|DONE|FAIL)(?![\w(])")
# Words that turn a sentence around: "I will not click(...)", "don't click(...)", "instead of click(...)".
_NEGATION = re.compile(r"(?i)(?:\b(?:not|never|no|cannot|avoid|instead|rather|without|unable|neither|nor)\b|n't\b)")
_JSON_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')


_PYTHON_FENCES = frozenset({"", "python", "py", "python3", "pyautogui"})
# Blocks read as prose (a point, a box, a word); any other tag (bash, sh, js, ...) is not an action.
_DATA_FENCES = frozenset({"json", "jsonc", "text", "txt", "plaintext", "plain", "markdown", "md"})


def _code_blocks(summary: str) -> list[tuple[str, str]]:
    """(language, code) of every non-empty fenced block; an unclosed fence runs to the end."""
    return [(m.group(1), m.group(2)) for m in _FENCE.finditer(summary) if m.group(2).strip()]


def _is_bare_literal(code: str) -> bool:
    """A block holding only a point or box, e.g. [0.1, 0.2, 0.3, 0.4] or {"bbox_2d": [...]}."""
    return code.strip()[:1] in ("[", "{", "(") and _CALL_START.search(code) is None


_QUOTED = re.compile(r"'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")
# Separators outside strings in a code block: 50 calls with 16-item lists stay far below; thousands of
# arguments only cost parse time (ast) before being refused anyway.
MAX_CODE_SEPARATORS = 2_000


def _too_complex(code: str) -> bool:
    bare = _QUOTED.sub("", code)
    return sum(bare.count(mark) for mark in ",([{=") > MAX_CODE_SEPARATORS


def _parse_code(code: str) -> list[Action]:
    code = code.strip()
    if _too_complex(code):
        raise fail(f"the code block is far too long (at most {MAX_CODE_STATEMENTS} short calls)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # SyntaxWarning/DeprecationWarning about odd literals
            tree = ast.parse(code, mode="exec")
    except SyntaxError as exc:
        raise fail(f"the code block is not valid python ({exc.msg}, line {exc.lineno})") from None
    except (ValueError, MemoryError, RecursionError, OverflowError) as exc:
        raise fail(f"the code block could not be read ({type(exc).__name__})") from None
    if len(tree.body) > MAX_CODE_STATEMENTS:
        raise fail(f"the code block has more than {MAX_CODE_STATEMENTS} statements")
    names = arith.screen_names()  # names assigned earlier in this block, for the calls after them
    steps = [s for s in (convert_statement(stmt, names) for stmt in tree.body) if s is not None]
    return fold(steps)


def _call_end(text: str, open_paren: int) -> int:
    """Index just after the ')' matching text[open_paren], or -1; aware of quotes."""
    depth, i, quote = 0, open_paren, ""
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = ""
            elif ch == "\n" and quote in "'\"":
                return -1
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
            if depth > 20:
                return -1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return -1


def _negated(text: str, start: int) -> bool:
    """Whether the clause before ``text[start]`` negates it ("I will not click(...)")."""
    # The clause ends at any of these: "There is no OK button, so click(...)" is not negated.
    begin = max(max(text.rfind(mark, 0, start) for mark in ".;:!?,\n") + 1, start - 80)
    return _NEGATION.search(text, begin, start) is not None


def _prose_calls(text: str) -> tuple[list[Step], ActionParseError | None, list[str]]:
    """Whitelisted calls written inline in prose (Toolcall: click(x=..., y=...)), and the negated ones skipped."""
    steps: list[Step] = []
    negated: list[str] = []
    pos = 0
    while True:
        match = _CALL_START.search(text, pos)
        if match is None:
            break
        module, name = match.group(1).rstrip("."), match.group(2)
        pos = match.end()
        if name not in KNOWN_CALL_NAMES:
            continue
        end = _call_end(text, match.end() - 1)
        try:
            if module not in ALLOWED_MODULES:
                raise fail(f"{module}.{name}() is not an allowed action (only pyautogui.* and computer.* are)")
            if end < 0:
                raise fail(f"{name}( is never closed (or nested too deeply)")
            after = text[end:end + 1]
            if after in (".", "[", "("):
                raise fail(f"{name}(...){after} - chained attributes, indexing and calls are not allowed")
            if _too_complex(text[match.start():end]):
                raise fail(f"{name}() has far too many arguments")
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    node = ast.parse(text[match.start():end], mode="eval").body
            except (SyntaxError, ValueError, MemoryError, RecursionError, OverflowError):
                raise fail(f"{text[match.start():end][:80]} is not a valid call") from None
            if not isinstance(node, ast.Call):
                raise fail(f"{text[match.start():end][:80]} is not a call")
            step = convert_call(node)
            pos = end
            if _negated(text, match.start()):
                negated.append(text[match.start():end][:80])
                continue
            steps.append(step)
            if len(steps) > MAX_ACTIONS:
                raise fail(f"at most {MAX_ACTIONS} actions per answer")
        except ActionParseError as exc:
            if _negated(text, match.start()):  # "do not click(the OK button)": nothing was asked for
                negated.append(text[match.start():max(end, match.end())][:80])
                pos = max(end, match.end())
                continue
            return steps, exc, negated
    return steps, None, negated


def _bare_number(text: str) -> int | float:
    try:
        value: int | float = int(text) if re.fullmatch(r"[-+]?\d+", text) else float(text)
        return finite(value)
    except (ValueError, OverflowError, NotLiteral):
        raise fail(f"{text[:40]} is not a usable coordinate") from None


def _bare_point(text: str) -> Action | None:
    """A point or box that is the whole answer (give or take words around it), else None."""
    matches = list(itertools.islice(_BARE_POINT.finditer(text), 2))
    if len(matches) != 1:
        if len(matches) > 1:
            raise fail("the answer holds several points; give exactly one action")
        return None
    match = matches[0]
    rest = _JSON_STRING.sub('""', text[:match.start()] + " " + text[match.end():])  # labels say nothing
    if re.search(r"\d", rest) or _NEGATION.search(rest):
        return None  # other numbers or a negation around the point: not "a point and nothing else"
    call = _CALL_START.search(rest)
    if call is not None:
        raise fail(f"{call.group(1)}{call.group(2)}() is not an allowed action (only pyautogui.* and computer.* "
                   "calls are)")
    numbers = [_bare_number(g) for g in match.groups() if g is not None]
    args = Args("point")
    if len(numbers) == 4:
        return Click(at=point_from(args, numbers))
    return Click(at=Point(x=coordinate(args, numbers[0], "x"), y=coordinate(args, numbers[1], "y")))


def parse_summary(summary: str) -> list[Action]:
    """Parse the post-think summary into actions in the model's frame (numbers as written).

    Raises only ``ActionParseError``: whatever else goes wrong while reading model text is a format error
    for the model to fix, never a crash of the run.
    """
    try:
        return _parse_summary(summary)
    except ActionParseError:
        raise
    except Exception as exc:  # noqa: BLE001 - an input no rule foresaw
        raise fail(f"the answer could not be read ({type(exc).__name__})") from None


def _parse_summary(summary: str) -> list[Action]:
    if not isinstance(summary, str):
        raise ActionParseError(f"model output must be text, got {type(summary).__name__}")
    if len(summary) > MAX_SUMMARY_CHARS:
        raise fail(f"the answer is {len(summary)} characters long (at most {MAX_SUMMARY_CHARS}); answer briefly")
    summary = summary.replace("\x00", "")
    if THINK_CLOSE in summary or THINK_OPEN in summary:
        _, summary, truncated = split_reply(summary)
        if truncated:
            raise fail("the answer was cut off inside the thinking, so it has no action")
    if not summary.strip():
        raise fail("the answer is empty: no action was found")
    blocks = _code_blocks(summary)
    if blocks:
        language, code = blocks[-1]
        language = language.lower()
        if language in _PYTHON_FENCES and not _is_bare_literal(code):
            actions = _parse_code(code)
        elif language in _PYTHON_FENCES or language in _DATA_FENCES:
            actions = _parse_prose(code)
        else:
            raise fail(f"the answer ends with a ```{language[:20]} block, which is not an action; write the "
                       "pyautogui calls in a ```python block")
        if not actions:
            raise fail("the code block holds no action")
    else:
        actions = _parse_prose(summary)
    if len(actions) > MAX_ACTIONS:
        raise fail(f"at most {MAX_ACTIONS} actions per answer")
    return actions


def _parse_prose(summary: str) -> list[Action]:
    """Calls first, then the words WAIT/DONE/FAIL, then a bare point that is the whole answer."""
    steps, error, negated = _prose_calls(summary)
    if error is not None:
        raise error
    if steps:
        actions = fold(steps)
        if actions:
            return actions
    words = [m.group(1) for m in _WORD.finditer(summary) if not _negated(summary, m.start())]
    if words:
        return [WORDS[words[-1]]()]
    if not negated:
        point = _bare_point(summary)
        if point is not None:
            return [point]
    if negated:
        raise fail(f"the answer says not to do {negated[0]}, and gives no other action")
    raise fail("no action was found in the answer")
