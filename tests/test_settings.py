import json
from pathlib import Path

import pytest

from podfn.errors import ConfigurationError
from podfn.settings import Settings, write_profile


def test_reads_typed_values_from_podfn_variables() -> None:
    s = Settings.from_env({"PODFN_PORT": "9000", "PODFN_SWEEP_SECONDS": "0.5",
                           "PODFN_DATABASE_URL": "postgresql://x/y", "OTHER": "1"})
    assert (s.port, s.sweep_seconds, s.database_url) == (9000, 0.5, "postgresql://x/y")


def test_each_read_sees_the_environment_of_that_moment() -> None:
    """The fields' types are resolved once; the values are read every time."""
    assert Settings.from_env({"PODFN_WARM_POOL_WORKERS": "3"}).warm_pool_workers == 3
    assert Settings.from_env({"PODFN_WARM_POOL_WORKERS": "5"}).warm_pool_workers == 5
    assert Settings.from_env({}).warm_pool_workers is None


def test_current_reads_again_when_the_environment_changed(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PODFN_URL", "http://one:1")
    first = Settings.current()
    assert Settings.current() is first  # nothing changed: not read again
    monkeypatch.setenv("PODFN_URL", "http://two:2")
    assert Settings.current().url == "http://two:2"
    monkeypatch.delenv("PODFN_URL")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))  # where the profile is looked for
    assert Settings.current().profile == tmp_path / "podfn" / "profile.json"


def test_overrides_win_over_the_environment() -> None:
    assert Settings.from_env({"PODFN_PORT": "9000"}, port=9100).port == 9100


@pytest.mark.parametrize(("env", "needle"), [
    ({"PODFN_PORT": "eighty"}, "PODFN_PORT"),
    ({"PODFN_LAUNCHER": "docker"}, "PODFN_LAUNCHER"),
    ({"PODFN_MAX_CONCURRENCY": "0"}, "PODFN_MAX_CONCURRENCY"),
    ({"PODFN_WARM_POOL_WORKERS": "0"}, "PODFN_WARM_POOL_WORKERS"),
])
def test_malformed_values_name_the_variable(env: dict[str, str], needle: str) -> None:
    with pytest.raises(ConfigurationError, match=needle):
        Settings.from_env(env)


def test_platform_comes_from_url_then_profile(tmp_path: Path) -> None:
    profile = tmp_path / "profile.json"
    with pytest.raises(ConfigurationError, match="podfn dev"):
        Settings(profile=profile).platform()
    write_profile(profile, "http://127.0.0.1:1234/", "tok")
    assert profile.stat().st_mode & 0o777 == 0o600
    assert json.loads(profile.read_text())["token"] == "tok"
    assert Settings(profile=profile).platform() == ("http://127.0.0.1:1234", "tok")
    assert Settings(profile=profile, url="http://other", token="t2").platform() == (
        "http://other", "t2")


def test_missing_database_url_says_what_to_do() -> None:
    with pytest.raises(ConfigurationError, match="podfn dev"):
        Settings().require_database_url()
