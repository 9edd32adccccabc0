"""Reading a grounding answer exactly as ScreenSpot-Pro's own Kimi-VL wrapper does (``--answers upstream``).

Written from the documented behaviour of ``models/kimivl.py`` in likaixin2000/ScreenSpot-Pro-GUI-Grounding (its
``ground_only_positive``), not from its code:

- the summary is the text after the first ``◁/think▷``, or the whole reply when it has no thinking markers; a reply
  that opened its thinking and never closed it has no summary. (A reply that closes a thinking it never opened
  stops upstream's script with an error, which is no score at all; it is read here like the others: after the
  first ``◁/think▷``.)
- the point is the FIRST match of its regular expression in the summary: ``x=<n>, y=<n>`` with exactly one comma
  and one space, each number a fraction written ``0``, ``0.ddd``, ``1`` or ``1.000`` (so a pixel answer, a box, a
  list, a call with spaces around ``=``, or computed code never match);
- the point is normalized; no match is ``wrong_format``.

kimi-cua's own reading (``--answers kimi-cua``, ``actions.parser``) also accepts pixels, boxes, lists, code that
computes coordinates and looser spelling, so it scores the same answers higher: a number published next to
leaderboard numbers must say which reading it used.
"""
from __future__ import annotations

import re

THINK_OPEN, THINK_CLOSE = "◁think▷", "◁/think▷"
_UPSTREAM_POINT = re.compile(r"x=(0(?:\.\d+)?|1(?:\.0+)?), y=(0(?:\.\d+)?|1(?:\.0+)?)")


def upstream_summary(text: str) -> str | None:
    """The wrapper's summary of a reply, or None where it has none."""
    if THINK_OPEN in text and THINK_CLOSE not in text:
        return None
    if THINK_CLOSE in text:
        return text[text.index(THINK_CLOSE) + len(THINK_CLOSE):].strip()
    return text


def upstream_point(text: str) -> tuple[float, float] | None:
    """The normalized point the wrapper reads from a whole reply, or None (``wrong_format``)."""
    summary = upstream_summary(text)
    if summary is None:
        return None
    match = _UPSTREAM_POINT.search(summary)
    if match is None:
        return None
    return float(match.group(1)), float(match.group(2))
