"""Energy distances of the moons sampler's samples, per integrator, to the reference solve and to the data.

For each candidate spec (dise's syntax; by default the candidates of dise.yaml) it solves the test
noise (noise.safetensors, 512 draws) with dise's own per-sample integrator and reports:
  - NFE per sample (mean, max) and the mean Euclidean distance of each sample to the reference's
    (what ``dise profile --metric l2`` calls Γ);
  - the energy distance to the reference samples: the same noise solved in float64 by DOPRI5 at
    rtol = atol = 1e-7 (dise's reference solve);
  - the energy distance to the 1024 held-out moons (moons_heldout.safetensors).
Two more rows give the scale: the model's own forward (torchdiffeq's batched odeint) and the
reference itself, and a floor: a fresh set of 512 moons (seed 4) against the held-out ones, the
distance two finite samples of the same distribution show.

    python -m sample_models.moons_flow.distribution
    python -m sample_models.moons_flow.distribution euler:steps=8 rk4:steps=2
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file

from sample_models.moons_flow.data import sample_moons
from sample_models.moons_flow.model import build

HERE = Path(__file__).resolve().parent
REFERENCE = "dopri5:rtol=1e-7,atol=1e-7"
FLOOR_SEED = 4


def energy_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Székely's energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| between the sample sets ``a`` [N, D]
    and ``b`` [M, D], exact on the samples (V-statistic: every pair, the zero diagonals included, as
    dise's ``--figure energy``); in the samples' units, 0 when the two sets coincide."""
    a, b = a.double(), b.double()
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def solve(field, model: torch.nn.Module, integrator, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples [N, 2], NFE per sample [N]) of ``x0`` by one of dise's integrators, over the model's grid."""
    with torch.no_grad():
        sol = integrator.solve(field, x0, model.t.to(x0))
    return sol.final, sol.nfe


def main() -> None:
    # dise only here: train.py imports energy_distance and runs without dise.
    from dise_cli.integrators import TimeMode, VectorField, parse_candidates

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="*", help="candidate specs (default: dise.yaml's candidates)")
    args = parser.parse_args()
    text = ",".join(args.candidates) or yaml.safe_load((HERE / "dise.yaml").read_text())["candidates"]
    integrators = parse_candidates(text)

    torch.set_num_threads(1)
    model = build(load_file(str(HERE / "weights.safetensors"))).eval()
    noise = load_file(str(HERE / "noise.safetensors"))["x"]
    heldout = load_file(str(HERE / "moons_heldout.safetensors"))["x"]
    model64 = build(load_file(str(HERE / "weights.safetensors"))).double().eval()
    # The field takes a time per row ([N]), so dise's adaptive solvers pass one call per stage.
    field = VectorField(model.v, TimeMode.VECTOR)
    (ref_integrator,) = parse_candidates(REFERENCE)
    reference, ref_nfe = solve(VectorField(model64.v, TimeMode.VECTOR), model64, ref_integrator, noise.double())
    with torch.no_grad():
        own = model(noise)
    floor = energy_distance(sample_moons(len(noise), torch.Generator().manual_seed(FLOOR_SEED)), heldout)

    print(f"{len(noise)} test noise draws; reference: {REFERENCE} in float64 (NFE mean {ref_nfe.double().mean():.1f}); "
          f"held-out moons: {len(heldout)}; energy distance V-statistic")
    print(f"{'integrator':<32}{'NFE mean':>9}{'max':>5}{'mean |x - x_ref|':>18}{'E to reference':>16}"
          f"{'E to moons':>12}")
    for integrator in integrators:
        spec = integrator.spec
        x, nfe = solve(field, model, integrator, noise)
        gamma = (x.double() - reference).norm(dim=1).mean()
        print(f"{spec:<32}{nfe.double().mean():>9.2f}{int(nfe.max()):>5}{gamma:>18.2e}"
              f"{energy_distance(x, reference):>16.2e}{energy_distance(x, heldout):>12.4f}")
    gamma = (own.double() - reference).norm(dim=1).mean()
    print(f"{'own forward (torchdiffeq, batch)':<32}{'':>9}{'':>5}{gamma:>18.2e}"
          f"{energy_distance(own, reference):>16.2e}{energy_distance(own, heldout):>12.4f}")
    print(f"{'reference (' + REFERENCE + ')':<32}{'':>9}{'':>5}{'':>18}{'':>16}{energy_distance(reference, heldout):>12.4f}")
    print(f"floor: {len(noise)} fresh moons (seed {FLOOR_SEED}) against the held-out moons: {floor:.4f}")


if __name__ == "__main__":
    main()
