"""Each defence of the code verifier's harnesses, attacked on its own (real bwrap sandbox).

A probe is a program whose `probe()` (assert harness) or stdout (stdin/stdout driver)
says what it could reach; the test asserts the door was closed, by scoring 1.0 only when
the probe saw exactly the expected thing. The compatibility probes check that ordinary
library code still works under the audit hook.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from referee import Sample, Status
from referee.sandboxes.languages import find_language
from referee.verifiers.code_harness import assert_job, io_jobs, parse_records


def _try(body: str) -> str:
    """A probe() returning 'refused' when `body` raises, 'open' when it runs."""
    indented = "\n".join("        " + line for line in body.strip().splitlines())
    return f"def probe():\n    try:\n{indented}\n    except Exception:\n        return 'refused'\n    return 'open'\n"


ASSERT_PROBES = {
    "sys._getframe": _try("import sys\nsys._getframe(0)"),
    "inspect.currentframe": _try("import inspect\ninspect.currentframe()"),
    "inspect.stack": _try("import inspect\ninspect.stack()"),
    "traceback tb_frame": _try(
        "try:\n    1 / 0\nexcept ZeroDivisionError as e:\n    e.__traceback__.tb_frame"
    ),
    "generator gi_frame": _try("g = (i for i in [1])\ng.gi_frame"),
    "coroutine cr_frame": _try(
        "async def c():\n    pass\nco = c()\ntry:\n    co.cr_frame\nfinally:\n    co.close()"
    ),
    "sys._current_frames": _try("import sys\nsys._current_frames()"),
    "sys.settrace": _try("import sys\nsys.settrace(lambda *a: None)"),
    "sys.setprofile": _try("import sys\nsys.setprofile(lambda *a: None)"),
    "threading.settrace in a thread": _try(
        "import threading\nerr = []\ndef run():\n    import sys\n    try:\n        sys.settrace(lambda *a: None)\n"
        "    except RuntimeError:\n        err.append(1)\nt = threading.Thread(target=run)\nt.start()\nt.join()\n"
        "assert not err"
    ),
    "gc.get_objects": _try("import gc\ngc.get_objects()"),
    "gc.get_referrers": _try("import gc\ngc.get_referrers(probe)"),
    "gc.get_referents": _try("import gc\ngc.get_referents(probe)"),
    "ctypes call": _try("import ctypes\nctypes.pythonapi.Py_GetVersion()"),
    "ctypes memory": _try("import ctypes\nctypes.string_at(id(1), 8)"),
    "ctypes dlopen": _try("import ctypes\nctypes.CDLL('libc.so.6')"),
    "/proc via O_PATH dir_fd": _try(
        "import os\nroot = os.open('/', os.O_PATH)\nos.open('proc/self/maps', os.O_RDONLY, dir_fd=root)"
    ),
    "/proc/self/mem": _try("open('/proc/self/mem', 'rb')"),
    "/proc/self/maps": _try("open('/proc/self/maps')"),
    "/proc/self/environ via os.open": _try("import os\nos.open('/proc/self/environ', os.O_RDONLY)"),
    "/proc via bytes path": _try("open(b'/proc/self/maps')"),
    "/proc via /dev/fd": _try("import os\nos.open('/dev/fd/../maps', os.O_RDONLY)"),
    "/proc via relative path": _try(
        "import os\nos.chdir('/proc/self')\ntry:\n    open('maps')\nfinally:\n    os.chdir('/work')"
    ),
    "/proc via symlink": _try(
        "import os, tempfile\nd = tempfile.mkdtemp()\nos.symlink('/proc/self/maps', d + '/m')\nopen(d + '/m')"
    ),
    "/proc via path object": _try("import pathlib\nopen(pathlib.Path('/proc/self/maps'))"),
    "/proc via dir_fd": _try(
        "import os\nroot = os.open('/', os.O_RDONLY)\nos.open('proc/self/maps', os.O_RDONLY, dir_fd=root)"
    ),
    "/proc via dir_fd and a system symlink": _try(
        "import os\ndev = os.open('/dev', os.O_RDONLY)\nos.open('fd/../maps', os.O_RDONLY, dir_fd=dev)"
    ),
}
OPEN = {
    # the job file is gone, and fds 0-2 are /dev/null
    "job file": "import os\ndef probe():\n    return 'open' if os.path.exists('job.json') or os.path.exists('/work/job.json') else 'refused'\n",
    "std fds are /dev/null": (
        "import os\ndef probe():\n    null = os.stat('/dev/null').st_rdev\n"
        "    return 'refused' if all(os.fstat(fd).st_rdev == null for fd in (0, 1, 2)) else 'open'\n"
    ),
    # a child process cannot read the harness's environment or list its fds (non-dumpable)
    "child reads parent environ": (
        "import os, subprocess\ndef probe():\n    pid = os.getpid()\n"
        "    r = subprocess.run(['cat', f'/proc/{pid}/environ'], capture_output=True)\n"
        "    s = subprocess.run(['ls', f'/proc/{pid}/fd'], capture_output=True)\n"
        "    return 'refused' if r.returncode and s.returncode else 'open'\n"
    ),
}
COMPAT = {
    "namedtuple": "from collections import namedtuple\nP = namedtuple('P', 'x y')\nresult = P(1, 2).x",
    "TypeVar and Generic": "from typing import Generic, TypeVar\nT = TypeVar('T')\nclass Box(Generic[T]):\n    pass\nresult = 1",
    "enum functional API": "import enum\nColor = enum.Enum('Color', 'RED GREEN')\nresult = Color.RED.value",
    "warnings.warn": "import warnings\nwarnings.warn('careful')\nresult = 1",
    "logging": "import logging\nlogging.getLogger('x').warning('hi')\nresult = 1",
    "dataclass": "from dataclasses import dataclass\n@dataclass\nclass D:\n    x: int\nresult = D(1).x",
    "re and functools": "import re, functools\n@functools.lru_cache(None)\ndef f(n):\n    return n\nresult = len(re.findall('a', 'aa')) - 1",
    "tempfile": "import tempfile, os\nwith tempfile.NamedTemporaryFile('w', delete=False) as f:\n    f.write('x')\nresult = len(open(f.name).read())",
    "asyncio.run": "import asyncio\nasync def main():\n    await asyncio.sleep(0)\n    return 1\nresult = asyncio.run(main())",
    "typing.NamedTuple": "from typing import NamedTuple\nclass P(NamedTuple):\n    x: int\nresult = P(1).x",
    "tempfile directory": "import tempfile, os\nwith tempfile.TemporaryFile() as f:\n    f.write(b'ab')\n"
    "d = tempfile.mkdtemp()\nopen(os.path.join(d, 'x'), 'w').write('1')\nresult = len(os.listdir(d))",
    "reading a file": "import os\nwith open('data.txt', 'w') as f:\n    f.write('1')\nresult = int(open('data.txt').read())",
    "threads": "import threading\nout = []\nt = threading.Thread(target=lambda: out.append(1))\nt.start()\nt.join()\nresult = out[0]",
}


def _he(program: str, expected: str) -> Sample:
    test = f"def check(candidate):\n    assert candidate() == {expected!r}\n"
    return Sample(
        completion=f"```python\n{program}\n```", metadata={"test": test, "entry_point": "probe"}
    )


@pytest.mark.parametrize("name", sorted(ASSERT_PROBES) + sorted(OPEN))
async def test_assert_harness_refuses(name: str, code_verifier) -> None:
    program = ASSERT_PROBES.get(name) or OPEN[name]
    result = await code_verifier.verify(_he(program, "refused"))
    assert result.status is Status.OK and result.value == 1.0, result.reason


@pytest.mark.parametrize("name", sorted(COMPAT))
async def test_assert_harness_keeps_library_code_working(name: str, code_verifier) -> None:
    program = (
        "def probe():\n"
        + "\n".join("    " + line for line in COMPAT[name].splitlines())
        + "\n    return result\n"
    )
    result = await code_verifier.verify(_he(program, 1))
    assert result.status is Status.OK and result.value == 1.0, result.reason


async def test_tests_see_pristine_builtins_and_modules(code_verifier) -> None:
    program = (
        "import builtins, math\nbuiltins.len = lambda x: 42\nbuiltins.sorted = lambda x: []\n"
        "math.sqrt = lambda x: -1.0\ndef probe():\n    return [3, 1, 2]\n"
    )
    test = (
        "import math\ndef check(candidate):\n    assert len(candidate()) == 3\n"
        "    assert sorted(candidate()) == [1, 2, 3]\n    assert math.sqrt(4) == 2.0\n"
    )
    result = await code_verifier.verify(
        Sample(
            completion=f"```python\n{program}```", metadata={"test": test, "entry_point": "probe"}
        )
    )
    assert result.value == 1.0, result.reason


IO_PROBES = {
    "driver /proc entries": (
        "import os\nppid = os.getppid()\nout = []\nfor name in ('environ', 'mem', 'maps', 'fd'):\n    try:\n"
        "        p = f'/proc/{ppid}/{name}'\n        os.listdir(p) if name == 'fd' else open(p, 'rb').read(64)\n"
        "        out.append('open')\n    except OSError:\n        out.append('denied')\nprint(*out)",
        "denied denied denied denied",
    ),
    "job file and other inputs": (
        "import os, glob\nprint(sorted(glob.glob('/work/**/*.json', recursive=True)), len(open(0).read()))",
        "[] 6",
    ),
    "inherited fds": ("import os\nprint(*sorted(os.listdir('/proc/self/fd'), key=int))", "0 1 2 3"),
}


@pytest.mark.parametrize("name", sorted(IO_PROBES))
async def test_io_driver_isolates_the_program(name: str, code_verifier) -> None:
    program, expected = IO_PROBES[name]
    cases = [
        {"stdin": "first\n", "stdout": expected},
        {"stdin": "SECRET-INPUT-OF-CASE-2\n", "stdout": "x"},
    ]
    sample = Sample(completion=f"```python\n{program}\n```", metadata={"cases": cases})
    result = await code_verifier.verify(sample)
    assert result.components["case_0"] == 1.0, result.reason


async def test_harnesses_report_that_they_are_not_dumpable(code_executor) -> None:
    job, nonce = assert_job(
        "def f():\n    return 1\n",
        ["assert f() == 1"],
        setup="",
        prelude="",
        entry_point="",
        call_check=False,
        time_limit_s=2.0,
        memory_mb=128,
    )
    records = parse_records((await code_executor.execute(job)).stdout, nonce)
    assert [(r.kind, r.verdict) for r in records] == [
        ("start", "hardened"),
        ("case", "OK"),
        ("done", "-"),
    ]
    [(job, nonce, _)] = io_jobs(
        find_language("python"), "print(input())", [("hi\n", 1024)], time_limit_s=2.0, memory_mb=128
    )
    records = parse_records((await code_executor.execute(job)).stdout, nonce)
    assert [(r.kind, r.verdict) for r in records] == [
        ("start", "hardened"),
        ("case", "OK"),
        ("done", "-"),
    ]
    assert records[1].out == b"hi\n"


def test_probes_do_reach_their_target_without_the_harness(tmp_path) -> None:
    """Each refusal probe says 'open' when run as plain Python: a refusal above is the
    harness's doing, not a broken probe."""
    for name, program in ASSERT_PROBES.items():
        script = tmp_path / "probe.py"
        script.write_text(program.replace("'/work'", repr(str(tmp_path))) + "\nprint(probe())\n")
        out = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=30
        )
        assert out.stdout.strip() == "open", (name, out.stderr[-300:])
