"""The routed model: encoder -> first stage -> selector -> one batched solve per chosen integrator
-> decoder, with results put back in input order.

Every candidate integrator starts with the same evaluation, f(t0, h(0)). The routed model computes
it once for the whole batch and hands it to whichever integrator each sample gets, so it costs no
extra NFE. With ``inputs="euler"`` (the default where the model has a separate decoder) the
selector sees what one Euler step over the span answers, decoded: h(0) + (t - t0) f(t0, h(0)), one
decoder call; for a classifier (``euler_probs``) as its class probabilities sorted from the largest,
i.e. how sure the one-step answer is, whatever the class. With ``inputs="h0"`` it sees h(0) alone,
as in the paper.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dise_cli.errors import UsageError
from dise_cli.integrators import Integrator, Status, parse_candidates
from dise_cli.odemodel import Problem
from dise_cli.selector import Selector

INPUTS = ("auto", "h0", "euler", "euler_probs")


def resolve_inputs(ode, requested: str = "auto", task: str = "classification") -> str:
    """What the selector sees: the ``euler`` inputs need a decoder that runs on its own."""
    if requested not in INPUTS:
        raise UsageError(f"--inputs: unknown selector input '{requested}'; valid: {', '.join(INPUTS)}")
    if requested == "auto":
        if not ode.splittable:
            return "h0"
        return "euler_probs" if task == "classification" else "euler"
    if requested.startswith("euler") and not ode.splittable:
        raise UsageError("--inputs euler: this model's decoder cannot run on its own (its forward calls the "
                         "ODE block from inside); use --inputs h0")
    return requested


def first_stage(problem: Problem) -> torch.Tensor:
    """f(t0, h(0)): the first evaluation of every candidate integrator."""
    h0, t = problem.h0, problem.t
    if t.ndim == 2:                     # a grid per sample: a start time per row
        return problem.field.at_times(t[:, 0].to(h0.device, h0.dtype), h0)
    return problem.field(t[0].to(h0.device, h0.dtype), h0)


def selector_inputs(ode, problem: Problem, k1: torch.Tensor, inputs: str) -> torch.Tensor:
    """The selector's input per sample: h(0) (packed, for a tuple state its components flattened side
    by side; never the per-sample tensors f reads, which may be noise drawn anew in every forward), or
    the decoded one-step Euler answer ``[N, F]``."""
    h0 = problem.h0
    if inputs == "h0":
        return ode.layout.own_part(h0)
    t = problem.t
    if t.ndim == 2:                                         # [N, T]: each sample from its own start
        span = (t - t[:, :1]).T.to(h0.device, h0.dtype).reshape(t.shape[1], len(h0), *([1] * (h0.ndim - 1)))
    else:
        span = (t - t[0]).to(h0.device, h0.dtype).view(-1, *([1] * h0.ndim))
    ys = h0.unsqueeze(0) + span * k1.unsqueeze(0)          # Euler from t0 to every grid time
    out = ode.decode(problem, ys).reshape(len(h0), -1).to(h0.dtype)
    if inputs == "euler_probs":
        if out.shape[1] == 1:                              # a single logit: the two class probabilities
            p = torch.sigmoid(out)
            out = torch.cat([p, 1 - p], 1)
            return out.sort(1, descending=True).values
        return out.softmax(1).sort(1, descending=True).values
    return out


@dataclass
class RouteStats:
    """Per sample: the candidate index chosen, the NFE spent, whether it fell back to the baseline
    because the chosen integrator failed (non-finite state, step limit), and the final status."""

    integrator: torch.Tensor   # [N] int64, index into ``candidates``
    nfe: torch.Tensor          # [N] int64
    fallback: torch.Tensor     # [N] bool
    status: torch.Tensor       # [N] uint8
    candidates: list[str]


class RoutedModel(nn.Module):
    """A DISE-enabled model: ``model(x)`` gives the outputs, ``model(x, return_stats=True)`` also a
    ``RouteStats``. ``ode`` is an ``OdeModel`` (or a loaded bundle's equivalent)."""

    per_sample_grid = False         # a bundle made on data with a time grid per sample: every call brings its own

    def __init__(self, ode, selector: Selector):
        super().__init__()
        self.ode = ode
        self.selector = selector
        self.integrators: list[Integrator] = parse_candidates(",".join(selector.candidates), "selector")
        self.baseline = int(selector.meta.get("baseline", len(self.integrators) - 1))
        self.inputs = selector.net.spec.inputs
        # Registered so that .to() and .eval() reach them; exported programs (a bundle's) take
        # neither train() nor eval(), and are placed by the loader.
        module = getattr(ode, "module", None)
        exported = getattr(module, "exported_programs", False)
        self.parts = nn.ModuleList([selector.net] + ([module] if isinstance(module, nn.Module) and not exported else []))

    def forward(self, x: torch.Tensor, *more: torch.Tensor, return_stats: bool = False):
        """Outputs for ``x``, as the model takes it: ``model(x)``, ``model(x, t)`` for a model that takes a
        time grid (one ``[T]``, or ``[N, T]`` per sample for a bare vector field), ``model(noise, labels)``
        for a model of several inputs (and its grid after them)."""
        join = getattr(self.ode, "join", None)
        k = len(join) if join is not None else 1
        if len(more) not in (k - 1, k):
            names = f" ({', '.join(join.names)})" if join is not None else ""
            raise TypeError(f"this model takes {k} input{'s' if k > 1 else ''}{names}, and a time grid after them "
                            f"where it takes one; got {1 + len(more)} arguments")
        if join is not None:
            x = join.pack((x, *more[:k - 1]))
        t = more[k - 1] if len(more) == k else None
        if self.per_sample_grid:
            if t is None or t.ndim not in (1, 2) or len(t) != len(x):
                raise TypeError(f"this model was made for a time grid per sample: call it with its grids [N, T] or "
                                f"end times [N] after the input{'s' if k > 1 else ''}"
                                + ("" if t is None else f" (got a time of shape {tuple(t.shape)} for {len(x)} rows)"))
            if t.ndim == 1:                      # end times: each sample's grid runs from 0 to its own
                t = torch.stack([torch.zeros_like(t), t], dim=1)
        return self.run_packed(x, t, return_stats=return_stats)

    @torch.no_grad()
    def run_packed(self, x: torch.Tensor, t: torch.Tensor | None = None, return_stats: bool = False):
        """Outputs for rows ``x`` as dise's data holds them (a model's several inputs packed, see
        ``dise_cli.inputs``), ``t`` as ``forward`` takes it."""
        stats: list[RouteStats] = []
        out = self.ode.forward_with(x, lambda problem: self.solve(problem, stats), t)
        return (out, stats[0]) if return_stats else out

    def choose(self, problem: Problem) -> tuple[torch.Tensor, torch.Tensor]:
        """The first stage f(t0, h0) and the chosen candidate per sample."""
        k1 = first_stage(problem)
        return k1, self.selector.choose(selector_inputs(self.ode, problem, k1, self.inputs))

    def solve(self, problem: Problem, stats: list | None = None) -> torch.Tensor:
        """States ``[T, N, *state]`` with each sample solved by its chosen integrator."""
        k1, choice = self.choose(problem)
        return self.solve_chosen(problem, k1, choice, stats)

    def solve_chosen(self, problem: Problem, k1: torch.Tensor, choice: torch.Tensor,
                     stats: list | None = None) -> torch.Tensor:
        field, h0, t = problem.field, problem.h0, problem.t
        n = len(h0)
        ys = h0.new_empty(t.shape[-1], *h0.shape)
        nfe = torch.zeros(n, dtype=torch.int64, device=h0.device)
        status = torch.zeros(n, dtype=torch.uint8, device=h0.device)
        fallback = torch.zeros(n, dtype=torch.bool, device=h0.device)
        for k in torch.unique(choice).tolist():                  # one batched solve per integrator
            rows = torch.nonzero(choice == k).flatten()
            sol = self.integrators[k].solve(field, h0[rows], problem.grid_of(rows), f0=k1[rows])
            ys[:, rows], nfe[rows], status[rows] = sol.ys, sol.nfe, sol.status
            failed = sol.status != int(Status.OK)
            if k != self.baseline and bool(failed.any()):
                again = rows[failed]
                sol_b = self.integrators[self.baseline].solve(field, h0[again], problem.grid_of(again), f0=k1[again])
                ys[:, again], status[again] = sol_b.ys, sol_b.status
                nfe[again] += sol_b.nfe - 1                       # the shared first stage counted once
                fallback[again] = True
        if stats is not None:
            nfe += self.ode.calls_after_solve
            stats.append(RouteStats(integrator=choice, nfe=nfe, fallback=fallback, status=status,
                                    candidates=list(self.selector.candidates)))
        return ys
