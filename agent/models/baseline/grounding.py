"""Turn an instruction and OCR'd text lines into a Kimi-VL-style answer (thinking, ## Action, ## Code)."""
from __future__ import annotations

import re
from difflib import SequenceMatcher
from typing import Literal

from pydantic import BaseModel, ConfigDict

from agent.models.baseline.ocr import TextBox

ClickKind = Literal["click", "doubleClick", "rightClick"]

_OFFICIAL_MARK = "<instruction>"
_QUOTED = re.compile(r'"([^"\n]{1,80})"|“([^”\n]{1,80})”|‘([^’\n]{1,80})’|`([^`\n]{1,80})`'
                     r"|(?<!\w)'([^'\n]{1,80})'(?!\w)")
_VERB = re.compile(
    r"\b(double[- ]?click|right[- ]?click|click|tap|press|select|choose|open|hit)\s+(?:on\s+|at\s+)?"
    r"(?:the\s+|a\s+|an\s+)?(?P<target>[^.;:\n!?]+)", re.I)
_UI_NOUNS = re.compile(r"\s+(?:button|link|menu(?:\s+item)?|tab|icon|field|item|option|entry|checkbox|"
                       r"label|text|box|control)\s*$", re.I)
_NAMED = re.compile(r"\b(?:labell?ed|named|called|titled|saying|reading|with the text)\s+(?P<target>[^.;:\n!?]+)", re.I)
_PREPOSITION = re.compile(r"\s+(?:in|on|at|of|from|under|inside|within|near|next to|below|above)\s+", re.I)


class Target(BaseModel):
    """What to look for on screen, from the instruction text."""

    model_config = ConfigDict(frozen=True)
    phrases: tuple[str, ...]  # candidates, most specific first
    kind: ClickKind = "click"


class Match(BaseModel):
    """The best OCR span for a target: its text, box in image pixels and similarity in [0, 1]."""

    model_config = ConfigDict(frozen=True)
    phrase: str
    text: str
    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def centre(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


def _click_kind(text: str) -> ClickKind:
    lowered = text.lower()
    if re.search(r"double[- ]?click", lowered):
        return "doubleClick"
    if re.search(r"right[- ]?click", lowered):
        return "rightClick"
    return "click"


def _variants(phrase: str) -> list[str]:
    phrase = phrase.strip().strip(".,;:!?").strip()
    out = [phrase]
    without_noun = _UI_NOUNS.sub("", phrase).strip()
    out.append(without_noun)
    out.append(_PREPOSITION.split(without_noun, maxsplit=1)[0].strip())
    seen: list[str] = []
    for p in out:
        if p and p not in seen:
            seen.append(p)
    return seen


def extract_target(prompt: str) -> Target:
    """Find the text to locate: the official grounding prompt's instruction, quoted text, or the words after a verb.

    Handles ``Please observe the screenshot, please locate the following elements with action and point.
    <instruction> Submit button`` as well as agent-style prompts (``Click "Save"``, ``click on the File menu``).
    """
    text = prompt.strip()
    if _OFFICIAL_MARK in text:
        text = text.rsplit(_OFFICIAL_MARK, 1)[1].strip()
    kind = _click_kind(text)
    phrases: list[str] = []
    for m in _QUOTED.finditer(text):
        phrases.extend(_variants(next(g for g in m.groups() if g)))
    if not phrases:  # quoted text is the strongest signal; otherwise look for "labelled X", then "click X"
        for pattern in (_NAMED, _VERB):
            for m in pattern.finditer(text):
                phrases.extend(_variants(m.group("target")))
    if not phrases:  # a bare ScreenSpot-style instruction ("Submit button") is itself the text to find
        lines = [line for line in text.splitlines() if line.strip()]
        phrases.extend(_variants(lines[-1] if lines else text))
    unique = tuple(dict.fromkeys(p for p in phrases if p))
    return Target(phrases=unique, kind=kind)


def _normal(s: str) -> str:
    return " ".join(s.lower().split())


def _windows(line: str) -> list[tuple[int, int, str]]:
    """All contiguous word windows of a line as (start char, end char, text)."""
    words = [(m.start(), m.end()) for m in re.finditer(r"\S+", line)]
    out = []
    for i in range(len(words)):
        for j in range(i, len(words)):
            start, end = words[i][0], words[j][1]
            out.append((start, end, line[start:end]))
    return out


def find_text(target: Target, boxes: list[TextBox], threshold: float = 0.7) -> Match | None:
    """The OCR span most similar to any target phrase (case-insensitive), or None below ``threshold``."""
    best: Match | None = None
    for box in boxes:
        line = box.text
        for start, end, window in _windows(line):
            for phrase in target.phrases:
                score = SequenceMatcher(None, _normal(phrase), _normal(window)).ratio()
                if best is not None and score <= best.score:
                    continue
                width = box.x1 - box.x0
                share = max(len(line), 1)
                best = Match(phrase=phrase, text=window, x0=box.x0 + width * start / share, y0=box.y0,
                             x1=box.x0 + width * end / share, y1=box.y1, score=score)
    if best is None or best.score < threshold:
        return None
    return best


def click_answer(match: Match, kind: ClickKind, width: int, height: int) -> str:
    """Kimi-VL's output format with the point normalized to the shown image."""
    cx, cy = match.centre
    x, y = min(max(cx / width, 0.0), 1.0), min(max(cy / height, 0.0), 1.0)
    thinking = (f"The instruction asks for \"{match.phrase}\". Text recognition found \"{match.text}\" at "
                f"x {match.x0:.0f}-{match.x1:.0f}, y {match.y0:.0f}-{match.y1:.0f} in the {width}x{height} "
                f"screenshot (similarity {match.score:.2f}), so I will {kind_words(kind)} its centre.")
    return (f"◁think▷{thinking}◁/think▷## Action:\n{kind_words(kind).capitalize()} \"{match.text}\".\n"
            f"## Code:\n```python\npyautogui.{kind}(x={x:.3f}, y={y:.3f})\n```")


def failure_answer(reason: str) -> str:
    safe = reason.replace("\\", "\\\\").replace('"', "'")
    return (f"◁think▷{reason}◁/think▷## Action:\nGive up: {reason}\n"
            f"## Code:\n```python\ncomputer.terminate(status=\"failure\", answer=\"{safe}\")\n```")


def done_answer(reason: str) -> str:
    return (f"◁think▷{reason}◁/think▷## Action:\nThe task is done.\n"
            f"## Code:\n```python\ncomputer.terminate(status=\"success\")\n```")


def kind_words(kind: ClickKind) -> str:
    return {"click": "click", "doubleClick": "double-click", "rightClick": "right-click"}[kind]


def ground(prompt: str, boxes: list[TextBox], width: int, height: int, threshold: float = 0.7) -> str:
    """The whole grounding step: instruction -> target -> best OCR span -> answer text."""
    target = extract_target(prompt)
    match = find_text(target, boxes, threshold)
    if match is None:
        wanted = " / ".join(f'"{p}"' for p in target.phrases[:3]) or "nothing"
        seen = len(boxes)
        return failure_answer(f"no on-screen text matches {wanted} ({seen} text lines read, "
                              f"similarity threshold {threshold:.2f})")
    return click_answer(match, target.kind, width, height)
