import pytest

from podfn_runtime import queries


def test_parses_named_statements() -> None:
    parsed = queries.parse("-- name: a\nSELECT 1;\n\n-- name: b\n-- why\nSELECT 2;\n")
    assert parsed == {"a": "SELECT 1", "b": "-- why\nSELECT 2"}


def test_duplicate_names_are_an_error() -> None:
    with pytest.raises(ValueError, match="twice"):
        queries.parse("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")


@pytest.mark.parametrize("package, filename", [("podfn_platform.sql", "transitions.sql"),
                                               ("podfn_runtime", "protocol.sql")])
def test_every_transition_is_a_single_statement(package: str, filename: str) -> None:
    for name, statement in queries.load(package, filename).items():
        code = "\n".join(line for line in statement.splitlines()
                         if not line.strip().startswith("--"))
        assert ";" not in code, f"{name} holds more than one statement"
