"""Each fact stated once: the settings a command runs with are its dataclass's defaults unless a
flag or the project file says otherwise, the same for CLI users and Python callers, and every
command honours every project-file key that applies to it."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import yaml
from typer.testing import CliRunner

import dise_cli
from dise_cli import api
from dise_cli.cli import app
from dise_cli.errors import UsageError
from dise_cli.evaluation import EvaluateSettings
from dise_cli.finetuning import FinetuneSettings
from dise_cli.offline import RunSettings
from dise_cli.pipeline import ProfileSettings
from dise_cli.selector_training import TrainSettings


class _Stop(UsageError):
    """Raised once the settings are built: the test needs them, not the run."""


@pytest.fixture
def captured(monkeypatch):
    seen = []
    real = api.settings_from

    def capture(cls, given, config):
        seen.append(real(cls, given, config))
        raise _Stop("stopped after the settings")
    monkeypatch.setattr(api, "settings_from", capture)
    return seen


def _commands(t, *extra):
    model, data = str(t["model"]), str(t["data"])
    return {
        ProfileSettings: ["profile", model, "--data", data, *t["arch"], *extra],
        TrainSettings: ["train-selector", model, "--data", data, "--profile", "p.safetensors", *t["arch"], *extra],
        EvaluateSettings: ["evaluate", "b.dise", "--data", data, *extra],
        RunSettings: ["run", "b.dise", "--data", data, *extra],
        FinetuneSettings: ["finetune", model, "--data", data, *t["arch"], *extra],
    }


def test_cli_runs_with_the_dataclass_defaults(tiny, captured):
    for cls, argv in _commands(tiny).items():
        res = CliRunner().invoke(app, [str(a) for a in argv])
        assert res.exit_code == 2 and "stopped after the settings" in res.stderr, res.stderr
        assert captured[-1] == cls(), f"dise {argv[0]} ran with {captured[-1]}, not {cls()}"


def test_every_command_honours_the_project_file(tiny, captured, tmp_path):
    keys = {"batch_size": 7, "seed": 5, "limit": 11, "task": "regression", "metric": "mae",
            "time_major": False, "candidates": "euler:steps=3,dopri5"}
    config = tmp_path / "dise.yaml"
    config.write_text(yaml.safe_dump(keys))
    for cls, argv in _commands(tiny, "--config", config).items():
        res = CliRunner().invoke(app, [str(a) for a in argv])
        assert res.exit_code == 2, res.stderr
        settings = captured[-1]
        for field in dataclasses.fields(cls):
            if field.name in keys:
                assert getattr(settings, field.name) == keys[field.name], f"dise {argv[0]} ignores {field.name}"


def test_flags_win_over_the_project_file(tiny, captured, tmp_path):
    config = tmp_path / "dise.yaml"
    config.write_text("batch_size: 7\nseed: 5\n")
    res = CliRunner().invoke(app, [str(a) for a in _commands(tiny, "--config", config, "--batch-size", 3)[RunSettings]])
    assert res.exit_code == 2 and captured[-1] == RunSettings(batch_size=3)


def test_python_callers_get_the_same_settings(tiny, captured):
    model, data = str(tiny["model"]), str(tiny["data"])
    arch = {"arch": "tiny_models:build_classifier", "code_path": tiny["arch"][-1]}
    calls = [(ProfileSettings, lambda: dise_cli.profile(model, data=data, **arch)),
             (TrainSettings, lambda: dise_cli.train_selector(model, "p.safetensors", data=data, **arch)),
             (EvaluateSettings, lambda: dise_cli.evaluate("b.dise", data)),
             (RunSettings, lambda: dise_cli.run("b.dise", data)),
             (FinetuneSettings, lambda: dise_cli.finetune(model, data=data, **arch))]
    for cls, call in calls:
        with pytest.raises(_Stop):
            call()
        assert captured[-1] == cls()


def test_an_unknown_python_option_names_itself(tiny):
    with pytest.raises(TypeError, match="epochz"):
        dise_cli.train_selector(str(tiny["model"]), "p.safetensors", epochz=3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_export_honours_the_project_files_device(tiny, tmp_path):
    config = tmp_path / "dise.yaml"
    config.write_text("device: cuda\n")
    res = CliRunner().invoke(app, ["export", str(tiny["model"]), *tiny["arch"], "--selector", "s.safetensors",
                                   "--config", str(config)])
    assert res.exit_code == 2 and "no CUDA GPU" in res.stderr, res.stderr
