"""The Python side of the contract: Result invariants, the @verifier decorator, param
validation, the registry and the JSONL/proto conversions."""

import math
import sys
import types

import pytest

from referee import InvalidInput, Result, Sample, Status, verifier
from referee.convert import sample_from_json, sample_from_proto, sample_to_proto, score_from_proto
from referee.registry import LoadError, as_verifiers, load_specs
from referee.v1 import reward_pb2 as pb
from referee.verifier import validate_params


@verifier(name="toy", version="2", param_docs={"scale": "multiplier"})
def toy(sample: Sample, *, scale: float = 1.0, tag: str | None = None, n: int, flags: list = []) -> Result:  # noqa: B006
    """A toy verifier.

    More text that is not the description.
    """
    return Result.ok(scale * n)


def test_ok_result_needs_a_finite_value() -> None:
    with pytest.raises(TypeError):
        Result(None, Status.OK)
    with pytest.raises(ValueError):
        Result.ok(math.nan)
    with pytest.raises(ValueError):
        Result(0.0, Status.TIMEOUT)
    assert Result.invalid("x").value is None


def test_decorator_reads_params_from_the_signature() -> None:
    assert (toy.name, toy.version, toy.kind, toy.description) == ("toy", "2", "rule", "A toy verifier.")
    by_name = {p.name: p for p in toy.params}
    assert [p.name for p in toy.params] == ["scale", "tag", "n", "flags"]
    assert (by_name["scale"].type, by_name["scale"].description, by_name["scale"].default) == ("number", "multiplier", 1.0)
    assert by_name["tag"].nullable and by_name["tag"].type == "string"
    assert by_name["n"].required and by_name["n"].default_json() == ""
    assert by_name["flags"].type == "array"
    assert toy(Sample(completion="x"), n=3).value == 3.0


def test_decorator_rejects_what_it_cannot_describe() -> None:
    with pytest.raises(TypeError, match="annotate"):
        @verifier(name="bad", version="1")
        def bad(sample: Sample, *, weird: complex = 1j) -> Result:
            return Result.ok(0)
    with pytest.raises(ValueError, match="unknown params"):
        @verifier(name="bad", version="1", param_docs={"nope": "x"})
        def bad2(sample: Sample) -> Result:
            return Result.ok(0)
    with pytest.raises(ValueError):
        verifier(name="", version="1")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({}, "needs param 'n'"),
        ({"n": 1, "nope": 2}, "does not accept params ['nope']"),
        ({"n": 1.5}, "param 'n' must be integer"),
        ({"n": True}, "param 'n' must be integer"),
        ({"n": 1, "scale": "2"}, "param 'scale' must be number"),
        ({"n": 1, "flags": {"a": 1}}, "param 'flags' must be array"),
    ],
)
def test_validate_params_names_the_problem(given: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate_params(toy, given)


def test_validate_params_fills_defaults_and_coerces_struct_numbers() -> None:
    # protobuf Struct sends every number as a double: 3.0 must become the integer 3.
    got = validate_params(toy, {"n": 3.0, "tag": None})
    assert got == {"scale": 1.0, "tag": None, "n": 3, "flags": []}
    assert isinstance(got["n"], int)


def test_check_params_hook() -> None:
    def positive(*, n: int) -> None:
        if n <= 0:
            raise ValueError("n must be positive")

    @verifier(name="checked", version="1", check_params=positive)
    def checked(sample: Sample, *, n: int = 1) -> Result:
        return Result.ok(n)

    checked.check_params({"n": 1})
    with pytest.raises(ValueError, match="positive"):
        checked.check_params({"n": 0})


def test_registry_loads_builtins_and_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    mod = types.ModuleType("fake_team_verifiers")

    def plain(sample: Sample, *, k: int = 1) -> Result:
        """Plain function."""
        return Result.ok(k)

    class AsClass:
        name, version, kind, description, params, timeout_s = "klass", "1", "custom", "", (), None

        def verify(self, sample: Sample) -> Result:
            return Result.ok(1)

    mod.plain, mod.AsClass, mod.toy, mod.not_one = plain, AsClass, toy, 42
    mod.both = [toy, AsClass()]
    monkeypatch.setitem(sys.modules, "fake_team_verifiers", mod)

    table = load_specs(["builtin", "fake_team_verifiers:plain", "fake_team_verifiers:AsClass"])
    assert {"math", "exact", "json", "format", "plain", "klass"} <= set(table)
    assert table["plain"].version == "0" and table["plain"].params[0].name == "k"
    assert len(as_verifiers(mod.both, "x")) == 2
    for spec, message in [
        ("fake_team_verifiers", "package.module:name"),
        ("fake_team_verifiers:missing", "no attribute"),
        ("no_such_module_xyz:thing", "No module named"),
        ("fake_team_verifiers:not_one", "is not a verifier"),
    ]:
        with pytest.raises(LoadError, match=message):
            load_specs([spec])
    with pytest.raises(LoadError, match="already taken"):
        load_specs(["fake_team_verifiers:toy", "fake_team_verifiers:both"])


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([1], "expected a JSON object"),
        ({"completion": "x", "complet": "y"}, "unknown fields \\['complet'\\]"),
        ({"completion": 3}, "completion must be a string"),
        ({"completion": "x", "prompt": [{"role": 1}]}, "prompt\\[0\\]"),
        ({"completion": "x", "metadata": [1]}, "metadata must be a JSON object"),
        ({"completion": "x", "reference": {"a": 1}}, "reference must be a string"),
        ({"completion": "x", "id": 1.5}, "id must be"),
    ],
)
def test_jsonl_rows_are_validated(row: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        sample_from_json(row, "line 7")


def test_sample_round_trips_through_the_wire() -> None:
    s = sample_from_json({"id": 5, "prompt": [{"role": "user", "content": "hi"}], "completion": "",
                          "reference": 42, "metadata": {"choices": ["a", "b"], "n": 2}})
    assert s.id == "5" and s.reference == "42" and s.completion == ""
    back = sample_from_proto(pb.Sample.FromString(sample_to_proto(s).SerializeToString()))
    assert back.prompt == s.prompt and back.completion == "" and back.metadata == {"choices": ["a", "b"], "n": 2.0}
    assert sample_from_proto(pb.Sample(id="x")).completion is None  # absent, not empty


def test_unknown_wire_status_is_never_ok() -> None:
    got = score_from_proto(pb.Score(id="a", status=0, value=1.0))
    assert got.status is Status.ERROR and got.value is None
    assert score_from_proto(pb.Score(id="a", status=pb.STATUS_TIMEOUT, value=1.0)).value is None


def test_invalid_input_is_a_value_error() -> None:
    assert issubclass(InvalidInput, ValueError)
