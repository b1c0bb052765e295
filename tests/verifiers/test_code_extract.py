"""Finding the program in a completion: fences, languages, none."""

from __future__ import annotations

import doctest

import pytest

from referee.verifiers import code_compare, code_extract
from referee.verifiers.code_extract import extract_code, fenced_blocks


def test_docstring_examples_run() -> None:
    for module in (code_extract, code_compare):
        results = doctest.testmod(module)
        assert results.failed == 0 and results.attempted >= 4, module.__name__


@pytest.mark.parametrize(
    ("text", "language", "expected"),
    [
        ("```python\nprint(1)\n```", "python", "print(1)\n"),
        ("```py\nprint(1)\n```", "python", "print(1)\n"),
        ("```Python3\nprint(1)\n```", "python", "print(1)\n"),
        ("```python title=sol.py\nprint(1)\n```", "python", "print(1)\n"),
        ("```{.python}\nprint(1)\n```", "python", "print(1)\n"),
        # the last block naming the language wins over later blocks in other languages
        ("```python\nv1\n```\n```python\nv2\n```\n```text\nsample output\n```", "python", "v2\n"),
        ("```cpp\nint a;\n```\n```c++\nint b;\n```", "cpp", "int b;\n"),
        ("```cpp\nint a;\n```\n```python\nx\n```", "cpp", "int a;\n"),
        ("```c\nint a;\n```\n```cpp\nint b;\n```", "c", "int a;\n"),
        # no block in the language: the last block of any
        ("```\nbare\n```\n```js\nlet x;\n```", "python", "let x;\n"),
        # tildes, longer fences, indented fences
        ("~~~python\nprint(2)\n~~~", "python", "print(2)\n"),
        (
            "````python\nprint('```')\n```\nstill code\n````",
            "python",
            "print('```')\n```\nstill code\n",
        ),
        (
            "1. Do this:\n   ```python\n   def f():\n       return 1\n   ```",
            "python",
            "def f():\n    return 1\n",
        ),
        # a backtick fence closes only on a line of its own
        ('```python\ns = "```"\nprint(s)\n```', "python", 's = "```"\nprint(s)\n'),
        # unclosed: runs to the end (a stop sequence ate the closing fence)
        ("Sure:\n```python\nprint(3)\n", "python", "print(3)\n"),
        # CRLF line ends
        ("```python\r\nprint(4)\r\n```\r\n", "python", "print(4)\r\n"),
        # reasoning with a draft before the answer: the last block
        (
            "<think>\n```python\ndraft()\n```\n</think>\n```python\nfinal()\n```",
            "python",
            "final()\n",
        ),
    ],
)
def test_extracts(text: str, language: str, expected: str) -> None:
    assert extract_code(text, language) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "just prose, no code",
        "inline ```python print(1)``` is not a block",
        "```python\n   \n```",
    ],
)
def test_no_code(text: str) -> None:
    assert extract_code(text, "python") is None


def test_unfenced_only_when_allowed() -> None:
    assert extract_code("    return a + b\n", "python", allow_unfenced=True) == "    return a + b\n"
    assert extract_code("    return a + b\n", "python") is None
    assert extract_code("```python\nx\n```", "python", allow_unfenced=True) == "x\n"
    assert extract_code("  \n", "python", allow_unfenced=True) is None


def test_blocks_keep_their_info_word() -> None:
    blocks = fenced_blocks("```C++ extra\na\n```\n```\nb\n```")
    assert [(b.info, b.body) for b in blocks] == [("c++", "a\n"), ("", "b\n")]
