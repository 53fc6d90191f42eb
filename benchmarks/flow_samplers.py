"""DISE on the two samplers integrated from noise: the flow-matching sampler (sample_models/moons_flow)
and the CNF run as a sampler (sample_models/circles_cnf, sampler.yaml), each against the model as
written (its forward with torchdiffeq's batched odeint at the model's own tolerance).

    python benchmarks/flow_samplers.py                 # CPU, 2 cores: the run time is printed
    python benchmarks/flow_samplers.py --seeds 5 --json samplers.json

For each sampler: `dise profile` on the training noise (the candidates a user would pick: several
Euler / midpoint / RK4 step counts, and the model's own DOPRI5), `dise train-selector` with the
budget `--max-deviation D` (the routed samples within D of the own solver's on average, in the
data's units) for each selector seed, `dise export`, `dise evaluate` on the test noise. Reported, as
mean ± std over seeds:
  - mean NFE (the selector included) and its ratio to the own solver's;
  - the mean deviation from the own solver's samples;
  - the energy distance of the routed samples to the reference solve's (dise's float64 DOPRI5 at
    1e-7) and to held-out data, beside the own forward's, and the floor two finite samples of the
    data show (what "within 10 %" can mean here);
  - wall clock at batch 256: the routed bundle against the model's own forward, alternating in one
    run, and against dise's per-sample DOPRI5 (evaluate's figure).
The targets (issue 13, moons_flow): mean NFE at most 0.5x the own solve with the distribution figure
within 10 % of the baseline's, and the routed bundle at least 1.5x faster at batch 256.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import dise_cli  # noqa: E402
from dise_cli.figures import energy_distance  # noqa: E402
from paper_tables import mean_std, opened, time_against_own  # noqa: E402

TIMED_BATCH = 256
MODELS = REPO_ROOT / "sample_models"


@dataclass(frozen=True)
class Sampler:
    name: str
    folder: Path
    project: str                 # the project file in ``folder``
    heldout: str                 # data of the target distribution, key x (the project file's figure_data)
    floor: str                   # a second finite sample of it, key x: the floor of the energy distance
    max_deviation: float
    candidates: str | None = None   # None: the project file's


SAMPLERS = [
    Sampler("moons_flow", MODELS / "moons_flow", "dise.yaml", "moons_heldout.safetensors", "", 0.01),
    Sampler("circles_cnf sampler", MODELS / "circles_cnf", "sampler.yaml", "test.safetensors", "train.safetensors",
            0.01, "euler:steps=32,rk4:steps=8,rk4:steps=16,rk4:steps=32,dopri5:rtol=1e-05,atol=1e-05"),
]


def floor_of(sampler: Sampler, heldout: torch.Tensor) -> float:
    if sampler.floor:
        other = load_file(str(sampler.folder / sampler.floor))["x"]
    else:                            # moons: a fresh draw of the target, as distribution.py does
        from sample_models.moons_flow.data import sample_moons
        other = sample_moons(512, torch.Generator().manual_seed(4))
    return energy_distance(other[:512], heldout)


def measure(sampler: Sampler, seeds: int, device: str, folder: Path) -> dict:
    project = str(sampler.folder / sampler.project)
    weights = sampler.folder / "weights.safetensors"
    train, test = str(sampler.folder / "noise_train.safetensors"), str(sampler.folder / "noise.safetensors")
    heldout = load_file(str(sampler.folder / sampler.heldout))["x"]
    model = opened(sampler.folder, weights, "noise", device, sampler.project)
    with torch.no_grad():
        own_samples = model.model.run(model.data.x.to(model.device)).cpu()
    profile = folder / f"{sampler.folder.name}.profile.safetensors"
    extra = {"candidates": sampler.candidates} if sampler.candidates else {}
    dise_cli.profile(weights, config=project, data=train, out=profile, device=device, **extra)
    rows = []
    for seed in range(seeds):
        selector, bundle = folder / f"{sampler.folder.name}.{seed}.selector", folder / f"{sampler.folder.name}.{seed}.dise"
        dise_cli.train_selector(weights, profile, config=project, data=train, out=selector, seed=seed, device=device,
                                max_deviation=sampler.max_deviation)
        dise_cli.export(weights, selector, bundle, config=project)
        report = dise_cli.evaluate(bundle, test, config=project, batch_sizes=(TIMED_BATCH,), repeats=3, device=device,
                                   max_deviation=sampler.max_deviation)
        own = time_against_own(bundle, model, TIMED_BATCH)
        dise, base = report["dise"], report["baseline_only"]
        rows.append({"seed": seed, "nfe": dise["nfe_mean"], "baseline_nfe": base["nfe_mean"],
                     "deviation": dise["mean_deviation"], "share": dise["share"],
                     "energy_reference": dise["figure"]["energy_distance"],
                     "baseline_energy_reference": base["figure"]["energy_distance"],
                     "energy_heldout": dise["figure"]["energy_distance_data"],
                     "baseline_energy_heldout": base["figure"]["energy_distance_data"],
                     "speedup_vs_own": own["speedup_vs_own"],
                     "speedup_vs_dopri5": report["timing"][0]["speedup_vs_baseline"],
                     "gate_passed": all(g["passed"] for g in report["gates"])})
        r = rows[-1]
        print(f"  {sampler.name} seed {seed}: NFE {r['nfe']:.2f} (own {r['baseline_nfe']:.2f}), deviation "
              f"{r['deviation']:.4g}, E to held-out {r['energy_heldout']:.4f}, {r['speedup_vs_own']:.2f}x the own "
              f"forward, {r['speedup_vs_dopri5']:.2f}x dise's DOPRI5", file=sys.stderr, flush=True)
    return {"sampler": sampler.name, "seeds": rows, "own_energy_heldout": energy_distance(own_samples, heldout),
            "floor": floor_of(sampler, heldout), "own_solver": model.candidates.integrators[
                model.candidates.baseline].spec, "n_test": len(model.data), "n_heldout": len(heldout)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seeds", type=int, default=3, help="selector seeds per sampler")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    began = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        results = [measure(s, args.seeds, args.device, Path(tmp)) for s in SAMPLERS]
    minutes = (time.perf_counter() - began) / 60
    print(f"DISE on samplers from noise ({args.device}; {args.seeds} selector seeds, mean ± std; {minutes:.1f} min "
          f"in all); budget --max-deviation as listed; energy distances are V-statistics")
    for res in results:
        s = res["seeds"]
        print(f"\n{res['sampler']}: own solver {res['own_solver']}, {res['n_test']} test noise draws, "
              f"{res['n_heldout']} held-out data points")
        print(f"  mean NFE            DISE {mean_std([x['nfe'] for x in s])}, own {s[0]['baseline_nfe']:.2f}; ratio "
              f"{mean_std([x['nfe'] / x['baseline_nfe'] for x in s])}")
        print(f"  mean deviation      {mean_std([x['deviation'] for x in s])} (budget "
              f"{'passed' if all(x['gate_passed'] for x in s) else 'FAILED'} on every seed)")
        print(f"  E to held-out data  DISE {mean_std([x['energy_heldout'] for x in s])}, own solver (dise) "
              f"{s[0]['baseline_energy_heldout']:.4g}, own forward (torchdiffeq) {res['own_energy_heldout']:.4g}; "
              f"ratio to the own forward {mean_std([x['energy_heldout'] / res['own_energy_heldout'] for x in s])}; "
              f"floor {res['floor']:.4g}")
        print(f"  E to reference      DISE {mean_std([x['energy_reference'] for x in s])}, own solver (dise) "
              f"{s[0]['baseline_energy_reference']:.3g}")
        print(f"  x faster @{TIMED_BATCH}       {mean_std([x['speedup_vs_own'] for x in s])} against the own forward "
              f"(torchdiffeq), {mean_std([x['speedup_vs_dopri5'] for x in s])} against dise's per-sample DOPRI5")
        share = {spec: statistics.mean(x["share"][spec] for x in s) for spec in s[0]["share"]}
        print("  shares              " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in share.items() if v > 0))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "minutes": minutes}, indent=2))


if __name__ == "__main__":
    main()
