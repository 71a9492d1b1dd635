"""The README cannot drift: every setting, variable and flag is documented."""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import re
import shlex

import settings
from healthsync.cli import build_parser, load_settings, parse_args
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


# What the README shows ----------------------------------------------------------------------------

#: Top-level folders of the repository: a path starting with one of them names a file of ours.
REPO_DIRS = ("bench/", "deploy/", "healthsync/", "static/", "tests/", ".ci/", "tools/", "requirements",
             "pyproject.toml", "setup.py")


def code_blocks(text: str) -> list[tuple[str, list[str]]]:
    """The README's fenced blocks: ``(language, lines)``, continued lines joined."""
    blocks = re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
    return [(m.group(1), m.group(2).replace("\\\n", " ").splitlines()) for m in blocks]


def prose(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def shell_commands(line: str) -> list[list[str]]:
    """One shell line's commands (split at ``&&``, ``;``, ``|``, ``&``; comments dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token and set(token) <= set("&;|()"):
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def cli_args(command: list[str]) -> list[str] | None:
    """The arguments of HealthSync's command line in one shell command: ``run.py ARGS``,
    the installed ``healthsync ARGS`` (``.venv/bin/healthsync``), ``python -m healthsync
    ARGS``; None when it runs something else."""
    for i, token in enumerate(command):
        if token == "run.py" or token.endswith("/run.py") or token.endswith("bin/healthsync") or (
                i == 0 and token == "healthsync"):
            return command[i + 1:]
        if token == "-m" and command[i + 1:i + 2] == ["healthsync"]:
            return command[i + 2:]
    return None


def run_py_invocations() -> list[tuple[str, list[str]]]:
    """Every ``run.py …`` (or ``healthsync …``) the README shows, as ``(where, argv)``: in
    shell blocks, and ``run.py`` in inline code, where ``a|b|c`` offers alternatives (each
    is one invocation)."""
    found: list[tuple[str, list[str]]] = []
    for lang, lines in code_blocks(README):
        if lang != "sh":
            continue
        for line in lines:
            for command in shell_commands(line):
                argv = cli_args(command)
                if argv is not None:
                    found.append((line.strip(), argv))
    for span in re.findall(r"`([^`\n]*\brun\.py(?:\s[^`\n]*)?)`", prose(README)):
        tokens = shlex.split(span)
        argv = tokens[tokens.index("run.py") + 1:]
        for choice in itertools.product(*(t.split("|") if "|" in t else [t] for t in argv)):
            found.append((span, list(choice)))
    return found


def test_readme_commands_exist(monkeypatch):
    """Every ``run.py`` command line the README shows is one the real parser and settings
    accept, and together they show every command."""
    for key in [k for k in os.environ if k.startswith("HEALTHSYNC_")]:
        monkeypatch.delenv(key)
    invocations = run_py_invocations()
    assert len(invocations) >= 20, invocations  # the parsing above found them
    shown: set[str] = set()
    for where, argv in invocations:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = parse_args(argv)
        except SystemExit as exc:
            raise AssertionError(f"README shows `run.py {' '.join(argv)}` ({where}): {err.getvalue()}") from exc
        load_settings(args)  # a bad value would raise SettingsError
        shown.add(args.command if args.command != "token" else f"token {args.token_command}")
    commands, flags = cli_commands_and_flags()
    assert commands <= shown, f"commands the README never shows: {sorted(commands - shown)}"
    # argparse takes a flag's prefix too (``--patient`` for ``--patients``): the README spells them out
    loose = {t.split("=")[0] for _, argv in invocations for t in argv if t.startswith("--")} - flags
    assert not loose, f"the README shows flags the CLI does not define: {sorted(loose)}"


def cli_commands_and_flags() -> tuple[set[str], set[str]]:
    """Every command (``token create`` for nested ones) and every ``--flag`` of ``run.py``."""
    commands: set[str] = set()
    flags: set[str] = set()

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        flags.update(f for a in parser._actions for f in a.option_strings if f.startswith("--"))
        if path and not nested:
            commands.add(path)
        for action in nested:
            for name, sub in action.choices.items():
                walk(sub, f"{path} {name}".strip())

    walk(build_parser(), "")
    return commands, flags


def test_readme_paths_exist():
    """Every file or folder of ours the README names (in code, inline or in a block) exists."""
    spans = re.findall(r"`([^`\n]+)`", prose(README))
    for lang, lines in code_blocks(README):
        if lang == "sh":
            spans += [t for line in lines for c in shell_commands(line) for t in c]
    paths = {t for span in spans for t in span.split() if t.startswith(REPO_DIRS)}
    assert "tests/run.sh" in paths and "bench/README.md" in paths, sorted(paths)
    missing = sorted(p for p in paths if not (ROOT / p).exists())
    assert not missing, f"the README names files that do not exist: {missing}"


def test_readme_layout_matches_the_tree():
    """The picture in "How it is built" names files and folders that exist."""
    section = README.split("## How it is built", 1)[1]
    (_, lines), *_ = code_blocks(section)
    named: list[str] = []
    for line in lines:
        if not line.strip():
            continue
        names = re.split(r"\s{2,}", line.strip())[0].split()
        base = "healthsync/" if line.startswith(" ") else ""
        folder = ""
        for name in names:  # "sync/apply.py download.py": both in sync/
            if "/" in name.rstrip("/"):
                folder, name = name.rsplit("/", 1)[0] + "/", name.rsplit("/", 1)[1]
            named.append(base + folder + name)
    assert len(named) >= 10 and "healthsync/app.py" in named and "settings.py" in named, named
    missing = [n for n in named if not (ROOT / n).exists()]
    assert not missing, f"the layout in the README names what does not exist: {missing}"
