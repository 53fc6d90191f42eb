"""Help is a user interface: every command's --help shows its description, then its examples (one
copy-pasteable line each, parsed here as the CLI would), then its options, whose defaults are the
ones the settings dataclasses hold; and one flag means one thing across commands."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from dise_cli.cli import COMMANDS, app
from dise_cli.cli.options import default_of, shown
from dise_cli.evaluation import EvaluateSettings
from dise_cli.finetuning import FinetuneSettings
from dise_cli.offline import RunSettings
from dise_cli.pipeline import ProfileSettings
from dise_cli.selector_training import TrainSettings

REPO = Path(__file__).resolve().parent.parent
SETTINGS = {"profile": ProfileSettings, "train-selector": TrainSettings, "evaluate": EvaluateSettings,
            "run": RunSettings, "finetune": FinetuneSettings}


def _help(name: str) -> str:
    res = CliRunner().invoke(app, [name, "--help"], terminal_width=100)
    assert res.exit_code == 0, res.output
    return res.output


def _examples(text: str) -> list[str]:
    block = text.split("Examples:\n", 1)[1].split("\n\n", 1)[0]
    return [line.strip() for line in block.splitlines() if line.strip()]


def _click(name: str):
    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_shows_description_then_examples_then_options(name):
    text = _help(name)
    assert "\\b" not in text and "\b" not in text
    flat = " ".join(text.split())
    description = " ".join(_click(name).help.split()[:6])
    assert 0 < flat.index(description) < flat.index("Examples:") < flat.index("Options:")
    assert _examples(text) == list(COMMANDS[name].examples)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_example_parses_as_the_command_line_would(name):
    group = typer.main.get_command(app)
    for line in _examples(_help(name)):
        argv = shlex.split(line.removeprefix("$ "))
        assert argv[0] == "dise" and argv[1] in group.commands, line
        group.commands[argv[1]].make_context(argv[1], argv[2:])        # unknown flags or bad values raise
        for arg in argv[2:]:
            if arg.startswith("sample_models/"):
                assert (REPO / arg).exists(), f"{line}: {arg} is not in the repository"


@pytest.mark.parametrize("name", list(SETTINGS))
def test_the_defaults_shown_are_the_settings_defaults(name):
    settings = SETTINGS[name]
    fields = {f for f in settings.__dataclass_fields__}
    shown_any = 0
    for param in _click(name).params:
        if param.name not in fields:
            continue
        default = default_of(settings, param.name)
        found = re.findall(r"\[default: ([^\]]*)\]", param.help or "")
        assert len(found) == 1, f"{name} --{param.name}: no [default: ...] in its help"
        if default is not None:
            assert found[0] == shown(default), f"{name} {param.opts[0]}: help says {found[0]}, settings {default}"
            shown_any += 1
    assert shown_any


def test_one_meaning_per_flag():
    """A flag shared by commands carries the same help everywhere, except where the command's own
    thing differs in kind (its default, or what is trained), which the help then says."""
    allowed_to_differ = {"--out", "--batch-size", "--seed", "--lr", "--epochs", "--max-accuracy-drop", "--candidates",
                         "--profile", "--limit", "--time-major", "--json",
                         "--max-error-increase", "--max-deviation"}
    seen: dict[str, tuple[str, str]] = {}
    for name in COMMANDS:
        for param in _click(name).params:
            for flag in getattr(param, "opts", []):
                if flag in allowed_to_differ or not flag.startswith("--"):
                    continue
                if flag in seen:
                    assert seen[flag][1] == param.help, f"{flag} means one thing in {seen[flag][0]} and another in {name}"
                else:
                    seen[flag] = (name, param.help)
    arch = {n for n in COMMANDS if any("--arch" in getattr(p, "opts", []) for p in _click(n).params)}
    assert arch == {"inspect", "profile", "train-selector", "export", "finetune"}
    assert all("factory" in p.help for n in arch for p in _click(n).params if "--arch" in getattr(p, "opts", []))


def _readme_command_lines() -> list[str]:
    """Every ``dise ...`` line in the README's code blocks, continuation lines joined."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("dise ") and not line.startswith("dise demo:"):
                lines.append(line)
    return lines


def test_the_readmes_command_lines_parse():
    group = typer.main.get_command(app)
    lines = _readme_command_lines()
    assert len(lines) >= 5
    for line in lines:
        argv = shlex.split(line)
        if argv[1] in ("--version", "--help"):
            continue
        assert argv[1] in group.commands, line
        group.commands[argv[1]].make_context(argv[1], argv[2:])


def test_the_readmes_flags_exist():
    """A flag the README names in backticks is an option of some command (or of a benchmark script)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    flags = {f for f in re.findall(r"`(--[a-z][a-z-]*)", text)}
    known = {opt for name in COMMANDS for p in _click(name).params for opt in getattr(p, "opts", [])}
    known |= {opt.split("/")[-1] for opt in known}
    scripts = "\n".join(p.read_text() for p in (REPO / "benchmarks").glob("*.py"))
    unknown = sorted(f for f in flags if f not in known and f"\"{f}\"" not in scripts and f not in ("--version", "--help", "--no-deps"))  # --no-deps: pip's
    assert not unknown, f"README names flags no command has: {unknown}"
