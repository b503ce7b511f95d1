from decimal import Decimal

import pytest

from podfn import remote
from podfn.errors import InvalidSpec
from podfn.spec import parse_quantity, validate


@pytest.mark.parametrize(("text", "value"), [
    ("250m", Decimal("0.25")), ("2", Decimal(2)), ("0.5", Decimal("0.5")),
    ("256Mi", Decimal(256 * 2**20)), ("1Gi", Decimal(2**30)), ("1G", Decimal(10**9)),
    ("1e3", Decimal(1000)), (3, Decimal(3)),
])
def test_quantities_follow_the_kubernetes_grammar(text: object, value: Decimal) -> None:
    assert parse_quantity("cpu", text) == value


@pytest.mark.parametrize("text", ["2 cores", "-1Gi", "0", "1GB", "", "abc", "1.2.3"])
def test_bad_quantities_name_the_field(text: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        validate({"memory": text})
    assert info.value.field == "memory"
    assert repr(text) in str(info.value)


def test_unknown_hint_is_rejected_by_name() -> None:
    with pytest.raises(InvalidSpec) as info:
        validate({"memroy": "1Gi"})
    assert info.value.field == "memroy"
    assert "known hints" in str(info.value)


@pytest.mark.parametrize(("spec", "field"), [
    ({"retries": -1}, "retries"), ({"retries": 1.5}, "retries"), ({"timeout": 0}, "timeout"),
    ({"gpu": True}, "gpu"), ({"env": {"A": 1}}, "env"), ({"env": ["A"]}, "env"),
    ({"labels": {"bad key!": "x"}}, "labels"), ({"image": ""}, "image"),
    ({"tolerations": "all"}, "tolerations"), ({"pod_patch": [1]}, "pod_patch"),
])
def test_malformed_hints(spec: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        validate(spec)
    assert info.value.field == field


def test_defaults_are_filled_and_fresh() -> None:
    a = validate({})
    a["env"]["X"] = "1"
    assert validate({})["env"] == {}
    assert a["retries"] == 0 and a["timeout"] is None


def test_decorator_rejects_bad_hints_at_once() -> None:
    with pytest.raises(InvalidSpec, match="cpu"):
        remote(cpu="2 cores")(lambda: None)


def test_options_override_for_one_copy() -> None:
    f = remote(memory="1Gi")(lambda: None)
    g = f.options(memory="2Gi", timeout=5)
    assert (f.hints["memory"], g.hints["memory"], g.hints["timeout"]) == ("1Gi", "2Gi", 5)


@pytest.mark.parametrize(("spec", "field", "words"), [
    ({"retries": 3_000_000_000}, "retries", "0 to 100"),
    ({"retry_backoff": 1.7e308}, "retry_backoff", "0 to 3600"),
    ({"retry_backoff": float("inf")}, "retry_backoff", "out of range"),
    ({"timeout": 10**12}, "timeout", "7 days"),
    ({"memory": "512"}, "memory", "too little to run Python"),
    ({"memory": 512}, "memory", "too little to run Python"),
    ({"memory": "2Ei"}, "memory", "32Mi to 1Ti"),
    ({"cpu": "0.1m"}, "cpu", "1m to 1024"),
    ({"cpu": "1e9"}, "cpu", "1m to 1024"),
    ({"gpu": 10_000}, "gpu", "0 to 64"),
])
def test_hints_are_bounded_with_a_clear_error(spec: dict[str, object], field: str,
                                              words: str) -> None:
    with pytest.raises(InvalidSpec) as info:
        validate(spec)
    assert info.value.field == field
    assert words in str(info.value)


def test_the_edges_of_each_bound_are_accepted() -> None:
    out = validate({"retries": 100, "retry_backoff": 3600, "timeout": 604800, "memory": "32Mi",
                    "cpu": "1m", "gpu": 64})
    assert (out["retries"], out["memory"], out["cpu"]) == (100, "32Mi", "1m")


def test_the_decorator_applies_the_same_bounds() -> None:
    with pytest.raises(InvalidSpec, match="retries"):
        remote(retries=3_000_000_000)(lambda: None)


@pytest.mark.parametrize(("field", "value"), [
    ("memory", "65536Ki"), ("memory", "0.5Ti"), ("memory", 2**30), ("cpu", "1e3"), ("cpu", "0.0005k")])
def test_a_quantity_in_range_but_spelled_otherwise_is_refused_when_given(
        field: str, value: object) -> None:
    """The API's schema takes fewer spellings than Kubernetes; the client says so at once."""
    with pytest.raises(InvalidSpec, match="not spelled as podfn takes it") as caught:
        validate({field: value})
    assert caught.value.field == field


@pytest.mark.parametrize(("field", "value"), [
    ("memory", "512Mi"), ("memory", "1.5Gi"), ("memory", "2G"), ("memory", "1Ti"),
    ("cpu", "250m"), ("cpu", 2), ("cpu", 0.5), ("cpu", "1024")])
def test_the_usual_spellings_are_taken(field: str, value: object) -> None:
    assert validate({field: value})[field] == str(value)
