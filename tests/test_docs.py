"""The README cannot drift: every setting, variable and flag is documented."""

from __future__ import annotations

import re

import settings
from healthsync.cli import build_parser
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def test_every_setting_and_variable_is_in_the_readme():
    for name, _default, help_text in settings.describe():
        assert f"`{name}`" in README, name
        assert f"`{settings.env_name(name)}`" in README, name
        assert help_text, f"setting {name} has no help text"


def test_every_cli_flag_is_in_the_readme():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for command, sub in subparsers.choices.items():
        assert re.search(rf"\b{command}\b", README), command
        for action in sub._actions:
            for flag in action.option_strings:
                if flag.startswith("--") and flag != "--help":
                    assert f"`{flag}`" in README or f"{flag} " in README, (command, flag)


def test_readme_commands_exist():
    assert "bash tests/run.sh" in README
    assert "run.py" in README
    assert (ROOT / "tests" / "run.sh").exists()
