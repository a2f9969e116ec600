"""The documentation and the public surface say what the code does."""

from __future__ import annotations

from pathlib import Path

import prefect_incomplete
from prefect_incomplete.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_public_names_are_pinned() -> None:
    """The package exports exactly what a user types."""
    assert sorted(prefect_incomplete.__all__) == [
        "IncompleteExecution",
        "RetryPolicy",
        "Rule",
        "Settings",
        "Status",
        "add_rule",
        "classify",
        "errors",
        "remove_rule",
        "resumable",
    ]


def test_readme_has_the_classification_table() -> None:
    """The README shows every row of docs/classification.md's default table."""
    readme = (ROOT / "README.md").read_text()
    table = [
        line
        for line in (ROOT / "docs" / "classification.md").read_text().splitlines()
        if line.startswith("| ")
    ]
    assert table
    missing = [row for row in table if row not in readme]
    assert missing == []


def test_readme_lists_every_setting_with_its_description() -> None:
    """Every PREFECT_INCOMPLETE_* setting is in the README, described as in code."""
    readme = (ROOT / "README.md").read_text()
    for name, field in Settings.model_fields.items():
        assert f"`PREFECT_INCOMPLETE_{name.upper()}`" in readme
        assert field.description
        assert field.description in readme


def test_readme_first_screen_shows_both_commands() -> None:
    """The first lines of the README show the demo and the test command."""
    first_screen = "\n".join((ROOT / "README.md").read_text().splitlines()[:20])
    assert "scripts/demo" in first_screen
    assert "scripts/test" in first_screen
