"""Reading a judge's verdict: only its final line, and only in the strict format.

The verdict formats (the final non-blank line of the reply must match, in full):

=================  ===========================  ================================
mode               final line                   meaning
=================  ===========================  ================================
``pointwise``      ``VERDICT: <n>``             an integer on the request's scale
``pairwise``       ``[[A]]``, ``[[B]]``,        A better, B better, equally good
                   ``[[TIE]]``
``reference_match`` ``EQUIVALENT: yes|no``      equivalent to the reference or not
=================  ===========================  ================================

Anything else (a verdict somewhere in the middle, text after the verdict, a number off
the scale, a markdown-decorated line, a refusal) is not a verdict: `VerdictError`, which
the judge turns into an ERROR result carrying the reply. Reading only the final line is
what keeps an echo of the prompt (whose instructions show an example verdict line) or a
quoted completion (which may contain a fake "VERDICT: 10") from becoming the score: the
bug of prometheus-eval #58, where the score was regex-searched anywhere in the output.

>>> parse_pointwise("Clear and correct.\\nVERDICT: 8", 1, 10)
8
>>> parse_pairwise("B misses the edge case.\\n[[A]]")
'A'
>>> parse_match("Same value, other notation.\\nEQUIVALENT: yes")
True
"""

from __future__ import annotations

import re

_POINTWISE = re.compile(r"VERDICT:[ \t]*([+-]?\d{1,6})")
_PAIRWISE = re.compile(r"\[\[(A|B|TIE)\]\]")
_MATCH = re.compile(r"EQUIVALENT:[ \t]*(yes|no)", re.IGNORECASE)

REPLY_SHOWN = 600
"""Most characters of a reply quoted in a reason (its head and its tail)."""


class VerdictError(ValueError):
    """The reply holds no valid final verdict; the message says why and quotes it."""


def final_line(reply: str) -> str:
    """The reply's last non-blank line, stripped."""
    for line in reversed(reply.splitlines()):
        if line.strip():
            return line.strip()
    return ""


def shown(reply: str, limit: int = REPLY_SHOWN) -> str:
    """`reply` cut to `limit` characters, keeping its head and its (verdict-bearing) tail."""
    if len(reply) <= limit:
        return reply
    head = limit // 3
    tail = limit - head
    return f"{reply[:head]} [... {len(reply) - limit} characters cut ...] {reply[-tail:]}"


def _fail(why: str, reply: str) -> VerdictError:
    return VerdictError(f"{why}; raw reply ({len(reply)} chars): {shown(reply)!r}")


def parse_pointwise(reply: str, scale_min: int, scale_max: int) -> int:
    """The integer of a final ``VERDICT: <n>`` line, which must lie on the scale."""
    m = _POINTWISE.fullmatch(final_line(reply))
    if m is None:
        raise _fail("no verdict: the final line is not 'VERDICT: <n>'", reply)
    n = int(m.group(1))
    if not scale_min <= n <= scale_max:
        raise _fail(f"verdict {n} is off the scale {scale_min}..{scale_max}", reply)
    return n


def parse_pairwise(reply: str) -> str:
    """``A``, ``B`` or ``TIE`` from a final ``[[A]]`` / ``[[B]]`` / ``[[TIE]]`` line."""
    m = _PAIRWISE.fullmatch(final_line(reply))
    if m is None:
        raise _fail("no verdict: the final line is not [[A]], [[B]] or [[TIE]]", reply)
    return m.group(1)


def parse_match(reply: str) -> bool:
    """True or False from a final ``EQUIVALENT: yes`` / ``EQUIVALENT: no`` line."""
    m = _MATCH.fullmatch(final_line(reply))
    if m is None:
        raise _fail("no verdict: the final line is not 'EQUIVALENT: yes' or 'EQUIVALENT: no'", reply)
    return m.group(1).lower() == "yes"
