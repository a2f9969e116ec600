"""Settings from ``PREFECT_INCOMPLETE_*`` variables, and the errors of bad ones."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

from prefect_incomplete.settings import InvalidSettingError, get_settings

BAD_VALUES = [
    (
        "PREFECT_INCOMPLETE_LEASE_SECONDS",
        "abc",
        "PREFECT_INCOMPLETE_LEASE_SECONDS='abc' is not valid (input should be a "
        "valid number, unable to parse string as a number); set it to a number "
        "more than 0 and at most 31622400, or unset it to use the default",
    ),
    (
        "PREFECT_INCOMPLETE_FLOW_QUOTA_COUNT",
        "-1",
        "PREFECT_INCOMPLETE_FLOW_QUOTA_COUNT='-1' is not valid (input should be "
        "greater than or equal to 0); set it to a whole number of 0 or more, or "
        "unset it to use the default",
    ),
    (
        "PREFECT_INCOMPLETE_STORE",
        "maybe",
        "PREFECT_INCOMPLETE_STORE='maybe' is not valid (input should be a valid "
        "boolean, unable to interpret input); set it to true or false, or unset "
        "it to use the default",
    ),
    (
        "PREFECT_INCOMPLETE_PURGE_AFTER",
        "soon",
        "PREFECT_INCOMPLETE_PURGE_AFTER='soon' is not valid (cannot read the "
        "duration 'soon': use a number and a unit, e.g. 30d, 12h, 90m, 45s or "
        "2w); set it to a duration such as 30d, 12h, 90m, 45s or 2w, or unset it "
        "to use the default",
    ),
]
UNPARSED_JSON = [
    (
        "PREFECT_INCOMPLETE_POLICIES",
        "{bad",
        "PREFECT_INCOMPLETE_POLICIES='{bad' is not valid (not JSON: Expecting "
        "property name enclosed in double quotes: line 1 column 2 (char 1)); set "
        'it to a JSON object of policies by kind, e.g. {"RateLimitError": '
        '{"attempts": 5}}, or unset it to use the default',
    ),
    (
        "PREFECT_INCOMPLETE_AUTO_RETRY_SCHEDULE",
        "[60, 600",
        "PREFECT_INCOMPLETE_AUTO_RETRY_SCHEDULE='[60, 600' is not valid (not "
        "JSON: Expecting ',' delimiter: line 1 column 9 (char 8)); set it to a "
        "JSON list of seconds, e.g. [60, 600, 1800], or unset it to use the "
        "default",
    ),
]


@pytest.mark.parametrize(("variable", "value", "message"), BAD_VALUES)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    """A value of the wrong type or range: the variable, what is wrong, what to set."""
    monkeypatch.setenv(variable, value)

    with pytest.raises(InvalidSettingError) as caught:
        get_settings()

    assert str(caught.value) == message
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value.__cause__, ValidationError)


@pytest.mark.parametrize(("variable", "value", "message"), UNPARSED_JSON)
def test_value_that_is_not_json_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, message: str
) -> None:
    """A JSON setting that does not parse: the variable and where the JSON breaks."""
    monkeypatch.setenv(variable, value)

    with pytest.raises(InvalidSettingError) as caught:
        get_settings()

    assert str(caught.value) == message
    assert isinstance(caught.value.__cause__, SettingsError)


def test_every_bad_variable_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two bad variables are both named, in one message."""
    monkeypatch.setenv("PREFECT_INCOMPLETE_LEASE_SECONDS", "0")
    monkeypatch.setenv("PREFECT_INCOMPLETE_STORE", "maybe")

    with pytest.raises(InvalidSettingError) as caught:
        get_settings()

    assert str(caught.value) == (
        "PREFECT_INCOMPLETE_STORE='maybe' is not valid (input should be a valid "
        "boolean, unable to interpret input); set it to true or false, or unset "
        "it to use the default; also PREFECT_INCOMPLETE_LEASE_SECONDS='0' is not "
        "valid (input should be greater than 0); set it to a number more than 0 "
        "and at most 31622400, or unset it to use the default"
    )


def test_corrected_variable_is_read_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the variable is corrected, the next get_settings() reads it."""
    monkeypatch.setenv("PREFECT_INCOMPLETE_LEASE_SECONDS", "abc")
    with pytest.raises(InvalidSettingError):
        get_settings()

    monkeypatch.setenv("PREFECT_INCOMPLETE_LEASE_SECONDS", "120")

    assert get_settings().lease_seconds == 120


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PREFECT_INCOMPLETE_LEASE_SECONDS", "1e400"),
        ("PREFECT_INCOMPLETE_POLICIES", '{"RateLimitError": {"attempts": -1}}'),
    ],
)
def test_values_the_plugin_cannot_use_are_refused_when_read(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    """An endless lease or a negative retry count is refused by name at once."""
    monkeypatch.setenv(variable, value)

    with pytest.raises(InvalidSettingError, match=f"^{variable}="):
        get_settings()
