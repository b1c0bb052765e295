"""Finding the program in a model's completion.

Chat models answer with prose around a fenced block (often several: a sketch, then the
final version); base models continue the prompt with bare code. `extract_code` takes,
in order of preference:

1. the LAST fenced block whose info string names the sample's language (```` ```py ````,
   ```` ```python3 ````, ```` ```c++ ````, ```` ```cpp ```` ... see `FENCE_NAMES`);
2. else the last fenced block of any language (or none);
3. else, only when `allow_unfenced` is set, the whole completion.

Fences follow CommonMark closely enough for model output: ```` ``` ```` or ``~~~``, three
or more, optionally indented (the indent is removed from the body's lines); a fence
closes only on a line holding nothing but a fence of the same character at least as
long, so ```` s = "```" ```` inside code does not end the block. A block left open at
the end of the completion (a stop sequence ate the closing fence) runs to the end.
An empty or whitespace-only block counts as no code.

>>> extract_code("Here:\\n```python\\nprint(1)\\n```\\nand in C:\\n```c\\nint main(){}\\n```", "python")
'print(1)\\n'
>>> extract_code("```\\nx = 1\\n```", "cpp")
'x = 1\\n'
>>> extract_code("def f(): return 1", "python") is None
True
>>> extract_code("def f(): return 1", "python", allow_unfenced=True)
'def f(): return 1'
"""

from __future__ import annotations

import re
from dataclasses import dataclass

FENCE_NAMES: dict[str, tuple[str, ...]] = {
    "python": ("python", "python3", "py", "py3", "pycon", "python-repl"),
    "c": ("c", "h", "gcc"),
    "cpp": ("cpp", "c++", "cxx", "cc", "hpp", "h++", "cplusplus", "g++"),
    "javascript": ("javascript", "js", "node", "nodejs", "mjs", "cjs"),
    "bash": ("bash", "sh", "shell", "zsh", "console"),
}
"""Info-string words (lower-cased) accepted as naming each sandbox language."""

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^\n]*)$")


@dataclass(frozen=True)
class Block:
    info: str
    """First word of the info string, lower-cased ("" for a bare fence)."""
    body: str


def fenced_blocks(text: str) -> list[Block]:
    """Every fenced block in `text`, in order (an unclosed last one runs to the end)."""
    blocks: list[Block] = []
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines):
        m = _OPEN.match(lines[i].rstrip("\r\n"))
        if m is None or (m["fence"][0] == "`" and "`" in m["info"]):
            i += 1
            continue
        fence, indent = m["fence"], len(m["indent"].expandtabs(4))
        info = m["info"].strip().split(maxsplit=1)
        word = info[0].lower().strip("{}.") if info else ""
        closer = re.compile(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$")
        body: list[str] = []
        i += 1
        while i < len(lines) and not closer.match(lines[i].rstrip("\r\n")):
            body.append(_dedent(lines[i], indent))
            i += 1
        i += 1  # past the closing fence (or the end)
        blocks.append(Block(word, "".join(body)))
    return blocks


def _dedent(line: str, indent: int) -> str:
    """Removes up to `indent` columns of leading spaces (the fence's own indent)."""
    n = 0
    while n < len(line) and n < indent and line[n] == " ":
        n += 1
    return line[n:]


def names_language(info: str, language: str) -> bool:
    """True when a fence's info word names `language` (a sandbox language name)."""
    return info in FENCE_NAMES.get(language, (language,))


def extract_code(text: str, language: str, allow_unfenced: bool = False) -> str | None:
    """The program in `text` for `language` (a sandbox language name), or None."""
    blocks = [b for b in fenced_blocks(text) if b.body.strip()]
    for block in reversed(blocks):
        if names_language(block.info, language):
            return block.body
    if blocks:
        return blocks[-1].body
    if allow_unfenced and text.strip():
        return text
    return None
