"""Python assert-test harness: the trusted program a sandbox job runs for `tests`.

Runs INSIDE the sandbox as the job's main program (stdlib only, any python3 >= 3.10);
`code_harness.py` sends this file's text as the job's code and a ``job.json`` beside it.
The reasons behind each step, and what they do not stop, are in `verifiers/code.py`.

Order of work:

1. read ``job.json`` and delete it; keep a private copy of stdout for reports (every
   report line starts with a per-job nonce the program never sees) and point fds 0-2 at
   /dev/null; mark the process non-dumpable (prctl), so processes the program starts
   cannot read this one's memory, fds or environment through /proc;
2. compile the tests, rewriting every comparison and truth test in them to go through
   `_cmp` / `_truth`, which see values only through their built-in types; compile the
   program (a SyntaxError is the program's compile error);
3. pre-import common modules, snapshot their public callables and the builtins, add an
   audit hook that refuses frame, gc, ctypes, tracing and /proc access (and opening a
   directory, whose fd would let a relative ``dir_fd=`` path start out of its sight);
4. run the setup code and the program in a module of their own, then each case in a
   namespace holding a copy of the program's names and a private builtins dict; before
   each case the snapshot is restored, after it a change means the case fails; a case
   passes only by running to its end inside its time limit;
5. report each case, then end with ``os._exit`` (no atexit hooks of the program run).

Report lines: ``@@<nonce> <kind> <index> <verdict> <hex of utf-8 reason>``; built with
str operations only, so patched library code cannot change them.
"""

import ast
import builtins
import json
import sys
import types
from _signal import (
    ITIMER_PROF,
    ITIMER_REAL,
    SIG_IGN,
    SIGALRM,
    SIGPROF,
    default_int_handler,
    setitimer,
)
from _signal import signal as _set_handler
from os import (
    O_DIRECTORY,
    O_PATH,
    O_RDWR,
    O_TMPFILE,
    close,
    dup,
    dup2,
    getcwd,
    lstat,
    readlink,
    stat,
    unlink,
    write,
)
from os import _exit as _os_exit
from os import open as _os_open
from stat import S_ISDIR, S_ISLNK
from time import monotonic, process_time

CONFIG = "job.json"
TESTS_FILE = "<tests>"
PROGRAM_FILE = "solution.py"
REASON_CHARS = 300
MAX_DEPTH = 200
PREIMPORT = (
    "abc",
    "array",
    "bisect",
    "cmath",
    "collections",
    "collections.abc",
    "copy",
    "dataclasses",
    "datetime",
    "decimal",
    "enum",
    "fractions",
    "functools",
    "hashlib",
    "heapq",
    "itertools",
    "json",
    "math",
    "numbers",
    "operator",
    "os",
    "random",
    "re",
    "statistics",
    "string",
    "sys",
    "time",
    "types",
    "typing",
)
BLOCKED_EVENTS = frozenset(
    (
        "sys._current_frames",
        "sys._current_exceptions",
        "sys.settrace",
        "sys.setprofile",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
    )
)
FRAME_ATTRS = frozenset(("tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_code"))
IMMUTABLE_TYPE = 1 << 8

_type, _len, _repr, _isinstance, _issubclass = type, len, repr, isinstance, issubclass
_flags = type.__dict__["__flags__"].__get__
_mro = type.__dict__["__mro__"].__get__
_class_dict = type.__dict__["__dict__"].__get__
_type_name = type.__dict__["__name__"].__get__
_exc_args = BaseException.__dict__["args"].__get__
_SCALARS = frozenset((
    type(None), bool, int, float, complex, str, bytes, bytearray, range, type(Ellipsis),
    type(NotImplemented),
))  # fmt: skip
_TO_BASE = {  # a subclass instance -> the exact built-in value, through the base's C code
    int: int.__int__,
    float: float.__float__,
    complex: complex.__complex__,
    str: str.__str__,
    bytes: lambda v: bytes.__getitem__(v, slice(None)),
    bytearray: lambda v: bytearray.__getitem__(v, slice(None)),
    tuple: lambda v: tuple.__getitem__(v, slice(None)),
    list: list.copy,
    dict: dict.copy,
    set: set.copy,
    frozenset: frozenset.copy,
}
_OPS = {
    "Eq": lambda a, b: a == b,
    "NotEq": lambda a, b: a != b,
    "Lt": lambda a, b: a < b,
    "LtE": lambda a, b: a <= b,
    "Gt": lambda a, b: a > b,
    "GtE": lambda a, b: a >= b,
    "In": lambda a, b: a in b,
    "NotIn": lambda a, b: a not in b,
}


HOOKS = frozenset((
    "__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__bool__", "__len__",
    "__contains__", "__iter__", "__getitem__", "__getattr__", "__getattribute__",
))  # fmt: skip
"""What a class must not define for its instances to be compared as they are."""


def _compares_by_identity(t):
    """True when no class of t's MRO but `object` defines a comparison, truth or
    container hook: its instances then compare by identity (an Enum member, a plain
    object), which no program can bend."""
    for c in _mro(t):
        if c is not object and not HOOKS.isdisjoint(_class_dict(c)):
            return False
    return True


class _Failed(AssertionError):
    """An assert of the tests failed: args are (line, message)."""


class _Refused(AssertionError):
    """A value reaching a comparison could not be seen as built-in data."""


def _hex(text):
    return text[:REASON_CHARS].encode("utf-8", "replace").hex() or "-"


def _describe(e):
    """'Name: args' without running the program's code (only exact scalars are shown)."""
    try:
        parts = []
        for a in _exc_args(e):
            t = _type(a)
            parts.append(a if t is str else _repr(a) if t in _SCALARS else f"<{_type_name(t)}>")
        name = str.__str__(_type_name(_type(e)))
        return f"{name}: {', '.join(parts)}" if parts else name
    except BaseException:  # a hostile exception object; its details are not worth the risk
        return "an exception that cannot be shown"


def _syntax(e):
    """A compile error in one line: 'SyntaxError: expected ':' (line 3)'."""
    if _isinstance(e, SyntaxError):
        return f"{_type_name(_type(e))}: {e.msg} (line {e.lineno})"
    return _describe(e)


class _Rewriter(ast.NodeTransformer):
    """Routes the tests' comparisons and truth tests through the harness's helpers."""

    def _call(self, name, *args):
        return ast.Call(ast.Name(name, ast.Load()), list(args), [])

    def visit_Assert(self, node):
        self.generic_visit(node)
        fail = self._call(
            "__referee_fail__", ast.Constant(node.lineno), node.msg or ast.Constant(None)
        )
        test = ast.UnaryOp(ast.Not(), self._call("__referee_truth__", node.test))
        return ast.copy_location(ast.If(test, [ast.Expr(fail)], []), node)

    def visit_Compare(self, node):
        self.generic_visit(node)
        names = [_type(op).__name__ for op in node.ops]
        if all(n in ("Is", "IsNot") for n in names):
            return node
        ops = ast.Tuple([ast.Constant(n) for n in names], ast.Load())
        return ast.copy_location(
            self._call("__referee_cmp__", node.left, ops, *node.comparators), node
        )

    def _truth_of(self, node, field):
        self.generic_visit(node)
        setattr(node, field, self._call("__referee_truth__", getattr(node, field)))
        return node

    def visit_If(self, node):
        return self._truth_of(node, "test")

    def visit_While(self, node):
        return self._truth_of(node, "test")

    def visit_IfExp(self, node):
        return self._truth_of(node, "test")

    def visit_UnaryOp(self, node):
        return (
            self._truth_of(node, "operand")
            if _isinstance(node.op, ast.Not)
            else self.generic_visit(node)
        )

    def visit_BoolOp(self, node):
        self.generic_visit(node)
        node.values = [self._call("__referee_value__", v) for v in node.values]
        return node

    def visit_comprehension(self, node):
        self.generic_visit(node)
        node.ifs = [self._call("__referee_truth__", c) for c in node.ifs]
        return node


def compile_tests(source):
    tree = _Rewriter().visit(ast.parse(source, TESTS_FILE))
    return compile(ast.fix_missing_locations(tree), TESTS_FILE, "exec", dont_inherit=True)


def _resolve(path):
    """The real path of `path`, following symlinks with plain syscalls (no library code)."""
    parts = (path if path.startswith("/") else getcwd() + "/" + path).split("/")
    done, hops = [], 0
    while parts:
        part = parts.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            done = done[:-1]
            continue
        here = "/" + "/".join(done + [part])
        try:
            link = S_ISLNK(lstat(here).st_mode)
        except OSError:
            link = False
        if link and hops < 40:
            hops += 1
            target = readlink(here)
            parts = target.split("/") + parts
            if target.startswith("/"):
                done = []
        else:
            done.append(part)
    return "/" + "/".join(done)


def _audit(event, args):
    if event == "sys._getframe":
        raise ValueError("frame access is disabled by the test harness")
    if event in BLOCKED_EVENTS or event.startswith("ctypes."):
        raise RuntimeError(event + " is disabled by the test harness")
    if event == "object.__getattr__" and args[1] in FRAME_ATTRS:
        # AttributeError, as for an object without frames: hasattr() callers (asyncio)
        # then take their frameless path
        raise AttributeError("frame access is disabled by the test harness")
    if event == "open":
        _check_open(args[0], args[1], args[2] if _len(args) > 2 and _type(args[2]) is int else 0)


def _check_open(path, mode, flags):
    """No file under /proc, and no directory fd from os.open (mode None): one would let a
    relative path with dir_fd= start somewhere this check does not see. (io.open of a
    directory fails unless an opener makes the fd, and the opener's os.open is checked.)"""
    if _type(path) is int:
        return
    if _type(path) is bytes:
        path = path.decode("utf-8", "surrogateescape")
    if _type(path) is not str:
        raise RuntimeError("open() takes a str path under the test harness")
    real = _resolve(path)
    if "proc" in path.split("/") or real == "/proc" or real.startswith("/proc/"):
        raise RuntimeError("/proc is closed by the test harness")
    if mode is not None or flags & O_TMPFILE == O_TMPFILE:  # O_TMPFILE gives a file fd
        return
    try:
        is_dir = S_ISDIR(stat(real).st_mode)
    except OSError:
        is_dir = False
    if is_dir or flags & (O_DIRECTORY | O_PATH):
        raise RuntimeError("opening a directory is disabled by the test harness")


def _set_not_dumpable():
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0) == 0  # PR_SET_DUMPABLE
    except (ImportError, OSError, AttributeError):
        return False


class _Snapshot:
    """The public callables and submodules of every loaded module, and sys.modules."""

    def __init__(self):
        self.modules = sys.modules
        self.entries = dict(self.modules)
        self.attrs = []
        for name, mod in self.entries.items():
            d = getattr(mod, "__dict__", None)
            if _type(d) is dict:
                kept = [
                    (k, v)
                    for k, v in d.items()
                    if _type(k) is str
                    and k[:1] != "_"
                    and (callable(v) or _type(v) is types.ModuleType)
                ]
                self.attrs.append((name, d, kept))

    def restore(self):
        """Puts back whatever was replaced; returns the names that were."""
        changed = []
        for name, mod in self.entries.items():
            if self.modules.get(name) is not mod:
                self.modules[name] = mod
                changed.append(f"sys.modules[{name!r}]")
        for name, d, kept in self.attrs:
            for k, v in kept:
                if d.get(k) is not v:
                    d[k] = v
                    changed.append(name + "." + k)
        return changed


def _make_checks(refused):
    """The helpers the rewritten tests call; `refused` records every refusal."""

    def refuse(why):
        refused.append(why)
        raise _Refused(why)

    def norm(v, depth=0):
        t = _type(v)
        if t in _SCALARS:
            return v
        if depth > MAX_DEPTH:
            refuse(f"a compared value is nested more than {MAX_DEPTH} deep")
        if t is list or t is tuple or t is set or t is frozenset:
            if not (set(map(_type, v)) - _SCALARS):
                return v
            return t(norm(x, depth + 1) for x in v)
        if t is dict:
            if not (set(map(_type, v)) - _SCALARS or set(map(_type, v.values())) - _SCALARS):
                return v
            return {norm(k, depth + 1): norm(x, depth + 1) for k, x in dict.items(v)}
        for base in _mro(t)[1:]:
            if base in _TO_BASE:
                return norm(_TO_BASE[base](v), depth + 1)
        if _flags(t) & IMMUTABLE_TYPE:  # implemented in C: its methods cannot be replaced
            if t is slice:
                norm((v.start, v.stop, v.step), depth + 1)
            elif t is type({}.keys()) or t is type({}.items()):
                return norm(set(v), depth + 1)
            elif t.__name__ == "deque":
                return t(norm(list(v), depth + 1))
            elif t.__name__ in ("SimpleNamespace", "mappingproxy"):
                refuse(f"a compared value is a {_type_name(t)}")
            return v
        if _compares_by_identity(t):
            return v
        refuse(
            f"a compared value is a {_type_name(t)}, whose class defines its own comparison or "
            "truth (values reaching a comparison in the tests must be built-in data)"
        )

    def truth(v):
        try:
            return True if norm(v) else False
        except RecursionError:
            refuse("a tested value is nested too deep")

    def value(v):
        try:
            return norm(v)
        except RecursionError:
            refuse("a tested value is nested too deep")

    def cmp(left, ops, *rights):
        a = left
        try:
            for op, b in zip(ops, rights, strict=False):
                if op == "Is" or op == "IsNot":
                    ok = (a is b) == (op == "Is")
                else:
                    ok = truth(_OPS[op](norm(a), norm(b)))
                if not ok:
                    return False
                a = b
        except RecursionError:
            refuse("a compared value is nested too deep")
        return True

    def fail(line, msg):
        raise _Failed(line, msg)

    def safe_all(it):
        for x in it:
            if not truth(x):
                return False
        return True

    def safe_any(it):
        for x in it:
            if truth(x):
                return True
        return False

    def safe_isinstance(obj, cls):  # the real type must agree (no faked __class__)
        return _isinstance(obj, cls) and _issubclass(_type(obj), cls)

    return {
        "__referee_cmp__": cmp,
        "__referee_truth__": truth,
        "__referee_value__": value,
        "__referee_fail__": fail,
        "all": safe_all,
        "any": safe_any,
        "isinstance": safe_isinstance,
    }


def _compile_all(cfg):
    """(setup, prelude, cases) code objects; SyntaxError etc. mean the tests are bad."""
    cases = [compile_tests(src) for src in cfg["tests"]]
    setup = compile(cfg["setup"], "<setup>", "exec", dont_inherit=True) if cfg["setup"] else None
    try:  # the prompt, re-run for the tests so that its helpers are the prompt's own
        prelude = (
            compile(cfg["prelude"], "<prompt>", "exec", dont_inherit=True)
            if cfg["prelude"]
            else None
        )
    except (SyntaxError, ValueError):
        prelude = None
    return setup, prelude, cases


def _isolate():
    """fds 0-2 to /dev/null, the process non-dumpable, modules loaded and snapshotted."""
    null = _os_open("/dev/null", O_RDWR)
    for fd in (0, 1, 2):
        dup2(null, fd)
    close(null)
    hardened = _set_not_dumpable()
    for name in PREIMPORT:
        try:
            __import__(name)
        except ImportError:
            pass
    return hardened, _Snapshot()


def _attempt(thunk, limit, deadline, refused):
    """Runs `thunk` under the case time limit: (verdict, reason). Only a thunk that runs
    to its end, in time, with no refused value, is OK."""
    del refused[:]
    wall = min(2 * limit + 1, deadline - monotonic())
    t0, c0 = monotonic(), process_time()
    verdict, reason = "OK", ""
    try:
        try:
            _set_handler(SIGALRM, default_int_handler)
            _set_handler(SIGPROF, default_int_handler)
            setitimer(ITIMER_PROF, limit)  # CPU time of the process
            setitimer(ITIMER_REAL, max(wall, 0.01))
            thunk()
        finally:
            _set_handler(SIGALRM, SIG_IGN)
            _set_handler(SIGPROF, SIG_IGN)
            setitimer(ITIMER_REAL, 0)
            setitimer(ITIMER_PROF, 0)
    except KeyboardInterrupt:
        verdict, reason = "TIME_LIMIT", f"time limit of {limit:g}s exceeded"
    except _Failed as e:
        line, msg = (_exc_args(e) + (None, None))[:2]
        shown = msg if _type(msg) is str else "" if msg is None else "<message>"
        verdict = "WRONG_ANSWER"
        reason = f"assertion failed (tests line {line})" + (": " + shown if shown else "")
    except _Refused:
        verdict, reason = "WRONG_ANSWER", refused[0] if refused else "a value was refused"
    except MemoryError:
        verdict, reason = "MEMORY_LIMIT", "MemoryError"
    except SystemExit as e:
        verdict, reason = "RUNTIME_ERROR", f"the program exited ({_describe(e)})"
    except BaseException as e:  # anything the program or the tests raise fails the case
        verdict, reason = "RUNTIME_ERROR", _describe(e)
    if process_time() - c0 > limit or monotonic() - t0 > 2 * limit + 1:
        verdict, reason = "TIME_LIMIT", f"time limit of {limit:g}s exceeded"
    elif refused and verdict in ("OK", "RUNTIME_ERROR"):
        verdict, reason = "WRONG_ANSWER", refused[0]
    return verdict, reason


def run(raw):
    cfg = json.loads(raw)
    nonce, limit = cfg["nonce"], float(cfg["time_limit_s"])
    deadline = monotonic() + float(cfg["budget_s"])
    out = dup(1)

    def emit(kind, index=-1, verdict="-", reason=""):
        line = f"\n@@{nonce} {kind} {index} {verdict} {_hex(reason)}\n"
        try:
            write(out, line.encode("ascii"))
        except OSError:
            pass

    try:
        setup, prelude, cases = _compile_all(cfg)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        return emit("badtests", reason="the tests do not compile: " + _syntax(e))
    try:
        program = compile(cfg["program"], PROGRAM_FILE, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError) as e:
        return emit("syntax", verdict="COMPILE_ERROR", reason=_syntax(e))
    hardened, snapshot = _isolate()
    refused = []
    checks = _make_checks(refused)
    test_builtins = dict(vars(builtins))
    test_builtins.update(checks)
    sys.addaudithook(_audit)
    emit("start", verdict="hardened" if hardened else "dumpable")
    try:
        _run_cases(
            cfg,
            emit,
            snapshot,
            setup,
            prelude,
            program,
            cases,
            test_builtins,
            checks,
            lambda thunk: _attempt(thunk, limit, deadline, refused),
            deadline,
        )
    except BaseException as e:  # the harness stopped; the verifier fails the cases not reported
        emit("crash", reason=_describe(e))
    _os_exit(0)


def _run_cases(
    cfg, emit, snapshot, setup, prelude, program, cases, test_builtins, checks, attempt, deadline
):
    entry, call_check = cfg["entry_point"], cfg["call_check"]
    module = types.ModuleType("solution")
    namespace = module.__dict__
    namespace["__builtins__"] = builtins
    sys.modules["solution"] = module

    def top_level():
        if setup is not None:
            exec(setup, namespace)
        exec(program, namespace)

    verdict, reason = attempt(top_level)
    snapshot.restore()
    if verdict == "OK" and entry and not callable(namespace.get(entry)):
        verdict, reason = "RUNTIME_ERROR", f"the program does not define {entry}()"
    if verdict != "OK":
        return emit("top", verdict=verdict, reason="before the tests: " + reason)
    test_ns = dict(namespace)
    for name in checks:  # the program's own `all` or `__referee_cmp__` must not shadow them
        test_ns.pop(name, None)
    test_ns.update({"__builtins__": test_builtins, "__name__": "__referee_tests__"})
    candidate = namespace.get(entry) if entry else None
    if prelude is not None:
        try:
            exec(prelude, test_ns)
        except Exception:  # a prompt that does not run on its own adds nothing
            pass
    if entry:
        test_ns[entry] = test_ns["candidate"] = candidate
    if call_check:
        test_ns.pop("check", None)
    for i, code in enumerate(cases):
        if deadline - monotonic() <= 0:
            emit("case", i, "TIME_LIMIT", "not run: the sample's time budget ran out")
            continue
        snapshot.restore()

        def thunk(code=code):
            exec(code, test_ns)
            if call_check:
                test_ns["check"](candidate)

        verdict, reason = attempt(thunk)
        changed = snapshot.restore()
        if changed and verdict == "OK":
            verdict, reason = "WRONG_ANSWER", f"the program replaced {changed[0]} during the tests"
        emit("case", i, verdict, reason)
    emit("done")


def _boot():
    """Reads and removes the job file, then runs the harness from a private copy of this
    module (its own builtins dict), out of reach of `import __main__` in the program."""
    with open(CONFIG, "rb") as f:
        raw = f.read()
    unlink(CONFIG)
    with open(__file__, encoding="utf-8") as f:
        source = f.read()
    private = {"__name__": "__referee_harness__", "__builtins__": dict(vars(builtins))}
    exec(compile(source, "harness", "exec", dont_inherit=True), private)
    private["run"](raw)


if __name__ == "__main__":
    _boot()
