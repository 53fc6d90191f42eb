"""A continuous normalizing flow on two concentric circles, written the way a torchdiffeq user writes
one after Chen et al. (2018) and torchdiffeq's ``examples/cnf.py``.

The vector field is the example's: a hypernetwork of t (1 -> 32 -> 32 -> 448, tanh) gives the
weights W, B, U (and a gate G, U * sigmoid(G)) of a one-hidden-layer field of ``width`` = 64 tanh
units, dz/dt = mean_w U_w tanh(W_w . z + B_w). The state is the tuple ``(z, logp)`` and
d logp / dt = -trace(df/dz), computed exactly by autograd inside f (one backward pass per
dimension, the example's ``trace_df_dz``). The base distribution is the example's
p_z0 = N(0, 0.1 I), the flow runs over t in [t0, t1] = [0, 10], and every solve is
``odeint(..., method="dopri5", rtol=1e-5, atol=1e-5)``, the example's setting.

Two models over the same weights (``cnf.hyper_net.*``), as users have them:
  * ``build_density``: forward(x [N, 2]) -> log p(x) [N]: solve (x, 0) from t1 = 10 down to t0 = 0,
    log p(x) = log p_z0(z(t0)) - logp_diff(t0), as the example's training loop does;
  * ``build_sampler``: forward(z0 [N, 2]) -> x [N, 2]: solve (z0, 0) from t0 = 0 to t1 = 10 and
    return z(t1), as the example's visualisation does.

One change to the example's f: it takes a time per row. t may be a float or 0-dim tensor (one time
for the batch, as odeint passes it) or ``[N]`` / ``[N, 1]`` (one time per row); the hypernetwork
then gives each row its own W, B, U and f applies them with a batched matmul. On a scalar t the
result is the example's, operation for operation. ``build_density_scalar_time`` and
``build_sampler_scalar_time`` keep the example's f verbatim (a scalar t only) over the same weights,
for comparison. Nothing here knows about dise.
"""
from __future__ import annotations

import torch
from torch import nn
from torchdiffeq import odeint

DIM = 2
T0, T1 = 0.0, 10.0
PRIOR_VAR = 0.1                      # the example's p_z0 = N(0, 0.1 I)
RTOL = ATOL = 1e-5                   # the example's tolerances


class HyperNetwork(nn.Module):
    """t -> (W [M, d, width], B [M, 1, width], U [M, width, d]); M = 1 for a scalar t, else N."""

    def __init__(self, in_out_dim: int = DIM, hidden_dim: int = 32, width: int = 64):
        super().__init__()
        blocksize = width * in_out_dim
        self.fc1 = nn.Linear(1, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, 3 * blocksize + width)
        self.in_out_dim = in_out_dim
        self.hidden_dim = hidden_dim
        self.width = width
        self.blocksize = blocksize

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        params = t.reshape(-1, 1)                        # [M, 1]
        params = torch.tanh(self.fc1(params))
        params = torch.tanh(self.fc2(params))
        params = self.fc3(params)                        # [M, 3 * blocksize + width]
        bs, w, d = self.blocksize, self.width, self.in_out_dim
        # the example's layout: W [width, d, 1], U and G [width, 1, d], B [width, 1, 1], here per row
        W = params[:, :bs].reshape(-1, w, d).transpose(1, 2)          # [M, d, width]
        U = params[:, bs:2 * bs].reshape(-1, w, d)
        G = params[:, 2 * bs:3 * bs].reshape(-1, w, d)
        U = U * torch.sigmoid(G)                                      # [M, width, d]
        B = params[:, 3 * bs:].reshape(-1, 1, w)                      # [M, 1, width]
        return W, B, U


def trace_df_dz(f: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The exact trace of df/dz per row [N], one backward pass per dimension (the example's, after
    ffjord's ``lib/layers/odefunc.py``). Rows do not mix, so summing over the batch is exact."""
    sum_diag = 0.0
    for i in range(z.shape[1]):
        sum_diag += torch.autograd.grad(f[:, i].sum(), z, create_graph=True)[0].contiguous()[:, i].contiguous()
    return sum_diag.contiguous()


class CNF(nn.Module):
    """f(t, (z, logp)) -> (dz/dt, dlogp/dt), the example's CNF with a time per row allowed."""

    def __init__(self, in_out_dim: int = DIM, hidden_dim: int = 32, width: int = 64):
        super().__init__()
        self.in_out_dim = in_out_dim
        self.hidden_dim = hidden_dim
        self.width = width
        self.hyper_net = HyperNetwork(in_out_dim, hidden_dim, width)
        self.nfe = 0

    def forward(self, t, states):
        self.nfe += 1
        z = states[0]
        batchsize = z.shape[0]
        t = torch.as_tensor(t, dtype=z.dtype, device=z.device)
        with torch.set_grad_enabled(True):
            z.requires_grad_(True)
            W, B, U = self.hyper_net(t)
            if W.shape[0] == 1:                          # one time for the batch: plain matmuls
                h = torch.tanh(z @ W[0] + B[0])                          # [N, width]
                dz_dt = (h @ U[0]) / self.width                          # [N, d]
            else:                                        # a time per row: each row its own weights
                h = torch.tanh(torch.bmm(z.unsqueeze(1), W) + B)         # [N, 1, width]
                dz_dt = torch.bmm(h, U).squeeze(1) / self.width          # [N, d]
            dlogp_z_dt = -trace_df_dz(dz_dt, z).view(batchsize, 1)
        return (dz_dt, dlogp_z_dt)


class ExampleHyperNetwork(HyperNetwork):
    """The example's hypernetwork verbatim: a scalar t only (``t.reshape(1, 1)``); the same weights."""

    def forward(self, t: torch.Tensor) -> list[torch.Tensor]:
        params = t.reshape(1, 1)
        params = torch.tanh(self.fc1(params))
        params = torch.tanh(self.fc2(params))
        params = self.fc3(params)
        params = params.reshape(-1)
        W = params[:self.blocksize].reshape(self.width, self.in_out_dim, 1)
        U = params[self.blocksize:2 * self.blocksize].reshape(self.width, 1, self.in_out_dim)
        G = params[2 * self.blocksize:3 * self.blocksize].reshape(self.width, 1, self.in_out_dim)
        U = U * torch.sigmoid(G)
        B = params[3 * self.blocksize:].reshape(self.width, 1, 1)
        return [W, B, U]


class ExampleCNF(CNF):
    """The example's f verbatim (one time for the whole batch), for comparison with ``CNF``: same
    weights, same values at a scalar t; a solver that needs a time per row must call it per time."""

    def __init__(self, in_out_dim: int = DIM, hidden_dim: int = 32, width: int = 64):
        super().__init__(in_out_dim, hidden_dim, width)
        self.hyper_net = ExampleHyperNetwork(in_out_dim, hidden_dim, width)

    def forward(self, t, states):
        self.nfe += 1
        z = states[0]
        batchsize = z.shape[0]
        with torch.set_grad_enabled(True):
            z.requires_grad_(True)
            W, B, U = self.hyper_net(t)
            Z = torch.unsqueeze(z, 0).repeat(self.width, 1, 1)
            h = torch.tanh(torch.matmul(Z, W) + B)
            dz_dt = torch.matmul(h, U).mean(0)
            dlogp_z_dt = -trace_df_dz(dz_dt, z).view(batchsize, 1)
        return (dz_dt, dlogp_z_dt)


def _prior(like: torch.Tensor) -> torch.distributions.MultivariateNormal:
    """p_z0 = N(0, 0.1 I) in the dtype and on the device of ``like``."""
    d = like.shape[-1]
    return torch.distributions.MultivariateNormal(
        loc=like.new_zeros(d), covariance_matrix=PRIOR_VAR * torch.eye(d, dtype=like.dtype, device=like.device))


class CNFDensity(nn.Module):
    """forward(x [N, 2]) -> log p(x) [N]: solve (x, 0) from t1 to t0, then log p_z0(z(t0)) - logp_diff(t0)."""

    def __init__(self, cnf: CNF, rtol: float = RTOL, atol: float = ATOL):
        super().__init__()
        self.cnf = cnf
        self.rtol = rtol
        self.atol = atol

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp_diff_t1 = torch.zeros(x.shape[0], 1).type_as(x)
        z_t, logp_diff_t = odeint(
            self.cnf,
            (x, logp_diff_t1),
            torch.tensor([T1, T0]).type_as(x),
            atol=self.atol,
            rtol=self.rtol,
            method="dopri5",
        )
        z_t0, logp_diff_t0 = z_t[-1], logp_diff_t[-1]
        return _prior(z_t0).log_prob(z_t0) - logp_diff_t0.view(-1)


class CNFSampler(nn.Module):
    """forward(z0 [N, 2] draws of p_z0) -> x [N, 2]: solve (z0, 0) from t0 to t1 and return z(t1)."""

    def __init__(self, cnf: CNF, rtol: float = RTOL, atol: float = ATOL):
        super().__init__()
        self.cnf = cnf
        self.rtol = rtol
        self.atol = atol

    def forward(self, z0: torch.Tensor) -> torch.Tensor:
        logp_diff_t0 = torch.zeros(z0.shape[0], 1).type_as(z0)
        z_t, _ = odeint(
            self.cnf,
            (z0, logp_diff_t0),
            torch.tensor([T0, T1]).type_as(z0),
            atol=self.atol,
            rtol=self.rtol,
            method="dopri5",
        )
        return z_t[-1]


def _load(model: nn.Module, checkpoint) -> nn.Module:
    """Load a state dict (``cnf.*`` keys), one under ``state_dict``, or the example's checkpoint
    (``func_state_dict``, the CNF's own keys)."""
    if checkpoint is not None:
        if "func_state_dict" in checkpoint:
            model.cnf.load_state_dict(checkpoint["func_state_dict"])
        else:
            model.load_state_dict(checkpoint.get("state_dict", checkpoint))
    return model


def build_density(checkpoint=None, *, hidden_dim: int = 32, width: int = 64) -> CNFDensity:
    """The density model. ``--arch sample_models.circles_cnf.model:build_density`` points here.

    Args:
        checkpoint: a state dict (or one under ``state_dict``, or the example's checkpoint with
            ``func_state_dict``) to load; None builds the model untrained (dise loads
            weights.safetensors into it).
        hidden_dim, width: the hypernetwork's hidden size and the field's number of units (the
            example's 32 and 64; smaller sizes make a tiny version for tests).
    """
    return _load(CNFDensity(CNF(DIM, hidden_dim, width)), checkpoint)


def build_sampler(checkpoint=None, *, hidden_dim: int = 32, width: int = 64) -> CNFSampler:
    """The sampler over the same weights. ``--arch sample_models.circles_cnf.model:build_sampler``.

    Arguments as ``build_density``.
    """
    return _load(CNFSampler(CNF(DIM, hidden_dim, width)), checkpoint)


def build_density_scalar_time(checkpoint=None, *, hidden_dim: int = 32, width: int = 64) -> CNFDensity:
    """The density model with the example's f verbatim (a scalar t only), over the same weights;
    ``--arch sample_models.circles_cnf.model:build_density_scalar_time``. For comparison only."""
    return _load(CNFDensity(ExampleCNF(DIM, hidden_dim, width)), checkpoint)


def build_sampler_scalar_time(checkpoint=None, *, hidden_dim: int = 32, width: int = 64) -> CNFSampler:
    """The sampler with the example's f verbatim (a scalar t only), over the same weights. For comparison only."""
    return _load(CNFSampler(ExampleCNF(DIM, hidden_dim, width)), checkpoint)
