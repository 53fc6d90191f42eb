"""Every file and report says where it was made (dise, torch and torchdiffeq versions, the device) under
its own ``made_with`` key, which no check compares; files written before that key still read."""
from __future__ import annotations

import contextlib
import io
import json
import zipfile
from importlib import metadata
from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from typer.testing import CliRunner

import dise_cli
from dise_cli.bundle import MANIFEST, write_bundle
from dise_cli.datasets import Dataset
from dise_cli.integrators import parse_candidates
from dise_cli.judging import Judge
from dise_cli.output import Output
from dise_cli.profiles import HEADER_KEY as PROFILE_HEADER, read_profile, write_profile
from dise_cli.profiling import profile_candidates
from dise_cli.provenance import PROVENANCE_KEY, made_with, without_provenance
from dise_cli.reading import read_model
from dise_cli.selector import (HEADER_KEY as SELECTOR_HEADER, Selector, SelectorNet, SelectorSpec, read_selector,
                               selector_bytes, write_selector)

TESTS = str(Path(__file__).resolve().parent)
CPU = torch.device("cpu")
CANDS = "euler:steps=1,rk4:steps=1,dopri5:rtol=1e-3,atol=1e-3"


def header_of(path: Path, key: str) -> dict:
    with safe_open(str(path), framework="pt") as fh:
        return json.loads(fh.metadata()[key])


def profile_run(tiny):
    ode = read_model(tiny["module"], tiny["x"])
    data = Dataset(x=tiny["x"], y=tiny["y"], t=None, name="data", sha256="0" * 64)
    return profile_candidates(ode, data, parse_candidates(CANDS), Judge("classification"), rows=torch.arange(12),
                              batch_size=5, device=CPU, baseline=2)


def a_selector(**kwargs) -> Selector:
    torch.manual_seed(0)
    net = SelectorNet(SelectorSpec.for_shape((4,), 3))
    return Selector(net=net.eval(), candidates=[c.spec for c in parse_candidates(CANDS)], offsets=[0.0, 0.0, 0.0],
                    meta={"baseline": 2, "task": "classification"}, **kwargs)


def test_made_with_names_the_versions_and_the_device():
    record = made_with(CPU)
    assert set(record) == {"dise", "torch", "torchdiffeq", "device"}
    assert all(isinstance(v, str) for v in record.values())
    assert record["dise"] == dise_cli.__version__
    assert record["torch"] == str(torch.__version__)
    assert record["torchdiffeq"] == metadata.version("torchdiffeq")
    assert record["device"] == "cpu" or record["device"].startswith("cpu (")
    assert made_with(None)["device"] == "unknown"
    assert made_with("cpu") == record                     # same machine, same record: files stay byte-identical
    assert without_provenance({"a": 1, PROVENANCE_KEY: record}) == {"a": 1}


def test_profile_records_where_it_was_made(tiny, tmp_path):
    run = profile_run(tiny)
    assert run.profile.made_with == made_with(CPU)
    path = tmp_path / "p.safetensors"
    write_profile(run.profile, path)
    header = header_of(path, PROFILE_HEADER)
    assert header[PROVENANCE_KEY]["torch"] == str(torch.__version__)
    assert header[PROVENANCE_KEY]["device"].startswith("cpu")
    assert PROVENANCE_KEY not in header["meta"]           # the identity checks read meta: it stays out of there
    back = read_profile(path)
    assert back.made_with == header[PROVENANCE_KEY]
    assert back.subset(torch.arange(3)).made_with == back.made_with
    again = tmp_path / "again.safetensors"
    write_profile(back, again)                            # read and written again: the same bytes, the same record
    assert again.read_bytes() == path.read_bytes()


def test_profile_from_another_machine_compares_equal_but_for_made_with(tiny, tmp_path):
    run = profile_run(tiny)
    elsewhere = run.profile.subset(torch.arange(run.profile.n_samples))
    elsewhere.made_with = {**made_with(None), "device": "cuda:0 (Some GPU)"}
    assert run.profile.header() != elsewhere.header()
    assert without_provenance(run.profile.header()) == without_provenance(elsewhere.header())


def test_old_profile_without_made_with_still_reads(tiny, tmp_path):
    old = profile_run(tiny).profile
    old.made_with = None                                  # as written before dise recorded provenance
    path = tmp_path / "old.safetensors"
    write_profile(old, path)
    assert PROVENANCE_KEY not in header_of(path, PROFILE_HEADER)
    back = read_profile(path)
    assert back.made_with is None and torch.equal(back.nfe, old.nfe)
    rewritten = tmp_path / "rewritten.safetensors"
    write_profile(back, rewritten)                        # no record is invented for it
    assert rewritten.read_bytes() == path.read_bytes()
    from safetensors.torch import save_file
    header = old.header()
    header[PROVENANCE_KEY] = "not a mapping"              # a damaged record does not make the profile unreadable
    arrays = {"index": old.index, "nfe": old.nfe, "status": old.status, "correct": old.correct.to(torch.uint8),
              "pred": old.pred}
    save_file(arrays, str(tmp_path / "odd.safetensors"), metadata={PROFILE_HEADER: json.dumps(header)})
    assert read_profile(tmp_path / "odd.safetensors").made_with is None


def test_selector_records_where_it_was_made_and_keeps_it(tmp_path):
    fresh = a_selector()
    assert fresh.made_with["torch"] == str(torch.__version__)          # made now: this process's versions
    path = tmp_path / "s.safetensors"
    write_selector(a_selector(made_with=made_with(CPU)), path)
    header = header_of(path, SELECTOR_HEADER)
    assert header[PROVENANCE_KEY] == made_with(CPU)
    assert PROVENANCE_KEY not in header["meta"]
    back = read_selector(path)
    assert back.made_with == made_with(CPU)
    assert selector_bytes(back) == path.read_bytes()     # copied into a bundle: the same bytes, its own record


def test_old_selector_without_made_with_still_reads(tmp_path):
    path = tmp_path / "old.safetensors"
    write_selector(a_selector(made_with=None), path)
    assert PROVENANCE_KEY not in header_of(path, SELECTOR_HEADER)
    back = read_selector(path)
    assert back.made_with is None and back.candidates == a_selector().candidates
    assert selector_bytes(back) == path.read_bytes()


def test_bundle_manifest_records_the_export_and_old_bundles_load(tiny, tmp_path):
    ode = read_model(tiny["module"], tiny["x"])
    trained_elsewhere = {**made_with(None), "device": "cuda:0 (Some GPU)"}
    path = tmp_path / "m.dise"
    write_bundle(path, ode, tiny["module"].state_dict(), a_selector(made_with=trained_elsewhere), tiny["x"][:4],
                 arch=None)
    bundle = dise_cli.load(path)
    assert bundle.manifest[PROVENANCE_KEY] == made_with(CPU)
    assert bundle.manifest[PROVENANCE_KEY]["torch"] == str(torch.__version__)
    assert bundle.selector.made_with == trained_elsewhere      # the selector member says where it was trained
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    manifest = yaml.safe_load(members[MANIFEST])
    del manifest[PROVENANCE_KEY]                               # as exported before dise recorded provenance
    members[MANIFEST] = yaml.safe_dump(manifest, sort_keys=True).encode()
    old = tmp_path / "old.dise"
    with zipfile.ZipFile(old, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    x = tiny["x"][:8]
    assert torch.allclose(dise_cli.load(old)(x), bundle(x))


def test_output_json_carries_made_with(tmp_path):
    path = tmp_path / "r.json"
    Output(json_path=str(path), device=CPU).json({"schema_version": 1})
    assert json.loads(path.read_text())[PROVENANCE_KEY] == made_with(CPU)
    own = {**made_with(None), "device": "cuda:0 (Some GPU)"}
    Output(json_path=str(path), device=CPU).json({"schema_version": 1, PROVENANCE_KEY: own})
    assert json.loads(path.read_text())[PROVENANCE_KEY] == own          # a document's own record wins
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        Output(json_path="-").json({"schema_version": 1})
    assert json.loads(out.getvalue())[PROVENANCE_KEY]["torch"] == str(torch.__version__)


def test_profile_report_carries_the_profile_files_record(tiny, tmp_path):
    from dise_cli.render import render_profile
    run = profile_run(tiny)
    path = tmp_path / "p.json"
    report = render_profile(Output(quiet=True, json_path=str(path)), run)
    assert report[PROVENANCE_KEY] == run.profile.made_with
    assert json.loads(path.read_text())[PROVENANCE_KEY] == made_with(CPU)


def test_the_cli_records_provenance_in_files_and_reports(tiny):
    from dise_cli.cli import app
    runner = CliRunner()
    d = tiny["dir"]

    def invoke(*args):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.stderr
        return res

    invoke("profile", tiny["model"], "--data", tiny["data"], *tiny["arch"], "--out", d / "p.safetensors",
           "--json", d / "p.json", "--device", "cpu")
    invoke("train-selector", tiny["model"], "--data", tiny["data"], "--profile", d / "p.safetensors",
           *tiny["arch"], "--epochs", 2,
           "--out", d / "s.safetensors", "--json", d / "s.json", "--device", "cpu")
    invoke("export", tiny["model"], *tiny["arch"], "--selector", d / "s.safetensors", "--out", d / "m.dise",
           "--profile", d / "p.safetensors")
    invoke("inspect", tiny["model"], "--data", tiny["data"], *tiny["arch"], "--json", d / "i.json", "--device", "cpu")
    torch_version = str(torch.__version__)
    for report in ("p.json", "s.json", "i.json"):
        record = json.loads((d / report).read_text())[PROVENANCE_KEY]
        assert record["torch"] == torch_version and record["dise"] == dise_cli.__version__, report
    assert json.loads((d / "p.json").read_text())[PROVENANCE_KEY]["device"].startswith("cpu")
    assert header_of(d / "p.safetensors", PROFILE_HEADER)[PROVENANCE_KEY] == made_with(CPU)
    assert header_of(d / "s.safetensors", SELECTOR_HEADER)[PROVENANCE_KEY]["torch"] == torch_version
    assert dise_cli.load(d / "m.dise").manifest[PROVENANCE_KEY] == made_with(CPU)
