"""The code verifier's acceptance table, run through the real bwrap sandbox.

Every correct solution must pass, every wrong one must fail (partly, where some cases
pass), and every hacking one must fail: assert-style (HumanEval `check(candidate)` +
entry_point, MBPP assert lists) and stdin/stdout (Python, C++, C). Each row states the
value and all_passed it must get. The hacks are described in `verifiers/code.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from referee import Sample, Status


@dataclass(frozen=True)
class Row:
    id: str
    kind: str
    """correct | wrong | hack"""
    metadata: dict[str, Any]
    completion: str
    value: float
    params: dict[str, Any] = field(default_factory=dict)
    prompt: str = ""
    reason: str = ""
    """A fragment the reason must contain."""


def fence(code: str, lang: str = "python") -> str:
    return f"Here is my solution.\n\n```{lang}\n{code.strip()}\n```\n"


# ---------------------------------------------------------------- HumanEval-style rows

ADD = {
    "test": "METADATA = {'author': 'x'}\n\n\ndef check(candidate):\n"
    "    assert candidate(1, 2) == 3\n    assert candidate(-5, 5) == 0\n    assert candidate(10, 0) == 10\n",
    "entry_point": "add",
}
BELOW_ZERO = {
    "test": "def check(candidate):\n    assert candidate([]) == False\n    assert candidate([1, 2, -4, 5]) == True\n"
    "    assert candidate([1, -1, 2, -2]) == False\n    assert not candidate([5])\n    assert candidate([-1])\n",
    "entry_point": "below_zero",
}
UNIQUE = {
    "test": "def check(candidate):\n    assert candidate([5, 3, 5, 2, 3, 3, 9, 0, 123]) == [0, 2, 3, 5, 9, 123]\n"
    "    assert candidate([]) == []\n",
    "entry_point": "unique",
}
MAD = {
    "test": "import math\n\ndef check(candidate):\n"
    "    assert abs(candidate([1.0, 2.0, 3.0]) - 2.0 / 3.0) < 1e-6\n"
    "    assert math.isclose(candidate([1.0, 2.0, 3.0, 4.0]), 1.0)\n",
    "entry_point": "mean_absolute_deviation",
}
HISTOGRAM = {
    "test": "def check(candidate):\n    assert candidate('a b b a') == {'a': 2, 'b': 2}\n"
    "    assert candidate('a b c a b') == {'a': 2, 'b': 2}\n    assert candidate('') == {}\n",
    "entry_point": "histogram",
}
MIN_MAX = {
    "test": "def check(candidate):\n    assert candidate([3, 1, 2]) == (1, 3)\n    assert candidate([7]) == (7, 7)\n",
    "entry_point": "min_max",
}
SQRT_OR_RAISE = {
    "test": "def check(candidate):\n    assert candidate(9) == 3\n    try:\n        candidate(-1)\n"
    "        assert False, 'no error raised'\n    except ValueError:\n        pass\n",
    "entry_point": "isqrt_checked",
}
SOLUTION_CLASS = {
    "test": "def check(candidate):\n    s = candidate()\n    assert s.twoSum([2, 7, 11, 15], 9) == [0, 1]\n"
    "    assert s.twoSum([3, 2, 4], 6) == [1, 2]\n",
    "entry_point": "Solution",
}
IS_PRIME = {
    "test": "def check(candidate):\n    assert candidate(7)\n    assert not candidate(8)\n    assert candidate(13)\n"
    "    assert not candidate(1)\n",
    "entry_point": "is_prime",
}
SQUARE = {
    "test": "def check(candidate):\n    for x, expected in [(3, 9), (4, 16)]:\n        assert candidate(x) == expected\n",
    "entry_point": "square",
}
SQUARE_NE = {
    "test": "def check(candidate):\n    if candidate(3) != 9:\n        raise AssertionError('3')\n"
    "    if candidate(5) != 25:\n        raise AssertionError('5')\n",
    "entry_point": "square",
}
SORTED_LIST = {
    "test": "def check(candidate):\n    assert isinstance(candidate([2, 1]), list)\n"
    "    assert len(candidate([2, 1])) == 2\n    assert candidate([2, 1])[0] == 1\n",
    "entry_point": "sort_it",
}
RICH = {
    "test": (
        "def check(candidate):\n"
        "    r = candidate([3, 1, 2])\n"
        "    assert r == [1, 2, 3] and r != [3, 2, 1]\n"
        "    assert 0 <= r[0] < r[1] <= r[2]\n"
        "    assert 2 in r and 5 not in r\n"
        "    assert all(x > 0 for x in r) and not any(x > 3 for x in r)\n"
        "    assert [x for x in r if x % 2] == [1, 3]\n"
        "    assert candidate([]) == [] and candidate([]) is not None\n"
        "    assert {tuple(candidate([2, 1]))} == {(1, 2)}\n"
        "    assert (candidate([1]) or None) == [1]\n"
        "    assert sorted(candidate([5, 4]), reverse=True) == [5, 4]\n"
        "    assert isinstance(candidate([1]), list) and type(candidate([1])) == list\n"
        "    assert len(candidate([1, 1])) == 2\n"
        "    assert {'k': candidate([2, 1])} == {'k': [1, 2]}\n"
        "    assert candidate([1.5, 0.5]) == [0.5, 1.5] if True else False\n"
        "    n = 0\n"
        "    while n < 3:\n"
        "        n += 1\n"
        "    assert n == 3, f'n is {n}'\n"
    ),
    "entry_point": "sort_list",
}
PICK = {
    "test": "def check(candidate):\n    assert candidate('r') == Color.RED\n    assert candidate('g') is Color.GREEN\n",
    "entry_point": "pick",
}
POLY_PROMPT = (
    'import math\n\n\ndef poly(xs: list, x: float):\n    """Evaluates polynomial xs at x."""\n'
    "    return sum([coeff * math.pow(x, i) for i, coeff in enumerate(xs)])\n\n\n"
    'def find_zero(xs: list):\n    """Returns x such that poly(xs, x) == 0."""\n'
)
FIND_ZERO = {
    "test": "import math\n\ndef check(candidate):\n    for xs in ([1, 2], [-6, 11, -6, 1], [2, -3, 1]):\n"
    "        assert math.fabs(poly(xs, candidate(xs))) < 1e-4\n",
    "entry_point": "find_zero",
}
FIND_ZERO_BODY = (
    "    lo, hi = -1.0, 1.0\n    while poly(xs, lo) * poly(xs, hi) > 0:\n        lo *= 2.0\n        hi *= 2.0\n"
    "    while hi - lo > 1e-10:\n        mid = (lo + hi) / 2.0\n"
    "        if poly(xs, mid) * poly(xs, lo) > 0:\n            lo = mid\n        else:\n            hi = mid\n"
    "    return lo\n"
)
ADD_PROMPT = 'def add(a: int, b: int) -> int:\n    """Adds two numbers."""\n'

HUMANEVAL = [
    Row("he-add-correct", "correct", ADD, fence("def add(a, b):\n    return a + b"), 1.0),
    Row(
        "he-add-wrong",
        "wrong",
        ADD,
        fence("def add(a, b):\n    return a - b"),
        0.0,
        reason="WRONG_ANSWER",
    ),
    Row(
        "he-below-zero-correct",
        "correct",
        BELOW_ZERO,
        fence(
            "from typing import List\n\ndef below_zero(operations: List[int]) -> bool:\n    balance = 0\n"
            "    for op in operations:\n        balance += op\n        if balance < 0:\n            return True\n"
            "    return False"
        ),
        1.0,
    ),
    Row(
        "he-below-zero-always-false",
        "wrong",
        BELOW_ZERO,
        fence("def below_zero(operations):\n    return False"),
        0.0,
    ),
    Row(
        "he-unique-correct",
        "correct",
        UNIQUE,
        fence("def unique(l):\n    return sorted(set(l))"),
        1.0,
    ),
    Row(
        "he-unique-unsorted",
        "wrong",
        UNIQUE,
        fence("def unique(l):\n    return list(dict.fromkeys(l))"),
        0.0,
    ),
    Row(
        "he-mad-float-correct",
        "correct",
        MAD,
        fence(
            "def mean_absolute_deviation(numbers):\n    m = sum(numbers) / len(numbers)\n"
            "    return sum(abs(x - m) for x in numbers) / len(numbers)"
        ),
        1.0,
    ),
    Row(
        "he-histogram-counter",
        "correct",
        HISTOGRAM,
        fence(
            "from collections import Counter\n\ndef histogram(test):\n    c = Counter(test.split())\n"
            "    if not c:\n        return {}\n    top = max(c.values())\n    return Counter({k: v for k, v in c.items() if v == top})"
        ),
        1.0,
    ),
    Row(
        "he-min-max-namedtuple",
        "correct",
        MIN_MAX,
        fence(
            "from collections import namedtuple\nPair = namedtuple('Pair', 'lo hi')\n\n"
            "def min_max(xs):\n    return Pair(min(xs), max(xs))"
        ),
        1.0,
    ),
    Row(
        "he-raises-valueerror",
        "correct",
        SQRT_OR_RAISE,
        fence(
            "import math\n\ndef isqrt_checked(n):\n    if n < 0:\n        raise ValueError('negative')\n    return math.isqrt(n)"
        ),
        1.0,
    ),
    Row(
        "he-leetcode-class",
        "correct",
        SOLUTION_CLASS,
        fence(
            "class Solution:\n    def twoSum(self, nums, target):\n        seen = {}\n        for i, x in enumerate(nums):\n"
            "            if target - x in seen:\n                return [seen[target - x], i]\n            seen[x] = i"
        ),
        1.0,
    ),
    Row(
        "he-is-prime-correct",
        "correct",
        IS_PRIME,
        fence(
            "def is_prime(n):\n    return n > 1 and all(n % d for d in range(2, int(n ** 0.5) + 1))"
        ),
        1.0,
    ),
    Row(
        "he-prompt-body-continuation",
        "correct",
        ADD,
        "    return a + b\n",
        1.0,
        params={"prepend_prompt": True, "allow_unfenced": True},
        prompt=ADD_PROMPT,
    ),
    Row(
        "he-prompt-body-wrong",
        "wrong",
        ADD,
        "    return a * b\n",
        0.0,
        params={"prepend_prompt": True, "allow_unfenced": True},
        prompt=ADD_PROMPT,
    ),
    Row(
        "he-find-zero-uses-prompt-helper",
        "correct",
        FIND_ZERO,
        FIND_ZERO_BODY,
        1.0,
        params={"prepend_prompt": True, "allow_unfenced": True},
        prompt=POLY_PROMPT,
    ),
    Row(
        "he-rich-test-shapes",
        "correct",
        RICH,
        fence("def sort_list(xs):\n    return sorted(xs)"),
        1.0,
    ),
    Row(
        "he-rich-test-shapes-wrong",
        "wrong",
        RICH,
        fence("def sort_list(xs):\n    return sorted(xs)[:2]"),
        0.0,
    ),
    Row(
        "he-future-annotations-dataclass",
        "correct",
        MIN_MAX,
        fence(
            "from __future__ import annotations\nfrom dataclasses import dataclass\n\n@dataclass\nclass Span:\n    lo: int\n    hi: int\n\n"
            "def min_max(xs: list[int]) -> tuple[int, int]:\n    s = Span(min(xs), max(xs))\n    return (s.lo, s.hi)"
        ),
        1.0,
    ),
    Row(
        "he-enum-member",
        "correct",
        PICK,
        fence(
            "import enum\n\nclass Color(enum.Enum):\n    RED = 1\n    GREEN = 2\n\ndef pick(s):\n    return Color.RED if s == 'r' else Color.GREEN"
        ),
        1.0,
    ),
    Row(
        "he-enum-member-wrong",
        "wrong",
        PICK,
        fence(
            "import enum\n\nclass Color(enum.Enum):\n    RED = 1\n    GREEN = 2\n\ndef pick(s):\n    return Color.RED if s == 'g' else Color.GREEN"
        ),
        0.0,
    ),
    Row(
        "he-memory-hog",
        "wrong",
        ADD,
        fence("def add(a, b):\n    x = bytearray(1 << 30)\n    return a + b"),
        0.0,
        params={"memory_mb": 128},
        reason="MEMORY_LIMIT",
    ),
    Row(
        "he-infinite-loop",
        "wrong",
        ADD,
        fence("def add(a, b):\n    while True:\n        pass"),
        0.0,
        params={"time_limit_s": 1.0},
        reason="TIME_LIMIT",
    ),
    Row(
        "he-missing-entry-point",
        "wrong",
        ADD,
        fence("def plus(a, b):\n    return a + b"),
        0.0,
        reason="does not define add()",
    ),
    Row(
        "he-syntax-error",
        "wrong",
        ADD,
        fence("def add(a, b) return a + b"),
        0.0,
        reason="compile error",
    ),
    Row(
        "he-no-code", "wrong", ADD, "The answer is to add them.", 0.0, reason="no fenced code block"
    ),
]

# -------------------------------------------------------------------- MBPP-style rows

REMOVE_OCC = {
    "test_list": [
        'assert remove_Occ("hello","l") == "heo"',
        'assert remove_Occ("abcda","a") == "bcd"',
        'assert remove_Occ("PHP","P") == "H"',
        'assert remove_Occ("banana","a") == "bnan"',
    ]
}
FREQ = {
    "test_list": [
        "assert freq_count([10,10,10,10,20,20,20,20,40,40,50,50,30])==({10: 4, 20: 4, 40: 2, 50: 2, 30: 1})",
        "assert freq_count([1,2,3,4,3,2,4,1,3,1,4])==({1:3, 2:2,3:3,4:3})",
    ]
}
DIST = {
    "test_setup_code": "import math",
    "test_list": [
        "assert math.isclose(dist(0, 0, 3, 4), 5.0)",
        "assert math.isclose(dist(1, 1, 1, 1), 0.0)",
    ],
}
FACT = {
    "test_imports": ["import sys"],
    "test_list": ["assert fact(5) == 120", "assert fact(0) == 1", "assert fact(3000) % 1000 == 0"],
}
DIVIDE = {"test_list": ["assert div(6, 3) == 2", "assert div(1, 0) == 0"]}

MBPP = [
    Row(
        "mbpp-remove-occ-correct",
        "correct",
        REMOVE_OCC,
        fence(
            "def remove_Occ(s, ch):\n    first = s.find(ch)\n    last = s.rfind(ch)\n    if first == -1:\n        return s\n"
            "    if first == last:\n        return s[:first] + s[first + 1:]\n"
            "    return s[:first] + s[first + 1:last] + s[last + 1:]"
        ),
        1.0,
    ),
    Row(
        "mbpp-remove-occ-partial",
        "wrong",
        REMOVE_OCC,
        fence("def remove_Occ(s, ch):\n    return s.replace(ch, '')"),
        3 / 4,
        reason="case 3",
    ),
    Row(
        "mbpp-counter-returned",
        "correct",
        FREQ,
        fence("import collections\ndef freq_count(list1):\n    return collections.Counter(list1)"),
        1.0,
    ),
    Row(
        "mbpp-setup-code",
        "correct",
        DIST,
        fence("def dist(x1, y1, x2, y2):\n    return math.hypot(x2 - x1, y2 - y1)"),
        1.0,
    ),
    Row(
        "mbpp-recursion-limit",
        "correct",
        FACT,
        fence(
            "import sys\nsys.setrecursionlimit(10000)\n\ndef fact(n):\n    return 1 if n == 0 else n * fact(n - 1)"
        ),
        1.0,
    ),
    Row(
        "mbpp-prints-a-lot",
        "correct",
        REMOVE_OCC,
        fence(
            "def remove_Occ(s, ch):\n    for i in range(20000):\n        print('debug', i)\n"
            "    i, j = s.find(ch), s.rfind(ch)\n    return s if i < 0 else (s[:i] + s[i+1:] if i == j else s[:i] + s[i+1:j] + s[j+1:])"
        ),
        1.0,
    ),
    Row(
        "mbpp-crash-one-case",
        "wrong",
        DIVIDE,
        fence("def div(a, b):\n    return a // b"),
        0.5,
        reason="ZeroDivisionError",
    ),
    Row(
        "mbpp-top-level-crash",
        "wrong",
        DIVIDE,
        fence("raise RuntimeError('oops')\ndef div(a, b):\n    return 0"),
        0.0,
        reason="before the tests",
    ),
]

# ------------------------------------------------------------------- stdin/stdout rows

SUM_CASES = [
    {"stdin": "1 2\n", "stdout": "3\n"},
    {"stdin": "5 5\n", "stdout": "10\n"},
    {"stdin": "-7 3\n", "stdout": "-4\n"},
]
SUM = {"cases": SUM_CASES}
SUM_CPP = {"language": "cpp", "cases": SUM_CASES}
SUM_C = {"language": "c", "cases": SUM_CASES}
SORT_CASES = {
    "language": "c++",
    "cases": [
        {"stdin": "5\n5 3 1 4 2\n", "stdout": "1 2 3 4 5\n"},
        {"stdin": "1\n42\n", "stdout": "42\n"},
        {"stdin": "3\n-1 -1 0\n", "stdout": "-1 -1 0"},
    ],
}
BIG = " ".join(str(i) for i in range(100000))
BIG_SUM = {
    "cases": [
        {"stdin": f"100000\n{BIG}\n", "stdout": str(sum(range(100000)))},
        {"stdin": "1\n7\n", "stdout": "7"},
    ]
}
CIRCLE = {
    "cases": [
        {"stdin": "1\n", "stdout": "3.141592653589793\n"},
        {"stdin": "2\n", "stdout": "12.566370614359172"},
    ]
}
LINES = {"cases": [{"stdin": "3\n", "stdout": "1\n2\n3\n"}]}

PY_SUM = "a, b = map(int, input().split())\nprint(a + b)"
CPP_SUM = "#include <iostream>\nint main() { long long a, b; std::cin >> a >> b; std::cout << a + b << std::endl; }"
C_SUM = '#include <stdio.h>\nint main(void) { long a, b; if (scanf("%ld %ld", &a, &b) != 2) return 1; printf("%ld\\n", a + b); return 0; }'

IO = [
    Row("py-sum-correct", "correct", SUM, fence(PY_SUM), 1.0),
    Row("py-sum-wrong", "wrong", SUM, fence("a, b = map(int, input().split())\nprint(a * b)"), 0.0),
    Row(
        "py-sum-partial",
        "wrong",
        SUM,
        fence("a, b = map(int, input().split())\nprint(abs(a + b))"),
        2 / 3,
        reason="case 2",
    ),
    Row("py-sum-exit-after-print", "correct", SUM, fence(PY_SUM + "\nexit()"), 1.0),
    Row(
        "py-sum-sys-stdin-trailing-space",
        "correct",
        SUM,
        fence(
            "import sys\na, b = map(int, sys.stdin.read().split())\nsys.stdout.write(str(a + b) + '   \\n\\n\\n')"
        ),
        1.0,
    ),
    Row(
        "py-main-guard",
        "correct",
        SUM,
        fence(
            "def main():\n    a, b = map(int, input().split())\n    print(a + b)\n\nif __name__ == '__main__':\n    main()"
        ),
        1.0,
    ),
    Row(
        "py-big-input",
        "correct",
        BIG_SUM,
        fence("import sys\ndata = sys.stdin.buffer.read().split()\nprint(sum(map(int, data[1:])))"),
        1.0,
    ),
    Row(
        "py-float-with-tolerance",
        "correct",
        CIRCLE,
        fence("import math\nr = int(input())\nprint(f'{math.pi * r * r:.9f}')"),
        1.0,
        params={"float_tolerance": 1e-6},
    ),
    Row(
        "py-float-exact-tokens",
        "wrong",
        CIRCLE,
        fence("import math\nr = int(input())\nprint(f'{math.pi * r * r:.9f}')"),
        0.0,
    ),
    Row(
        "py-lines-mode-trailing",
        "correct",
        LINES,
        fence("for i in range(int(input())):\n    print(i + 1, end='  \\n')\nprint()"),
        1.0,
        params={"compare": "lines"},
    ),
    Row(
        "py-lines-mode-one-line",
        "wrong",
        LINES,
        fence("print(*range(1, int(input()) + 1))"),
        0.0,
        params={"compare": "lines"},
    ),
    Row(
        "py-syntax-error",
        "wrong",
        SUM,
        fence("a, b = map(int, input().split()\nprint(a + b)"),
        0.0,
        reason="compile error",
    ),
    Row(
        "py-runtime-error",
        "wrong",
        SUM,
        fence("a, b = map(int, input().split())\nprint(a + b if b != 5 else 1 // 0)"),
        2 / 3,
        reason="RUNTIME_ERROR",
    ),
    Row(
        "py-infinite-loop",
        "wrong",
        SUM,
        fence("while True:\n    pass"),
        0.0,
        params={"time_limit_s": 0.5},
        reason="TIME_LIMIT",
    ),
    Row(
        "py-memory-hog",
        "wrong",
        SUM,
        fence("x = bytearray(400 * 1024 * 1024)\nprint(3)"),
        0.0,
        params={"memory_mb": 128},
        reason="MEMORY_LIMIT",
    ),
    Row(
        "py-output-flood",
        "wrong",
        SUM,
        fence("while True:\n    print('y' * 1000)"),
        0.0,
        reason="OUTPUT_LIMIT",
    ),
    Row("cpp-sum-correct", "correct", SUM_CPP, fence(CPP_SUM, "cpp"), 1.0),
    Row("cpp-sum-wrong", "wrong", SUM_CPP, fence(CPP_SUM.replace("a + b", "a - b"), "cpp"), 0.0),
    Row(
        "cpp-bits-sort-correct",
        "correct",
        SORT_CASES,
        fence(
            "#include <bits/stdc++.h>\nusing namespace std;\nint main(){int n;cin>>n;vector<long long>v(n);for(auto&x:v)cin>>x;"
            "sort(v.begin(),v.end());for(int i=0;i<n;i++)cout<<v[i]<<(i+1<n?' ':'\\n');}",
            "c++",
        ),
        1.0,
    ),
    Row(
        "cpp-sort-descending",
        "wrong",
        SORT_CASES,
        fence(
            "#include <bits/stdc++.h>\nusing namespace std;\nint main(){int n;cin>>n;vector<int>v(n);for(auto&x:v)cin>>x;"
            "sort(v.rbegin(),v.rend());for(int x:v)cout<<x<<' ';}",
            "cpp",
        ),
        1 / 3,
    ),
    Row(
        "cpp-compile-error",
        "wrong",
        SUM_CPP,
        fence("int main() { return undefined_thing; }", "cpp"),
        0.0,
        reason="compile error",
    ),
    Row(
        "cpp-segfault",
        "wrong",
        SUM_CPP,
        fence("int main() { int *p = nullptr; *p = 1; return 0; }", "cpp"),
        0.0,
        reason="RUNTIME_ERROR",
    ),
    Row(
        "cpp-infinite-loop",
        "wrong",
        SUM_CPP,
        fence("int main() { volatile int x = 0; while (true) x++; }", "cpp"),
        0.0,
        params={"time_limit_s": 0.5},
        reason="TIME_LIMIT",
    ),
    Row(
        "py-threads",
        "correct",
        SUM,
        fence(
            "import threading\nout = []\nts = [threading.Thread(target=lambda: out.append(1)) for _ in range(16)]\n"
            "[t.start() for t in ts]\n[t.join() for t in ts]\na, b = map(int, input().split())\nprint(a + b + len(out) - 16)"
        ),
        1.0,
    ),
    Row(
        "py-deep-recursion",
        "correct",
        SUM,
        fence(
            "import sys\nsys.setrecursionlimit(10**6)\ndef d(n):\n    return 0 if n == 0 else 1 + d(n - 1)\n"
            "a, b = map(int, input().split())\nprint(a + b + d(200000) - 200000)"
        ),
        1.0,
    ),
    Row(
        "cpp-deep-recursion",
        "correct",
        SUM_CPP,
        fence(
            "#include <bits/stdc++.h>\nint d(int n) { volatile char pad[64]; pad[0] = n; return n == 0 ? 0 : 1 + d(n - 1); }\n"
            "int main() { long a, b; std::cin >> a >> b; std::cout << a + b + d(1000000) - 1000000 << std::endl; }",
            "cpp",
        ),
        1.0,
    ),
    Row(
        "cpp-threads",
        "correct",
        SUM_CPP,
        fence(
            "#include <bits/stdc++.h>\nint main() { long a, b; std::cin >> a >> b; std::vector<std::thread> ts;\n"
            "for (int i = 0; i < 8; i++) ts.emplace_back([] {});\nfor (auto &t : ts) t.join(); std::cout << a + b << std::endl; }",
            "cpp",
        ),
        1.0,
    ),
    Row(
        "js-sum-correct",
        "correct",
        {"language": "javascript", "cases": SUM_CASES},
        fence(
            "const [a, b] = require('fs').readFileSync(0, 'utf8').trim().split(/\\s+/).map(Number);\nconsole.log(a + b);",
            "js",
        ),
        1.0,
    ),
    Row(
        "bash-sum-correct",
        "correct",
        {"language": "bash", "cases": SUM_CASES},
        fence("read a b\necho $((a + b))", "bash"),
        1.0,
    ),
    Row("c-sum-correct", "correct", SUM_C, fence(C_SUM, "c"), 1.0),
    Row("c-sum-wrong", "wrong", SUM_C, fence(C_SUM.replace("a + b", "a + b + 1"), "c"), 0.0),
]

# ---------------------------------------------------------------------- hacking rows

WRONG_ADD = "def add(a, b):\n    return 0\n"
ATEXIT_EXIT = (
    "import atexit\n\ndef _bye():\n    raise SystemExit(0)\n\natexit.register(_bye)\n" + WRONG_ADD
)
ALWAYS_EQ = "class AlwaysEqual:\n    def __eq__(self, other):\n        return True\n    def __ne__(self, other):\n        return False\n"

HACKS = [
    # (1) exiting before or while the tests run
    Row(
        "hack-sys-exit-top",
        "hack",
        ADD,
        fence("import sys\n" + WRONG_ADD + "sys.exit(0)"),
        0.0,
        reason="exited",
    ),
    Row("hack-os-exit-top", "hack", ADD, fence("import os\n" + WRONG_ADD + "os._exit(0)"), 0.0),
    Row("hack-exit-builtin-top", "hack", ADD, fence(WRONG_ADD + "exit()"), 0.0),
    Row("hack-quit-builtin-top", "hack", ADD, fence(WRONG_ADD + "quit()"), 0.0),
    Row("hack-systemexit-in-atexit", "hack", ADD, fence(ATEXIT_EXIT), 0.0),
    Row(
        "hack-sigkill-self-top",
        "hack",
        ADD,
        fence("import os, signal\n" + WRONG_ADD + "os.kill(os.getpid(), signal.SIGKILL)"),
        0.0,
    ),
    Row(
        "hack-os-exit-during-test",
        "hack",
        ADD,
        fence("import os\ndef add(a, b):\n    os._exit(0)"),
        0.0,
    ),
    Row(
        "hack-sys-exit-during-test",
        "hack",
        MBPP[0].metadata,
        fence("import sys\ndef remove_Occ(s, c):\n    sys.exit(0)"),
        0.0,
    ),
    Row(
        "hack-kill-self-during-test",
        "hack",
        ADD,
        fence("import os, signal\ndef add(a, b):\n    os.kill(os.getpid(), signal.SIGTERM)"),
        0.0,
    ),
    # (2) patching asserts and builtins, lying values
    Row(
        "hack-always-equal",
        "hack",
        ADD,
        fence(ALWAYS_EQ + "def add(a, b):\n    return AlwaysEqual()"),
        0.0,
        reason="AlwaysEqual",
    ),
    Row(
        "hack-always-equal-mbpp",
        "hack",
        REMOVE_OCC,
        fence(ALWAYS_EQ + "def remove_Occ(s, c):\n    return AlwaysEqual()"),
        0.0,
    ),
    Row(
        "hack-always-equal-str-subclass",
        "hack",
        REMOVE_OCC,
        fence(
            "class S(str):\n    def __eq__(self, other):\n        return True\n    __hash__ = str.__hash__\n"
            "def remove_Occ(s, c):\n    return S('nope')"
        ),
        0.0,
    ),
    Row(
        "hack-always-equal-in-list",
        "hack",
        UNIQUE,
        fence(ALWAYS_EQ + "def unique(l):\n    return [AlwaysEqual()] * 6 if l else []"),
        0.0,
    ),
    Row(
        "hack-dict-subclass-eq",
        "hack",
        HISTOGRAM,
        fence(
            "class D(dict):\n    def __eq__(self, other):\n        return True\ndef histogram(s):\n    return D()"
        ),
        0.0,
    ),
    Row(
        "hack-enum-with-eq",
        "hack",
        PICK,
        fence(
            "import enum\n\nclass Color(enum.Enum):\n    RED = 1\n    GREEN = 2\n    def __eq__(self, other):\n        return True\n"
            "    __hash__ = object.__hash__\n\ndef pick(s):\n    return Color.GREEN"
        ),
        0.0,
    ),
    Row(
        "hack-eq-from-base-class",
        "hack",
        ADD,
        fence(
            "class Base:\n    def __eq__(self, other):\n        return True\nclass Child(Base):\n    pass\n"
            "def add(a, b):\n    return Child()"
        ),
        0.0,
    ),
    Row(
        "hack-ne-false",
        "hack",
        SQUARE_NE,
        fence(
            "class N:\n    def __ne__(self, other):\n        return False\ndef square(x):\n    return N()"
        ),
        0.0,
    ),
    Row(
        "hack-lying-bool",
        "hack",
        IS_PRIME,
        fence(
            "class B:\n    n = 0\n    def __bool__(self):\n        B.n += 1\n        return B.n % 2 == 1\ndef is_prime(n):\n    return B()"
        ),
        0.0,
    ),
    Row(
        "hack-fake-class-isinstance",
        "hack",
        SORTED_LIST,
        fence(
            "class L:\n    __class__ = list\n    def __len__(self):\n        return 2\n    def __getitem__(self, i):\n        return 1\n"
            "def sort_it(xs):\n    return L()"
        ),
        0.0,
    ),
    Row(
        "hack-patch-assertionerror",
        "hack",
        ADD,
        fence(
            "import builtins\nbuiltins.AssertionError = type('Nope', (Exception,), {})\n"
            + WRONG_ADD
        ),
        0.0,
    ),
    Row(
        "hack-patch-excepthook-and-exit",
        "hack",
        ADD,
        fence(
            "import sys, os\nsys.excepthook = lambda *a: None\nsys.exit = lambda *a: None\nos._exit = lambda *a: None\n"
            + WRONG_ADD
        ),
        0.0,
    ),
    Row(
        "hack-patch-builtins-during-test",
        "hack",
        SORTED_LIST,
        fence(
            "import builtins\ndef sort_it(xs):\n    builtins.isinstance = lambda *a: True\n    builtins.len = lambda x: 2\n    return 7"
        ),
        0.0,
    ),
    Row(
        "hack-patch-math-isclose-top",
        "hack",
        DIST,
        fence("import math\nmath.isclose = lambda *a, **k: True\ndef dist(*a):\n    return -1.0"),
        0.0,
    ),
    Row(
        "hack-patch-math-isclose-during-test",
        "hack",
        MAD,
        fence(
            "import math\ndef mean_absolute_deviation(xs):\n    math.isclose = lambda *a, **k: True\n    return 2.0 / 3.0"
        ),
        0.0,
    ),
    Row(
        "hack-correct-but-patches-module",
        "hack",
        MAD,
        fence(
            "import math\ndef mean_absolute_deviation(xs):\n    math.isclose = lambda *a, **k: True\n    m = sum(xs) / len(xs)\n"
            "    return sum(abs(x - m) for x in xs) / len(xs)"
        ),
        0.0,
        reason="replaced math.isclose",
    ),
    Row(
        "hack-patch-print",
        "hack",
        ADD,
        fence(
            "import builtins\n_print = builtins.print\n"
            "builtins.print = lambda *a, **k: _print('ALL TESTS PASSED', flush=True)\nprint('x')\n"
            + WRONG_ADD
        ),
        0.0,
    ),
    Row(
        "hack-patch-unittest",
        "hack",
        ADD,
        fence(
            "import unittest\nunittest.TestCase.assertEqual = lambda *a, **k: None\nunittest.main = lambda *a, **k: None\n"
            + WRONG_ADD
        ),
        0.0,
    ),
    Row(
        "hack-shadow-harness-helpers",
        "hack",
        ADD,
        fence(
            "__referee_cmp__ = lambda *a: True\n__referee_truth__ = lambda v: True\nall = lambda it: True\n"
            + WRONG_ADD
        ),
        0.0,
    ),
    Row(
        "hack-define-check",
        "hack",
        ADD,
        fence("def check(candidate):\n    pass\n" + WRONG_ADD),
        0.0,
    ),
    Row(
        "hack-print-pass-markers",
        "hack",
        ADD,
        fence(
            "import os\nprint('All tests passed!')\nfor fd in range(1, 30):\n    try:\n"
            "        os.write(fd, b'\\n@@' + b'0' * 32 + b' case 0 OK -\\n')\n    except OSError:\n        pass\n"
            + WRONG_ADD
        ),
        0.0,
    ),
    # frames, memory and files: the ways to the harness's state that the audit hook closes
    Row(
        "hack-caller-frame-locals",
        "hack",
        SQUARE,
        fence("import sys\ndef square(x):\n    return sys._getframe(1).f_locals['expected']"),
        0.0,
    ),
    Row(
        "hack-inspect-stack",
        "hack",
        SQUARE,
        fence(
            "import inspect\ndef square(x):\n    return inspect.stack()[1].frame.f_locals['expected']"
        ),
        0.0,
    ),
    Row(
        "hack-traceback-frame",
        "hack",
        SQUARE,
        fence(
            "def square(x):\n    try:\n        raise ValueError\n    except ValueError as e:\n"
            "        return e.__traceback__.tb_frame.f_back.f_locals['expected']"
        ),
        0.0,
    ),
    Row(
        "hack-generator-frame",
        "hack",
        SQUARE,
        fence(
            "def square(x):\n    def g():\n        yield it.gi_frame.f_back\n    it = g()\n    f = next(it)\n"
            "    while 'expected' not in f.f_locals:\n        f = f.f_back\n    return f.f_locals['expected']"
        ),
        0.0,
    ),
    Row(
        "hack-settrace-collect-frames",
        "hack",
        SQUARE,
        fence(
            "import sys\nframes = []\ndef tracer(frame, event, arg):\n    frames.append(frame)\n\nsys.settrace(tracer)\n"
            "def square(x):\n    for f in reversed(frames):\n        if 'expected' in f.f_locals:\n            return f.f_locals['expected']"
        ),
        0.0,
    ),
    Row(
        "hack-ctypes-current-frame",
        "hack",
        SQUARE,
        fence(
            "import ctypes\nget = ctypes.pythonapi.PyEval_GetFrame\nget.restype = ctypes.py_object\n"
            "def square(x):\n    return get().f_back.f_locals['expected']"
        ),
        0.0,
    ),
    Row(
        "hack-gc-find-test-constants",
        "hack",
        SQUARE,
        fence(
            "import gc\ndef square(x):\n    for d in gc.get_referrers(square):\n        if isinstance(d, dict) and callable(d.get('check')):\n"
            "            for c in d['check'].__code__.co_consts:\n                for pair in c if isinstance(c, tuple) else ():\n"
            "                    if pair[:1] == (x,):\n                        return pair[1]"
        ),
        0.0,
    ),
    Row(
        "hack-gc-scan-for-nonce",
        "hack",
        ADD,
        fence(
            "import gc, os\nfor o in gc.get_objects():\n    if isinstance(o, str) and len(o) == 32:\n        for fd in range(3, 10):\n"
            "            try:\n                os.write(fd, ('\\n@@' + o + ' case 0 OK -\\n').encode())\n"
            "            except OSError:\n                pass\n" + WRONG_ADD
        ),
        0.0,
    ),
    Row(
        "hack-read-proc-self-mem",
        "hack",
        ADD,
        fence("import re, os\nfor line in open('/proc/self/maps'):\n    pass\n" + WRONG_ADD),
        0.0,
    ),
    Row(
        "hack-read-job-file",
        "hack",
        ADD,
        fence(
            "import json, os\nnonce = json.load(open('job.json'))['nonce']\n"
            "os.write(3, ('\\n@@' + nonce + ' case 0 OK -\\n').encode())\n" + WRONG_ADD
        ),
        0.0,
    ),
    # (3)/(4) stdin/stdout: answers of other cases, files, fake markers, killing the driver
    Row("hack-io-print-all-answers", "hack", SUM, fence("print(3)\nprint(10)\nprint(-4)"), 0.0),
    Row(
        "hack-io-read-driver-files",
        "hack",
        SUM,
        fence(
            "import os, glob\nfor p in glob.glob('/work/**', recursive=True) + ['job.json', '../job.json']:\n"
            "    try:\n        print(open(p).read())\n    except OSError:\n        pass"
        ),
        0.0,
    ),
    Row(
        "hack-io-read-driver-proc",
        "hack",
        SUM,
        fence(
            "import os\nppid = os.getppid()\nfor name in ('environ', 'cmdline', 'mem', 'fd/0', 'fd/1'):\n    try:\n"
            "        print(open(f'/proc/{ppid}/{name}', 'rb').read(200))\n    except OSError as e:\n        print('denied', name)"
        ),
        0.0,
    ),
    Row(
        "hack-io-fake-marker",
        "hack",
        SUM,
        fence("print('@@' + '0' * 32 + ' case 0 OK - out=2 err=0')\nprint('3')"),
        0.0,
    ),
    Row(
        "hack-io-kill-driver",
        "hack",
        SUM,
        fence("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nprint(3)"),
        0.0,
    ),
    Row("hack-io-exit-early", "hack", SUM, fence("import sys\nsys.exit(0)"), 0.0),
    Row(
        "hack-cpp-print-all-answers",
        "hack",
        SUM_CPP,
        fence('#include <cstdio>\nint main() { std::puts("3\\n10\\n-4"); return 0; }', "cpp"),
        0.0,
    ),
    Row(
        "hack-cpp-exit-early",
        "hack",
        SUM_CPP,
        fence(
            "#include <cstdlib>\nstruct E { E() { std::exit(0); } } e;\nint main() { return 0; }",
            "cpp",
        ),
        0.0,
    ),
    Row(
        "hack-cpp-read-parent-mem",
        "hack",
        SUM_CPP,
        fence(
            '#include <bits/stdc++.h>\n#include <unistd.h>\nint main(){ std::string p = "/proc/" + std::to_string(getppid()) + "/mem";'
            ' std::ifstream f(p, std::ios::binary); char b[64] = {0}; f.read(b, 63); std::cout << (f ? "read" : "denied") << std::endl; }',
            "cpp",
        ),
        0.0,
    ),
]

TABLE = HUMANEVAL + MBPP + IO + HACKS


def test_table_covers_what_acceptance_asks() -> None:
    assert len(TABLE) >= 40
    assert len({r.id for r in TABLE}) == len(TABLE)
    kinds = {r.kind for r in TABLE}
    assert kinds == {"correct", "wrong", "hack"}
    languages = {r.metadata.get("language", "python") for r in IO + HACKS}
    assert {"python", "cpp", "c++", "c"} <= languages
    assert all(r.value < 1.0 for r in TABLE if r.kind != "correct")
    assert all(r.value == 0.0 for r in HACKS)


@pytest.mark.parametrize("row", TABLE, ids=[r.id for r in TABLE])
async def test_table(row: Row, code_verifier) -> None:
    sample = Sample(completion=row.completion, prompt=row.prompt, metadata=row.metadata)
    result = await code_verifier.verify(sample, **row.params)
    assert result.status is Status.OK, result.reason
    assert result.value == pytest.approx(row.value), result.reason
    assert result.components["all_passed"] == (1.0 if row.value == 1.0 else 0.0), result.reason
    if row.reason:
        assert row.reason in result.reason
