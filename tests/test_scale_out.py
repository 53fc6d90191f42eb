"""Issue 14: profiling in shards (`dise profile --shard K/N` + `dise merge`) and under torchrun
(`torchrun --nproc-per-node 2 -m dise_cli profile|evaluate|run`, CPU and gloo) give what one process
gives; bad merges and a failing rank are one line and exit 2, with nothing written."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from dise_cli.cli import app
from dise_cli.profiles import identity, read_profile

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
runner = CliRunner()
BATCH = ["--batch-size", "8"]        # 40 samples: five batches, so shards hold several


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def profile_args(tiny, out, *more):
    return ["profile", tiny["model"], *tiny["arch"], "--data", tiny["data"], *BATCH, "--out", out, *more]


@pytest.fixture
def shards(tiny):
    """A single run and its three shards, written by the CLI as a job array would."""
    d = tiny["dir"]
    res = invoke(*profile_args(tiny, d / "single.st", "--limit", 37, "--seed", 3))
    assert res.exit_code == 0, res.stderr
    for k in (1, 2, 3):
        res = invoke(*profile_args(tiny, d / f"part{k}.st", "--limit", 37, "--seed", 3, "--shard", f"{k}/3"))
        assert res.exit_code == 0, res.stderr
    return d


def test_shards_merge_into_the_single_run(shards):
    parts = [read_profile(shards / f"part{k}.st") for k in (1, 2, 3)]
    assert sum(p.n_samples for p in parts) == 37 and all(p.n_samples > 0 for p in parts)
    assert not set(parts[0].index.tolist()) & set(parts[1].index.tolist())     # disjoint
    res = invoke("merge", shards / "part3.st", shards / "part1.st", shards / "part2.st", "--out",
                 shards / "merged.st", "--json", "-")
    assert res.exit_code == 0, res.stderr
    assert identity(shards / "merged.st") == identity(shards / "single.st")       # header and arrays
    report = json.loads(res.stdout)
    assert report["n_samples"] == 37 and report["world_size"] == 1 and "shard" not in report
    single, merged = read_profile(shards / "single.st"), read_profile(shards / "merged.st")
    # the timing is the shards' seconds added up: per NFE, a weighted mean of theirs
    assert merged.timing["seconds"] == pytest.approx([sum(c) for c in zip(*(read_profile(shards / f"part{k}.st")
                                                                               .timing["seconds"] for k in (1, 2, 3)))])
    assert len(merged.timing["seconds_per_nfe"]) == len(single.candidates)


def test_more_shards_than_batches_merge_too(tiny):
    """A job array larger than the number of batches: the extra shards are empty profiles, and merge
    still gives the single run."""
    d = tiny["dir"]
    assert invoke(*profile_args(tiny, d / "single.st")).exit_code == 0          # 40 samples: 5 batches
    for k in range(1, 8):
        res = invoke(*profile_args(tiny, d / f"s{k}.st", "--shard", f"{k}/7"))
        assert res.exit_code == 0, res.stderr
    assert read_profile(d / "s7.st").n_samples == 0
    res = invoke("merge", *[d / f"s{k}.st" for k in range(1, 8)], "--out", d / "merged.st")
    assert res.exit_code == 0, res.stderr
    assert identity(d / "merged.st") == identity(d / "single.st")


def test_bad_merges_are_exit_2_naming_the_file(tiny, shards):
    d = shards
    res = invoke(*profile_args(tiny, d / "foreign.st", "--limit", 37, "--seed", 4, "--shard", "2/3"))
    assert res.exit_code == 0, res.stderr
    res = invoke(*profile_args(tiny, d / "other_candidates.st", "--limit", 37, "--seed", 3, "--shard", "2/3",
                               "--candidates", "euler:steps=2,dopri5:rtol=1e-3,atol=1e-3"))
    assert res.exit_code == 0, res.stderr
    cases = {
        ("part1.st", "part2.st"): "shard 3/3 of 3 missing",                      # a gap
        ("part1.st", "part2.st", "part2.st", "part3.st"): "each shard once",      # an overlap
        ("part1.st", "foreign.st", "part3.st"): "foreign.st",                     # another seed: another plan
        ("part1.st", "other_candidates.st", "part3.st"): "candidates differs",
        ("single.st", "part1.st"): "is not a shard",
    }
    for files, expected in cases.items():
        res = invoke("merge", *[d / f for f in files], "--out", d / "bad.st")
        assert res.exit_code == 2, (files, res.stderr)
        assert expected in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr
        assert not (d / "bad.st").exists()
    res = invoke(*profile_args(tiny, d / "x.st", "--shard", "4/3"))
    assert res.exit_code == 2 and "--shard" in res.stderr


def test_commands_that_do_not_share_work_refuse_to_run_under_torchrun(tiny, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    res = invoke("train-selector", tiny["model"], *tiny["arch"], "--data", tiny["data"], "--profile", "p.st")
    assert res.exit_code == 2 and "runs in one process" in res.stderr


def test_the_python_api_under_someone_elses_torchrun_runs_whole(tiny, monkeypatch):
    """A user's own program under torchrun that calls dise_cli.profile (on rank 0 only, say) must not
    wait for collectives the other ranks never join: sharing is the command line's, or engaged."""
    import dise_cli
    import torch.distributed as dist
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    run = dise_cli.profile(tiny["model"], arch="tiny_models:build_classifier", code_path=str(TESTS),
                           data=str(tiny["data"]))
    assert run.profile.n_samples == 40 and run.world_size == 1 and not dist.is_initialized()


needs_torchrun = pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun is not installed")


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")      # torchrun's default per rank: the single run is compared at the same
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    return env


def _torchrun(*args, timeout: int = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["torchrun", "--standalone", "--nproc-per-node", "2", "-m", "dise_cli",
                           *[str(a) for a in args]], capture_output=True, text=True, env=_env(), timeout=timeout)


def _alone(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dise_cli", *[str(a) for a in args]], capture_output=True,
                          text=True, env=_env(), timeout=180)


@needs_torchrun
def test_torchrun_profile_evaluate_and_run_equal_one_process(tiny):
    d = tiny["dir"]
    single = _alone(*profile_args(tiny, d / "single.st"))
    assert single.returncode == 0, single.stderr
    ranks = _torchrun(*profile_args(tiny, d / "ranks.st", "--json", d / "ranks.json"))
    assert ranks.returncode == 0, ranks.stderr
    assert identity(d / "ranks.st") == identity(d / "single.st")
    assert json.loads((d / "ranks.json").read_text())["world_size"] == 2
    assert ranks.stdout.count("dise profile:") == 1                  # the table from rank 0 only

    for args in (["train-selector", tiny["model"], *tiny["arch"], "--data", tiny["data"], "--profile", d / "single.st",
                  "--epochs", 3, "--out", d / "s.st"],
                 ["export", tiny["model"], *tiny["arch"], "--selector", d / "s.st", "--out", d / "b.dise"]):
        assert invoke(*args).exit_code == 0
    bundle = ["b.dise", "--data", tiny["data"], "--code-path", TESTS]
    alone = _alone("run", d / bundle[0], *bundle[1:], *BATCH, "--out", d / "alone.pred")
    spread = _torchrun("run", d / bundle[0], *bundle[1:], *BATCH, "--out", d / "spread.pred")
    assert alone.returncode == 0 and spread.returncode == 0, spread.stderr
    a, b = load_file(str(d / "alone.pred")), load_file(str(d / "spread.pred"))
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)   # input order, one file
    assert "on 2 processes" in spread.stdout
    save_file({"x": tiny["x"][:1].contiguous()}, str(d / "one.safetensors"))      # more ranks than inputs
    lone = _torchrun("run", d / bundle[0], "--data", d / "one.safetensors", "--code-path", TESTS, "--out", d / "one.pred")
    assert lone.returncode == 0, lone.stderr
    assert torch.equal(load_file(str(d / "one.pred"))["outputs"], a["outputs"][:1])

    common = ["evaluate", d / bundle[0], *bundle[1:], *BATCH, "--batch-sizes", 8, "--repeats", 1, "--json", "-"]
    one, two = _alone(*common), _torchrun(*common)
    assert one.returncode == 0 and two.returncode == 0, two.stderr
    plain = _torchrun(*[a for a in common[:-2] if a not in BATCH], "--batch-size", 64)
    one, two = json.loads(one.stdout), json.loads(two.stdout)
    assert two["world_size"] == 2 and one["world_size"] == 1
    for key in ("n_samples", "baseline_only", "candidates", "best_single"):
        assert one[key] == two[key], key
    for key in ("accuracy", "auc", "nfe_integrators", "share", "fallbacks"):
        assert one["dise"][key] == two["dise"][key], key
    # one batch of 64 for 40 samples: rank 1 has none, and the figures are still the whole set's
    assert plain.returncode == 0, plain.stderr
    assert "2 processes judged the samples; the times below are rank 0's" in plain.stdout
    assert f"{100 * one['dise']['accuracy']:.2f}%" in plain.stdout


@needs_torchrun
def test_a_failing_rank_fails_the_run_with_one_line_and_no_file(tiny):
    d = tiny["dir"]
    res = _torchrun("profile", tiny["model"], "--arch", "tiny_models:build_classifier_failing_on_rank_1",
                    "--code-path", TESTS, "--data", tiny["data"], *BATCH, "--out", d / "never.st")
    assert res.returncode != 0, res.stderr      # torchrun exits 1 whatever its ranks' codes (rank 1's is 2)
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rank 1 of 2 failed" in errors[0] and "unreadable" in errors[0], res.stderr
    assert not (d / "never.st").exists()
