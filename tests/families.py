"""Tiny Neural ODE models written the way public codebases write them, one per model family.

Each family follows the structure of a real codebase (read from its source), at toy size:

1. EncoderThenOdeint    parent module calls odeint(self.func, ...) itself, no block submodule
2. Latent ODE           torchdiffeq examples/latent_ode.py (RNN encoder run backwards, odeint defaults)
3. CNF                  torchdiffeq examples/cnf.py (tuple state (z, logp), hypernetwork, autograd trace)
4. ANODE                EmilienDupont/augmented-neural-odes anode/models.py (zero-padding inside forward)
5. torchdyn             DiffEqML/torchdyn NeuralODE (quickstart style), bare and inside nn.Sequential
6. Flow matching        facebookresearch/flow_matching MLP forward(x, t) + ODESolver.sample;
                        atong01/conditional-flow-matching torch_wrapper
7. HandWrittenEuler     forward runs its own Python Euler loop, no odeint at all

Every ``build_*`` seeds ``torch.manual_seed(0)`` and returns an eval()-mode ``nn.Module``. Data makers use
their own seeded generators; classifier data makers label the data with the model's own predictions.
torchdyn is imported lazily inside the torchdyn builders only. Run this file for a smoke check.
"""
from __future__ import annotations

import copy
import math
import sys

import numpy as np
import torch
import torch.nn as nn
from torchdiffeq import odeint, odeint_adjoint


def _labels(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).argmax(-1)


# ----------------------------------------------------------------------------------------------------------------
# 1. A parent module that calls odeint itself (no ODE-block submodule)
# ----------------------------------------------------------------------------------------------------------------

class MLPODEFunc(nn.Module):
    """f(t, h): time-dependent MLP; t joins the state as torchdiffeq's examples do (ones_like * t)."""

    def __init__(self, dim: int = 4, hidden: int = 16):
        super().__init__()
        self.fc1 = nn.Linear(dim + 1, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.nfe = 0

    def forward(self, t, h):
        self.nfe += 1
        tt = torch.ones_like(h[:, :1]) * t
        return self.fc2(torch.tanh(self.fc1(torch.cat([tt, h], 1))))


class EncoderThenOdeint(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(3, 4)
        self.func = MLPODEFunc(4, 16)
        self.register_buffer("t", torch.tensor([0.0, 1.0]))
        self.dec = nn.Linear(4, 3)

    def forward(self, x):
        return self.dec(odeint(self.func, self.enc(x), self.t, rtol=1e-3, atol=1e-3)[-1])


def build_encoder_then_odeint() -> EncoderThenOdeint:
    torch.manual_seed(0)
    return EncoderThenOdeint().eval()


def build_encoder_then_odeint_shared() -> EncoderThenOdeint:
    """The same model with f registered twice (torchdyn's ODEProblem next to the field, tied weights):
    its state dict holds one tensor under two keys."""
    model = build_encoder_then_odeint()
    model.problem = nn.ModuleDict({"vf": model.func})
    return model


def make_encoder_then_odeint_data(n: int = 64, model: nn.Module | None = None):
    x = torch.randn(n, 3, generator=torch.Generator().manual_seed(0)) * 2.0
    return x, _labels(model or build_encoder_then_odeint(), x)


# ----------------------------------------------------------------------------------------------------------------
# 2. Latent ODE (torchdiffeq examples/latent_ode.py)
# ----------------------------------------------------------------------------------------------------------------

class LatentODEfunc(nn.Module):
    def __init__(self, latent_dim=4, nhidden=16):
        super().__init__()
        self.elu = nn.ELU(inplace=True)
        self.fc1 = nn.Linear(latent_dim, nhidden)
        self.fc2 = nn.Linear(nhidden, nhidden)
        self.fc3 = nn.Linear(nhidden, latent_dim)
        self.nfe = 0

    def forward(self, t, x):
        self.nfe += 1
        out = self.fc1(x)
        out = self.elu(out)
        out = self.fc2(out)
        out = self.elu(out)
        out = self.fc3(out)
        return out


class RecognitionRNN(nn.Module):
    def __init__(self, latent_dim=4, obs_dim=2, nhidden=16, nbatch=1):
        super().__init__()
        self.nhidden = nhidden
        self.nbatch = nbatch
        self.i2h = nn.Linear(obs_dim + nhidden, nhidden)
        self.h2o = nn.Linear(nhidden, latent_dim * 2)

    def forward(self, x, h):
        combined = torch.cat((x, h), dim=1)
        h = torch.tanh(self.i2h(combined))
        out = self.h2o(h)
        return out, h

    def initHidden(self):
        return torch.zeros(self.nbatch, self.nhidden)


class Decoder(nn.Module):
    def __init__(self, latent_dim=4, obs_dim=2, nhidden=16):
        super().__init__()
        self.relu = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(latent_dim, nhidden)
        self.fc2 = nn.Linear(nhidden, obs_dim)

    def forward(self, z):
        out = self.fc1(z)
        out = self.relu(out)
        out = self.fc2(out)
        return out


LATENT_DIM, LATENT_NHIDDEN, RNN_NHIDDEN, OBS_DIM, N_CLASSES, N_OBS = 4, 16, 16, 2, 3, 6


class LatentODEClassifier(nn.Module):
    """RNN backwards over time -> z0 = posterior mean -> odeint (default tolerances) -> dec(final latent)."""

    def __init__(self, func: LatentODEfunc, rec: RecognitionRNN, dec: Decoder, latent_dim: int = LATENT_DIM):
        super().__init__()
        self.func, self.rec, self.dec = func, rec, dec
        self.latent_dim = latent_dim
        self.register_buffer("ts", torch.linspace(0.0, 1.0, N_OBS))

    def forward(self, x):                                  # x: [N, T, obs_dim]
        h = torch.zeros(x.shape[0], self.rec.nhidden).type_as(x)   # (rec.initHidden() fixes the batch size)
        for t in reversed(range(x.size(1))):
            obs = x[:, t, :]
            out, h = self.rec.forward(obs, h)
        qz0_mean, qz0_logvar = out[:, :self.latent_dim], out[:, self.latent_dim:]
        z0 = qz0_mean                                      # no sampling at inference
        pred_z = odeint(self.func, z0, self.ts).permute(1, 0, 2)   # dopri5, rtol 1e-7, atol 1e-9
        return self.dec(pred_z[:, -1])


def _latent_parts():
    torch.manual_seed(0)
    func = LatentODEfunc(LATENT_DIM, LATENT_NHIDDEN)
    rec = RecognitionRNN(LATENT_DIM, OBS_DIM, RNN_NHIDDEN, nbatch=1)
    dec = Decoder(LATENT_DIM, N_CLASSES, LATENT_NHIDDEN)   # the decoder is the 3-class head
    with torch.no_grad():       # stand-in for training: at init the biases swamp the input and every row
        rec.i2h.weight.mul_(2.0)                           # gets the same class
        for b in (rec.h2o.bias, dec.fc1.bias, dec.fc2.bias):
            b.zero_()
    return func, rec, dec


def build_latent_ode() -> LatentODEClassifier:
    return LatentODEClassifier(*_latent_parts()).eval()


def generate_spiral2d(nspiral=8, ntotal=60, nsample=N_OBS, start=0.0, stop=6 * np.pi, noise_std=0.3,
                      a=0.0, b=0.3, seed=0):
    """The example's spiral maker at toy size, with its own RandomState (no plotting)."""
    rs = np.random.RandomState(seed)
    orig_ts = np.linspace(start, stop, num=ntotal)
    samp_ts = orig_ts[:nsample]
    zs_cw = stop + 1.0 - orig_ts
    rs_cw = a + b * 50.0 / zs_cw
    orig_traj_cw = np.stack((rs_cw * np.cos(zs_cw) - 5.0, rs_cw * np.sin(zs_cw)), axis=1)
    zs_cc = orig_ts
    rw_cc = a + b * zs_cc
    orig_traj_cc = np.stack((rw_cc * np.cos(zs_cc) + 5.0, rw_cc * np.sin(zs_cc)), axis=1)
    orig_trajs, samp_trajs = [], []
    for _ in range(nspiral):
        t0_idx = np.argmax(rs.multinomial(1, [1.0 / (ntotal - 2.0 * nsample)] * (ntotal - int(2 * nsample))))
        t0_idx += nsample
        orig_traj = orig_traj_cc if bool(rs.rand() > 0.5) else orig_traj_cw
        orig_trajs.append(orig_traj)
        samp_traj = orig_traj[t0_idx:t0_idx + nsample, :].copy()
        samp_traj += rs.randn(*samp_traj.shape) * noise_std
        samp_trajs.append(samp_traj)
    return np.stack(orig_trajs, axis=0), np.stack(samp_trajs, axis=0), orig_ts, samp_ts


def save_latent_ode_checkpoint(path, numpy_data: bool = False) -> None:
    """torch.save the dict the example saves. The weights are build_latent_ode()'s; the Adam state is a real
    one-step state (the step is taken on copies, so the saved weights still equal build_latent_ode()'s).
    As in the example: orig_trajs, samp_trajs, samp_ts are float tensors, orig_ts stays a float64 numpy array
    (numpy_data=True stores all four as numpy). Either way torch.load needs weights_only=False."""
    func, rec, dec = _latent_parts()
    orig_trajs_np, samp_trajs_np, orig_ts, samp_ts_np = generate_spiral2d(nspiral=8)
    orig_trajs = torch.from_numpy(orig_trajs_np).float()
    samp_trajs = torch.from_numpy(samp_trajs_np).float()
    samp_ts = torch.from_numpy(samp_ts_np).float()

    cfunc, crec, cdec = copy.deepcopy(func), copy.deepcopy(rec), copy.deepcopy(dec)
    params = list(cfunc.parameters()) + list(cdec.parameters()) + list(crec.parameters())
    optimizer = torch.optim.Adam(params, lr=0.01)
    optimizer.zero_grad()
    model = LatentODEClassifier(cfunc, crec, cdec)
    loss = nn.functional.cross_entropy(model(samp_trajs), torch.arange(samp_trajs.shape[0]) % N_CLASSES)
    loss.backward()
    optimizer.step()

    torch.save({
        'func_state_dict': func.state_dict(),
        'rec_state_dict': rec.state_dict(),
        'dec_state_dict': dec.state_dict(),
        'optimizer_state_dict': optimizer.state_dict(),
        'orig_trajs': orig_trajs_np if numpy_data else orig_trajs,
        'samp_trajs': samp_trajs_np if numpy_data else samp_trajs,
        'orig_ts': orig_ts,
        'samp_ts': samp_ts_np if numpy_data else samp_ts,
    }, path)


def build_latent_ode_from_checkpoint(checkpoint: dict) -> LatentODEClassifier:
    """Factory for the loaded checkpoint dict (torch.load(path, weights_only=False): it holds numpy)."""
    torch.manual_seed(0)
    func = LatentODEfunc(LATENT_DIM, LATENT_NHIDDEN)
    rec = RecognitionRNN(LATENT_DIM, OBS_DIM, RNN_NHIDDEN)
    dec = Decoder(LATENT_DIM, N_CLASSES, LATENT_NHIDDEN)
    func.load_state_dict(checkpoint['func_state_dict'])
    rec.load_state_dict(checkpoint['rec_state_dict'])
    dec.load_state_dict(checkpoint['dec_state_dict'])
    return LatentODEClassifier(func, rec, dec).eval()


def make_latent_ode_data(n: int = 48, model: nn.Module | None = None):
    _, samp_trajs, _, _ = generate_spiral2d(nspiral=n, seed=1)
    x = torch.from_numpy(samp_trajs).float() / 5.0          # [n, 6, 2]
    return x, _labels(model or build_latent_ode(), x)


# ----------------------------------------------------------------------------------------------------------------
# 3. CNF (torchdiffeq examples/cnf.py): tuple state (z, logp_z), hypernetwork weights, exact trace by autograd
# ----------------------------------------------------------------------------------------------------------------

class HyperNetwork(nn.Module):
    def __init__(self, in_out_dim, hidden_dim, width):
        super().__init__()
        blocksize = width * in_out_dim
        self.fc1 = nn.Linear(1, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, 3 * blocksize + width)
        self.in_out_dim = in_out_dim
        self.hidden_dim = hidden_dim
        self.width = width
        self.blocksize = blocksize

    def forward(self, t):
        params = t.reshape(1, 1)                           # a scalar t only
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


def trace_df_dz(f, z):
    sum_diag = 0.0
    for i in range(z.shape[1]):
        sum_diag += torch.autograd.grad(f[:, i].sum(), z, create_graph=True)[0].contiguous()[:, i].contiguous()
    return sum_diag.contiguous()


class CNF(nn.Module):
    def __init__(self, in_out_dim=2, hidden_dim=8, width=4):
        super().__init__()
        self.in_out_dim = in_out_dim
        self.hidden_dim = hidden_dim
        self.width = width
        self.hyper_net = HyperNetwork(in_out_dim, hidden_dim, width)

    def forward(self, t, states):
        z = states[0]
        logp_z = states[1]
        batchsize = z.shape[0]
        with torch.set_grad_enabled(True):
            z.requires_grad_(True)
            W, B, U = self.hyper_net(t)
            Z = torch.unsqueeze(z, 0).repeat(self.width, 1, 1)
            h = torch.tanh(torch.matmul(Z, W) + B)
            dz_dt = torch.matmul(h, U).mean(0)
            dlogp_z_dt = -trace_df_dz(dz_dt, z).view(batchsize, 1)
        return (dz_dt, dlogp_z_dt)


class CNFDensity(nn.Module):
    """log p(x): solve (x, 0) from t1=10 back to t0=0, then log p_z0(z_t0) - logp_diff_t0.
    p_z0 is the example's N(0, 0.1 I) (prior_var=1.0 gives a standard normal)."""

    def __init__(self, cnf: nn.Module, prior_var: float = 0.1):
        super().__init__()
        self.cnf = cnf
        self.register_buffer("loc", torch.zeros(2))
        self.register_buffer("covariance_matrix", prior_var * torch.eye(2))

    def forward(self, x):
        p_z0 = torch.distributions.MultivariateNormal(loc=self.loc, covariance_matrix=self.covariance_matrix)
        logp_diff_t1 = torch.zeros(x.shape[0], 1).type_as(x)
        z_t, logp_diff_t = odeint(
            self.cnf,
            (x, logp_diff_t1),
            torch.tensor([10.0, 0.0]).type_as(x),
            atol=1e-5,
            rtol=1e-5,
            method='dopri5',
        )
        z_t0, logp_diff_t0 = z_t[-1], logp_diff_t[-1]
        return p_z0.log_prob(z_t0) - logp_diff_t0.view(-1)          # [N]


class CNFSampler(nn.Module):
    """z(10) from z(0) = z0, as the example's viz does: a float64 numpy linspace of 41 times, float32 states."""

    def __init__(self, cnf: nn.Module, t0: float = 0.0, t1: float = 10.0, viz_timesteps: int = 41):
        super().__init__()
        self.cnf = cnf
        self.t0, self.t1, self.viz_timesteps = t0, t1, viz_timesteps

    def forward(self, z0):
        logp_diff_t0 = torch.zeros(z0.shape[0], 1).type(torch.float32).to(z0.device)
        z_t_samples, _ = odeint(
            self.cnf,
            (z0, logp_diff_t0),
            torch.tensor(np.linspace(self.t0, self.t1, self.viz_timesteps)).to(z0.device),
            atol=1e-5,
            rtol=1e-5,
            method='dopri5',
        )
        return z_t_samples[-1]                                       # [N, 2]


def build_cnf() -> CNF:
    torch.manual_seed(0)
    return CNF(in_out_dim=2, hidden_dim=8, width=4).eval()


def build_cnf_density() -> CNFDensity:
    return CNFDensity(build_cnf()).eval()


def build_cnf_sampler() -> CNFSampler:
    return CNFSampler(build_cnf()).eval()


class RowTimeHyperNetwork(HyperNetwork):
    """Same layers as HyperNetwork (same weights under the same seed), but t may be 0-dim, [N] or [N, 1]."""

    def forward(self, t):
        params = t.reshape(-1, 1)                                    # [M, 1], M = 1 or N
        params = torch.tanh(self.fc1(params))
        params = torch.tanh(self.fc2(params))
        params = self.fc3(params)
        bs, w, d = self.blocksize, self.width, self.in_out_dim
        W = params[:, :bs].reshape(-1, w, d, 1)
        U = params[:, bs:2 * bs].reshape(-1, w, 1, d) * torch.sigmoid(params[:, 2 * bs:3 * bs].reshape(-1, w, 1, d))
        B = params[:, 3 * bs:].reshape(-1, w, 1, 1)
        return [W, B, U]


class CNFRowTime(nn.Module):
    def __init__(self, in_out_dim=2, hidden_dim=8, width=4):
        super().__init__()
        self.in_out_dim = in_out_dim
        self.hidden_dim = hidden_dim
        self.width = width
        self.hyper_net = RowTimeHyperNetwork(in_out_dim, hidden_dim, width)

    def forward(self, t, states):
        z = states[0]
        batchsize = z.shape[0]
        with torch.set_grad_enabled(True):
            z.requires_grad_(True)
            W, B, U = self.hyper_net(t)                              # [M, width, ...]
            h = torch.tanh(torch.matmul(z[:, None, None, :], W) + B)  # [N, width, 1, 1]
            dz_dt = torch.matmul(h, U).mean(1).squeeze(1)           # [N, d]
            dlogp_z_dt = -trace_df_dz(dz_dt, z).view(batchsize, 1)
        return (dz_dt, dlogp_z_dt)


def build_cnf_row_time() -> CNFRowTime:
    torch.manual_seed(0)
    return CNFRowTime(in_out_dim=2, hidden_dim=8, width=4).eval()


def build_cnf_row_time_density() -> CNFDensity:
    return CNFDensity(build_cnf_row_time()).eval()


def make_circles(n: int = 32, seed: int = 0, noise: float = 0.06, factor: float = 0.5) -> torch.Tensor:
    """sklearn.datasets.make_circles-like: half on the unit circle, half on radius `factor`, plus noise."""
    rs = np.random.RandomState(seed)
    n_out = n // 2
    n_in = n - n_out
    a_out = np.linspace(0, 2 * np.pi, n_out, endpoint=False)
    a_in = np.linspace(0, 2 * np.pi, n_in, endpoint=False)
    pts = np.concatenate([np.stack([np.cos(a_out), np.sin(a_out)], 1),
                          factor * np.stack([np.cos(a_in), np.sin(a_in)], 1)])
    pts = pts[rs.permutation(n)] + rs.normal(scale=noise, size=(n, 2))
    return torch.tensor(pts, dtype=torch.float32)


def make_gaussian_noise(n: int = 32, seed: int = 0) -> torch.Tensor:
    return make_noise(n, 2, seed)


# ----------------------------------------------------------------------------------------------------------------
# 4. ANODE (EmilienDupont/augmented-neural-odes anode/models.py)
# ----------------------------------------------------------------------------------------------------------------

MAX_NUM_STEPS = 1000  # Maximum number of steps for ODE solver


class ODEFunc(nn.Module):
    def __init__(self, device, data_dim, hidden_dim, augment_dim=0, time_dependent=False, non_linearity='relu'):
        super().__init__()
        self.device = device
        self.augment_dim = augment_dim
        self.data_dim = data_dim
        self.input_dim = data_dim + augment_dim
        self.hidden_dim = hidden_dim
        self.nfe = 0
        self.time_dependent = time_dependent
        if time_dependent:
            self.fc1 = nn.Linear(self.input_dim + 1, hidden_dim)
        else:
            self.fc1 = nn.Linear(self.input_dim, hidden_dim)
        self.fc2 = nn.Linear(hidden_dim, hidden_dim)
        self.fc3 = nn.Linear(hidden_dim, self.input_dim)
        if non_linearity == 'relu':
            self.non_linearity = nn.ReLU(inplace=True)
        elif non_linearity == 'softplus':
            self.non_linearity = nn.Softplus()

    def forward(self, t, x):
        self.nfe += 1
        if self.time_dependent:
            t_vec = torch.ones(x.shape[0], 1).to(self.device) * t
            out = self.fc1(torch.cat([t_vec, x], 1))
        else:
            out = self.fc1(x)
        out = self.non_linearity(out)
        out = self.fc2(out)
        out = self.non_linearity(out)
        out = self.fc3(out)
        return out


class ODEBlock(nn.Module):
    """Pads zeros (odefunc.augment_dim of them) onto x inside forward, then odeint(_adjoint) with dopri5."""

    def __init__(self, device, odefunc, is_conv=False, tol=1e-3, adjoint=False):
        super().__init__()
        self.adjoint = adjoint
        self.device = device
        self.is_conv = is_conv
        self.odefunc = odefunc
        self.tol = tol

    def forward(self, x, eval_times=None):
        self.odefunc.nfe = 0
        if eval_times is None:
            integration_time = torch.tensor([0, 1]).float().type_as(x)
        else:
            integration_time = eval_times.type_as(x)
        if self.odefunc.augment_dim > 0:
            aug = torch.zeros(x.shape[0], self.odefunc.augment_dim).to(self.device)
            x_aug = torch.cat([x, aug], 1)
        else:
            x_aug = x
        if self.adjoint:
            out = odeint_adjoint(self.odefunc, x_aug, integration_time, rtol=self.tol, atol=self.tol,
                                 method='dopri5', options={'max_num_steps': MAX_NUM_STEPS})
        else:
            out = odeint(self.odefunc, x_aug, integration_time, rtol=self.tol, atol=self.tol,
                         method='dopri5', options={'max_num_steps': MAX_NUM_STEPS})
        if eval_times is None:
            return out[1]
        return out


class ODENet(nn.Module):
    def __init__(self, device, data_dim, hidden_dim, output_dim=1, augment_dim=0, time_dependent=False,
                 non_linearity='relu', tol=1e-3, adjoint=False):
        super().__init__()
        self.device = device
        self.data_dim = data_dim
        self.hidden_dim = hidden_dim
        self.augment_dim = augment_dim
        self.output_dim = output_dim
        self.time_dependent = time_dependent
        self.tol = tol
        odefunc = ODEFunc(device, data_dim, hidden_dim, augment_dim, time_dependent, non_linearity)
        self.odeblock = ODEBlock(device, odefunc, tol=tol, adjoint=adjoint)
        self.linear_layer = nn.Linear(self.odeblock.odefunc.input_dim, self.output_dim)

    def forward(self, x, return_features=False):
        features = self.odeblock(x)
        pred = self.linear_layer(features)
        if return_features:
            return features, pred
        return pred


def build_anode() -> ODENet:
    torch.manual_seed(0)
    return ODENet(torch.device('cpu'), data_dim=2, hidden_dim=16, output_dim=3, augment_dim=2,
                  adjoint=True).eval()


def make_anode_data(n: int = 64, model: nn.Module | None = None):
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0)) * 2.0
    return x, _labels(model or build_anode(), x)


# ----------------------------------------------------------------------------------------------------------------
# 5. torchdyn NeuralODE (quickstart style); torchdyn imported lazily
# ----------------------------------------------------------------------------------------------------------------

def _neural_ode_class():
    """torchdyn.core.NeuralODE, imported only when a torchdyn model is built."""
    from torchdyn.core import NeuralODE
    return NeuralODE


def _torchdyn_field(dim: int = 4, hidden: int = 16) -> nn.Module:
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))   # f(x), torchdyn wraps it


class LastStateHead(nn.Module):
    """Takes the NeuralODE's trajectory [T, N, 4], returns logits from its last point."""

    def __init__(self, dim: int = 4, n_classes: int = 3):
        super().__init__()
        self.linear = nn.Linear(dim, n_classes)

    def forward(self, sol):
        return self.linear(sol[-1])


def build_torchdyn_sequential() -> nn.Sequential:
    NeuralODE = _neural_ode_class()
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), NeuralODE(_torchdyn_field(), sensitivity='adjoint', return_t_eval=False),
                         LastStateHead()).eval()


def build_torchdyn_dopri5() -> nn.Sequential:
    NeuralODE = _neural_ode_class()
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), NeuralODE(_torchdyn_field(), sensitivity='adjoint', solver='dopri5',
                                                    return_t_eval=False), LastStateHead()).eval()


def build_torchdyn_neuralode() -> nn.Module:
    NeuralODE = _neural_ode_class()
    torch.manual_seed(0)
    return NeuralODE(_torchdyn_field(), sensitivity='adjoint', solver='dopri5').eval()   # -> (t_eval, sol)


class TorchdynLearner(nn.Module):
    """torchdyn's tutorials' Learner: ``t_eval, y_hat = self.model(x, self.t_span)``, then a head on the
    last point; here with the fixed-step rk4 over ``linspace(0, 1, 10)``."""

    def __init__(self, solver: str = "rk4"):
        super().__init__()
        NeuralODE = _neural_ode_class()
        self.model = NeuralODE(_torchdyn_field(2, 16), sensitivity="adjoint", solver=solver)
        self.t_span = torch.linspace(0, 1, 10)
        self.head = nn.Linear(2, 3)

    def forward(self, x):
        t_eval, y_hat = self.model(x, self.t_span)
        return self.head(y_hat[-1])


def build_torchdyn_rk4() -> TorchdynLearner:
    torch.manual_seed(0)
    return TorchdynLearner("rk4").eval()


def make_torchdyn_data(n: int = 64, model: nn.Module | None = None):
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0)) * 2.0
    return x, _labels(model or build_torchdyn_sequential(), x)


# ----------------------------------------------------------------------------------------------------------------
# 6. Flow matching
# ----------------------------------------------------------------------------------------------------------------

class Swish(nn.Module):
    def forward(self, x):
        return torch.sigmoid(x) * x


class FMField(nn.Module):
    """facebookresearch/flow_matching examples MLP: forward(x, t), x first; t 0-dim, [N] or [N, 1]."""

    def __init__(self, input_dim: int = 2, time_dim: int = 1, hidden_dim: int = 16):
        super().__init__()
        self.input_dim = input_dim
        self.time_dim = time_dim
        self.hidden_dim = hidden_dim
        self.main = nn.Sequential(
            nn.Linear(input_dim + time_dim, hidden_dim), Swish(),
            nn.Linear(hidden_dim, hidden_dim), Swish(),
            nn.Linear(hidden_dim, input_dim),
        )

    def forward(self, x, t):
        sz = x.size()
        x = x.reshape(-1, self.input_dim)
        t = t.reshape(-1, self.time_dim).float()
        t = t.reshape(-1, 1).expand(x.shape[0], 1)
        h = torch.cat([x, t], dim=1)
        output = self.main(h)
        return output.reshape(*sz)


def build_fm_field() -> FMField:
    torch.manual_seed(0)
    return FMField(input_dim=2, time_dim=1, hidden_dim=16).eval()


class CFMMLP(nn.Module):
    """torchcfm.models.models.MLP: takes [x, t] concatenated (time_varying=True)."""

    def __init__(self, dim, out_dim=None, w=16, time_varying=False):
        super().__init__()
        self.time_varying = time_varying
        if out_dim is None:
            out_dim = dim
        self.net = nn.Sequential(
            nn.Linear(dim + (1 if time_varying else 0), w), nn.SELU(),
            nn.Linear(w, w), nn.SELU(),
            nn.Linear(w, w), nn.SELU(),
            nn.Linear(w, out_dim),
        )

    def forward(self, x):
        return self.net(x)


class TorchCFMWrapper(nn.Module):
    """torchcfm.utils.torch_wrapper: f(t, x, *args, **kwargs); needs a 0-dim t (t.repeat(N)[:, None])."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, t, x, *args, **kwargs):
        return self.model(torch.cat([x, t.repeat(x.shape[0])[:, None]], 1))


def build_torchcfm_field() -> TorchCFMWrapper:
    torch.manual_seed(0)
    return TorchCFMWrapper(CFMMLP(dim=2, w=16, time_varying=True)).eval()


def build_torchcfm_neuralode() -> nn.Module:
    """How torchcfm's tutorials sample: NeuralODE(torch_wrapper(model), dopri5, adjoint, 1e-4, 1e-4)."""
    NeuralODE = _neural_ode_class()
    torch.manual_seed(0)
    field = TorchCFMWrapper(CFMMLP(dim=2, w=16, time_varying=True))
    return NeuralODE(field, solver="dopri5", sensitivity="adjoint", atol=1e-4, rtol=1e-4).eval()


class FMSampler(nn.Module):
    def __init__(self, field: nn.Module):
        super().__init__()
        self.v = field
        self.register_buffer("t", torch.tensor([0.0, 1.0]))

    def forward(self, x0):
        return odeint(lambda t, x: self.v(x, t), x0, self.t, rtol=1e-4, atol=1e-4, method='dopri5')[-1]


def build_fm_sampler() -> FMSampler:
    return FMSampler(build_fm_field()).eval()


class AutocastSampler(nn.Module):
    """A sampler whose velocity net runs under bfloat16 autocast inside f, so f returns bfloat16 for a
    float32 state (as image samplers are run on GPUs)."""

    def __init__(self, method: str, **options):
        super().__init__()
        self.v = build_fm_field()
        self.method, self.options = method, options

    def forward(self, x0):
        def f(t, x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.v(x, t)
        return odeint(f, x0, torch.tensor([0.0, 1.0]), method=self.method, rtol=1e-3, atol=1e-3,
                      options=self.options)[-1]


def build_autocast_sampler() -> AutocastSampler:
    return AutocastSampler("dopri5").eval()


class SelfNoisingSampler(FMSampler):
    """A conditional sampler whose only input is the condition: it draws its own noise,
    ``torch.randn(len(c), 2) + c``, then integrates it."""

    def forward(self, c):
        return super().forward(torch.randn(len(c), 2) + c)


def build_self_noising_sampler() -> SelfNoisingSampler:
    return SelfNoisingSampler(build_fm_field()).eval()


class ImageBytesSampler(FMSampler):
    """A sampler that returns what it shows: ``((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)``."""

    def forward(self, x0):
        x = super().forward(x0)
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def build_image_bytes_sampler() -> ImageBytesSampler:
    return ImageBytesSampler(build_fm_field()).eval()


class DictOutputSampler(FMSampler):
    """A sampler that returns its samples with their path: ``{"samples": x1, "trajectory": xs}``."""

    def forward(self, x0):
        xs = odeint(lambda t, x: self.v(x, t), x0, torch.linspace(0.0, 1.0, 5), rtol=1e-4, atol=1e-4)
        return {"samples": xs[-1], "trajectory": xs}


def build_dict_output_sampler() -> DictOutputSampler:
    return DictOutputSampler(build_fm_field()).eval()


class ModelWrapper(nn.Module):
    """flow_matching.utils.ModelWrapper: forward(x, t, **extras) -> model(x=x, t=t, **extras)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, t, **extras):
        return self.model(x=x, t=t, **extras)


class ODESolver(nn.Module):
    """flow_matching.solver.ODESolver.sample, trimmed: odeint is the module-level bound name."""

    def __init__(self, velocity_model):
        super().__init__()
        self.velocity_model = velocity_model

    def sample(self, x_init, step_size, method="euler", atol=1e-5, rtol=1e-5,
               time_grid=torch.tensor([0.0, 1.0]), return_intermediates=False, enable_grad=False, **model_extras):
        time_grid = time_grid.to(x_init.device)

        def ode_func(t, x):
            return self.velocity_model(x=x, t=t, **model_extras)

        ode_opts = {"step_size": step_size} if step_size is not None else {}
        with torch.set_grad_enabled(enable_grad):
            sol = odeint(ode_func, x_init, time_grid, method=method, options=ode_opts, atol=atol, rtol=rtol)
        return sol if return_intermediates else sol[-1]


class FMSolverSampler(nn.Module):
    """forward(x0) = ODESolver(WrappedModel(vf)).sample(midpoint, step_size 0.05) over [0, 1]."""

    def __init__(self, field: nn.Module, step_size: float = 0.05, method: str = "midpoint"):
        super().__init__()
        self.solver = ODESolver(velocity_model=ModelWrapper(field))
        self.step_size, self.method = step_size, method
        self.register_buffer("time_grid", torch.tensor([0.0, 1.0]))

    def forward(self, x0):
        return self.solver.sample(x_init=x0, step_size=self.step_size, method=self.method,
                                  time_grid=self.time_grid)


def build_fm_solver_sampler() -> FMSolverSampler:
    return FMSolverSampler(build_fm_field()).eval()


class LabelField(nn.Module):
    """A class-conditional velocity v(x, t, label), flow_matching's examples' style: the label picks an
    embedding added to the hidden layer."""

    def __init__(self, input_dim: int = 2, hidden_dim: int = 16, num_classes: int = 4):
        super().__init__()
        self.inp = nn.Linear(input_dim + 1, hidden_dim)
        self.label_emb = nn.Embedding(num_classes, hidden_dim)
        self.out = nn.Sequential(Swish(), nn.Linear(hidden_dim, input_dim))

    def forward(self, x, t, label):
        t = t.reshape(-1, 1).float().expand(x.shape[0], 1)
        return self.out(self.inp(torch.cat([x, t], 1)) + 3.0 * self.label_emb(label))


class ConditionalFMSampler(nn.Module):
    """ODESolver.sample(..., label=labels): the labels ride in ``model_extras``, which the solve's f
    closes over. Each input's label comes from the input (the sign of its first coordinate and of its
    second), so every row has its own and a sample's answer does not depend on its batch."""

    def __init__(self, method: str = "dopri5"):
        super().__init__()
        self.solver = ODESolver(velocity_model=ModelWrapper(LabelField()))
        self.method = method

    def forward(self, x0):
        labels = (x0[:, 0] > 0).long() + 2 * (x0[:, 1] > 0).long()
        return self.solver.sample(x_init=x0, step_size=None, method=self.method, atol=1e-5, rtol=1e-5,
                                  label=labels)


def build_conditional_fm_sampler() -> ConditionalFMSampler:
    torch.manual_seed(0)
    return ConditionalFMSampler().eval()


class KDiffusionLikelihood(nn.Module):
    """k-diffusion's ``log_likelihood`` (k_diffusion/sampling.py) over a tiny Karras denoiser: Rademacher
    noise ``v`` drawn once for the batch and ``s_in`` captured by f's closure, tuple state (x, 0),
    dopri5 from sigma_min to sigma_max."""

    def __init__(self, dim: int = 2, hidden: int = 16, sigma_min: float = 0.05, sigma_max: float = 3.0):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, dim))
        self.sigma_min, self.sigma_max = sigma_min, sigma_max

    def denoise(self, x, sigma):
        c_skip, c_out, c_in = 1 / (sigma ** 2 + 1), sigma / (sigma ** 2 + 1) ** 0.5, 1 / (sigma ** 2 + 1) ** 0.5
        inner = self.net(torch.cat([x * c_in[:, None], (sigma.log() / 4)[:, None]], 1))
        return inner * c_out[:, None] + x * c_skip[:, None]

    def forward(self, x):
        s_in = x.new_ones([x.shape[0]])
        v = torch.randint_like(x, 2) * 2 - 1

        def ode_fn(sigma, x):
            with torch.enable_grad():
                x = x[0].detach().requires_grad_()
                denoised = self.denoise(x, sigma * s_in)
                d = (x - denoised) / sigma
                grad = torch.autograd.grad((d * v).sum(), x)[0]
                d_ll = (v * grad).flatten(1).sum(1)
            return d.detach(), d_ll

        t = x.new_tensor([self.sigma_min, self.sigma_max])
        sol = odeint(ode_fn, (x, x.new_zeros([x.shape[0]])), t, atol=1e-4, rtol=1e-4, method="dopri5")
        latent, delta_ll = sol[0][-1], sol[1][-1]
        return torch.distributions.Normal(0, self.sigma_max).log_prob(latent).flatten(1).sum(1) + delta_ll


def build_kdiffusion_likelihood() -> KDiffusionLikelihood:
    torch.manual_seed(0)
    return KDiffusionLikelihood().eval()


class FFJORDStyleFunc(nn.Module):
    """FFJORD's ODEfunc with the approximate trace: the noise ``self._e`` is drawn on f's first call and
    kept for the solve (``before_odeint`` clears it)."""

    def __init__(self, dim: int = 3, hidden: int = 16):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        self._e = None

    def before_odeint(self):
        self._e = None

    def forward(self, t, states):
        y = states[0]
        if self._e is None:
            self._e = torch.randn_like(y)
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            dy = self.net(y) * torch.cos(t)
            e_dzdx = torch.autograd.grad(dy, y, self._e, create_graph=False)[0]
            divergence = (e_dzdx * self._e).sum(1, keepdim=True)
        return dy.detach(), -divergence.detach()


class FFJORDStyleDensity(nn.Module):
    def __init__(self):
        super().__init__()
        self.odefunc = FFJORDStyleFunc()

    def forward(self, x):
        self.odefunc.before_odeint()
        z, delta_logp = odeint(self.odefunc, (x, torch.zeros(len(x), 1)), torch.tensor([0.0, 1.0]),
                               atol=1e-5, rtol=1e-5, method="dopri5")
        logpz = (-0.5 * z[-1].pow(2) - 0.5 * math.log(2 * math.pi)).sum(1)
        return logpz - delta_logp[-1].squeeze(1)


def build_ffjord_style_density() -> FFJORDStyleDensity:
    torch.manual_seed(0)
    return FFJORDStyleDensity().eval()


class ScalarTimeField(nn.Module):
    """f(t, h) that only works with one time for the whole batch (float(t))."""

    def __init__(self, dim: int = 2, hidden: int = 16):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, t, h):
        return self.fc2(torch.tanh(self.fc1(h))) * math.cos(float(t))


def build_scalar_time_field() -> ScalarTimeField:
    torch.manual_seed(0)
    return ScalarTimeField(2, 16).eval()


class RectifiedFlowMLP(nn.Module):
    """The rectified-flow tutorial's MLP (gnobitab/RectifiedFlow, 2-D): forward(x_input, t) with t
    concatenated as a column, so it takes only a time per row [N, 1]."""

    def __init__(self, input_dim: int = 2, hidden_num: int = 16):
        super().__init__()
        self.fc1 = nn.Linear(input_dim + 1, hidden_num, bias=True)
        self.fc2 = nn.Linear(hidden_num, hidden_num, bias=True)
        self.fc3 = nn.Linear(hidden_num, input_dim, bias=True)
        self.act = lambda x: torch.tanh(x)

    def forward(self, x_input, t):
        inputs = torch.cat([x_input, t], dim=1)
        x = self.act(self.fc1(inputs))
        x = self.act(self.fc2(x))
        return self.fc3(x)


def build_rectified_flow_mlp() -> RectifiedFlowMLP:
    torch.manual_seed(0)
    return RectifiedFlowMLP().eval()


class RectifiedFlowSampler(nn.Module):
    """gnobitab/RectifiedFlow's ``sample_ode`` as a module: an Euler loop of ``N`` steps over [0, 1]
    (``end`` elsewhere), t a column ``ones((batchsize, 1)) * i / N``, no solver call at all.
    ``scale`` multiplies z0 before the loop (something dise cannot see)."""

    def __init__(self, N: int = 20, end: float = 1.0, scale: float = 1.0):
        super().__init__()
        self.model = build_rectified_flow_mlp()
        self.N, self.end, self.scale = N, end, scale

    @torch.no_grad()
    def sample_ode(self, z0, N):
        dt = self.end / N
        traj = []
        z = z0.detach().clone() * self.scale
        batchsize = z.shape[0]
        traj.append(z.detach().clone())
        for i in range(N):
            t = torch.ones((batchsize, 1)) * i * self.end / N
            pred = self.model(z, t)
            z = z.detach().clone() + pred * dt
            traj.append(z.detach().clone())
        return traj

    def forward(self, z0):
        return self.sample_ode(z0, self.N)[-1]


def build_rectified_flow_sampler() -> RectifiedFlowSampler:
    return RectifiedFlowSampler().eval()


def build_rectified_flow_sampler_scaled() -> RectifiedFlowSampler:
    return RectifiedFlowSampler(scale=0.8).eval()


def build_rectified_flow_sampler_half() -> RectifiedFlowSampler:
    return RectifiedFlowSampler(end=0.5).eval()


class ClassicRK4Block(nn.Module):
    """An ODE-Net block that runs its own classic RK4 over ``integration_time`` (``steps`` per interval)."""

    def __init__(self, steps: int = 3):
        super().__init__()
        torch.manual_seed(0)
        self.odefunc = MLPODEFunc(4, 16)
        with torch.no_grad():
            self.odefunc.fc1.weight.mul_(3)       # dynamics strong enough that the two RK4s differ
            self.odefunc.fc2.weight.mul_(3)
        self.integration_time = torch.tensor([0.0, 1.0])
        self.steps = steps

    def forward(self, h):
        t0, t1 = float(self.integration_time[0]), float(self.integration_time[-1])
        dt = (t1 - t0) / self.steps
        for i in range(self.steps):
            t = torch.tensor(t0 + i * dt)
            k1 = self.odefunc(t, h)
            k2 = self.odefunc(t + dt / 2, h + dt / 2 * k1)
            k3 = self.odefunc(t + dt / 2, h + dt / 2 * k2)
            k4 = self.odefunc(t + dt, h + dt * k3)
            h = h + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return h


def build_classic_rk4_classifier() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 4), ClassicRK4Block(), nn.Linear(4, 3)).eval()


def make_noise(n: int = 64, dim: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


class ScipyProbabilityFlow(nn.Module):
    """The score-SDE tutorial's ode_sampler: a VP probability-flow ODE from t = 1 to eps, solved by
    scipy's solve_ivp (RK45) on the batch flattened into one numpy vector."""

    def __init__(self, dim: int = 2, hidden: int = 16, beta_min: float = 0.1, beta_max: float = 20.0):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim + 1, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        self.beta_min, self.beta_max = beta_min, beta_max

    def forward(self, x):
        from scipy import integrate
        shape = x.shape

        def ode_func(t, flat):
            xt = torch.tensor(flat, dtype=torch.float32).reshape(shape)
            vec_t = torch.full((shape[0], 1), float(t))
            beta = self.beta_min + t * (self.beta_max - self.beta_min)
            drift = -0.5 * beta * (xt + self.score(torch.cat([xt, vec_t], 1)))
            return drift.detach().numpy().reshape(-1).astype(np.float64)

        res = integrate.solve_ivp(ode_func, (1.0, 1e-3), x.reshape(-1).numpy().astype(np.float64),
                                  rtol=1e-5, atol=1e-5, method="RK45")
        return torch.tensor(res.y[:, -1], dtype=torch.float32).reshape(shape)


def build_scipy_probability_flow() -> ScipyProbabilityFlow:
    torch.manual_seed(0)
    return ScipyProbabilityFlow().eval()


# ----------------------------------------------------------------------------------------------------------------
# 7. A hand-written Euler loop (no odeint)
# ----------------------------------------------------------------------------------------------------------------

class VelocityMLP(nn.Module):
    """A flow's velocity net called as Flux's is, ``model(img=..., timesteps=...)``: the time a
    ``[B]`` tensor, the state first."""

    def __init__(self, dim: int = 2, hidden: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, img, timesteps):
        return self.net(torch.cat([img, timesteps[:, None].to(img.dtype)], dim=1))


def shifted_schedule(num_steps: int, shift: float = 1.15) -> list[float]:
    """Flux's ``get_schedule``: times from 1 down to 0, moved towards 1 by ``exp(shift)`` (its
    ``time_shift(mu, 1, t)``), as Python floats."""
    t = torch.linspace(1, 0, num_steps + 1, dtype=torch.float64)
    shifted = math.exp(shift) / (math.exp(shift) + (1 / t - 1))
    return shifted.tolist()


class ShiftedScheduleSampler(nn.Module):
    """Flux's ``denoise``: an Euler loop over the shifted schedule from noise at t = 1 to t = 0,
    ``img = img + (t_prev - t_curr) * pred``, no solver call and no time attribute. ``method``
    "midpoint" takes a midpoint step over the same schedule instead (a loop of one's own)."""

    def __init__(self, num_steps: int = 8, method: str = "euler"):
        super().__init__()
        self.model = VelocityMLP()
        self.timesteps = shifted_schedule(num_steps)
        self.method = method

    def forward(self, img):
        for t_curr, t_prev in zip(self.timesteps[:-1], self.timesteps[1:]):
            t_vec = torch.full((img.shape[0],), t_curr, dtype=img.dtype)
            pred = self.model(img=img, timesteps=t_vec)
            if self.method == "midpoint":
                half = (t_prev - t_curr) / 2
                t_mid = torch.full((img.shape[0],), t_curr + half, dtype=img.dtype)
                pred = self.model(img=img + half * pred, timesteps=t_mid)
            img = img + (t_prev - t_curr) * pred
        return img


def build_shifted_schedule_sampler() -> ShiftedScheduleSampler:
    return ShiftedScheduleSampler().eval()


def build_shifted_schedule_midpoint() -> ShiftedScheduleSampler:
    return ShiftedScheduleSampler(num_steps=5, method="midpoint").eval()


class NoiseToDataEuler(nn.Module):
    """minRF's ``sample``: ``for i in range(steps, 0, -1): t = i / steps; z = z - dt * v(z, t)``, from
    noise at t = 1 down to data at 0 (its velocity points from data to noise)."""

    def __init__(self, steps: int = 10):
        super().__init__()
        self.model = VelocityMLP()
        self.steps = steps

    def forward(self, z):
        dt = 1.0 / self.steps
        for i in range(self.steps, 0, -1):
            t = torch.tensor([i / self.steps] * z.shape[0])
            z = z - dt * self.model(z, t)
        return z


def build_noise_to_data_euler() -> NoiseToDataEuler:
    return NoiseToDataEuler().eval()


class HandWrittenEuler(nn.Module):
    def __init__(self, n_steps: int = 10):
        super().__init__()
        self.fc_in = nn.Linear(2, 4)
        self.odefunc = MLPODEFunc(4, 16)
        self.integration_time = torch.tensor([0.0, 1.0])
        self.n_steps = n_steps
        self.fc_out = nn.Linear(4, 3)

    def forward(self, x):
        h = self.fc_in(x)
        t0, t1 = float(self.integration_time[0]), float(self.integration_time[-1])
        dt = (t1 - t0) / self.n_steps
        t = t0
        for _ in range(self.n_steps):
            h = h + dt * self.odefunc(torch.tensor(t), h)
            t += dt
        return self.fc_out(h)


def build_hand_written_euler() -> HandWrittenEuler:
    torch.manual_seed(0)
    return HandWrittenEuler().eval()


def make_hand_written_euler_data(n: int = 64, model: nn.Module | None = None):
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0)) * 2.0
    return x, _labels(model or build_hand_written_euler(), x)


# ----------------------------------------------------------------------------------------------------------------
# Smoke check
# ----------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    import os
    import tempfile
    import time

    def shape(o):
        if isinstance(o, (tuple, list)):
            return "(" + ", ".join(shape(v) for v in o) + ")"
        return str(list(o.shape))

    def run(name, build, data):
        t = time.perf_counter()
        model = build()
        tb = time.perf_counter() - t
        x = data()
        y = None
        if isinstance(x, tuple):
            x, y = x
        t = time.perf_counter()
        with torch.no_grad():
            out = model(x)
        tf = time.perf_counter() - t
        extra = ""
        if y is not None:
            acc = (out.argmax(-1) == y).float().mean().item()
            assert acc == 1.0, (name, acc)
            extra = f"  labels {torch.bincount(y, minlength=3).tolist()} acc {acc:.0%}"
        print(f"{name:28s} in {shape(x):12s} out {shape(out):22s} build {tb * 1e3:6.1f} ms  "
              f"fwd {tf * 1e3:6.1f} ms{extra}")
        return model, x, out

    torch.set_num_threads(1)    # tiny ops: intra-op threads only add stalls on a small, busy machine
    start = time.perf_counter()
    run("encoder_then_odeint", build_encoder_then_odeint, make_encoder_then_odeint_data)
    run("latent_ode", build_latent_ode, make_latent_ode_data)
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "ckpt.pth")
        save_latent_ode_checkpoint(p)
        ckpt = torch.load(p, weights_only=False)
        assert {type(v).__name__ for k, v in ckpt.items() if not k.endswith("state_dict")} == {"Tensor", "ndarray"}
        x, y = make_latent_ode_data()
        with torch.no_grad():
            assert torch.equal(build_latent_ode_from_checkpoint(ckpt)(x).argmax(-1), y)
        save_latent_ode_checkpoint(p, numpy_data=True)
        ckpt = torch.load(p, weights_only=False)
        assert all(type(ckpt[k]).__name__ == "ndarray" for k in ("orig_trajs", "samp_trajs", "orig_ts", "samp_ts"))
        with torch.no_grad():
            assert torch.equal(build_latent_ode_from_checkpoint(ckpt)(x).argmax(-1), y)
        print(f"{'latent_ode checkpoint':28s} keys {sorted(ckpt)}")

    _, _, logp = run("cnf_density", build_cnf_density, make_circles)
    assert torch.isfinite(logp).all() and logp.shape == (32,)
    run("cnf_sampler", build_cnf_sampler, make_gaussian_noise)
    _, _, logp_rt = run("cnf_row_time_density", build_cnf_row_time_density, make_circles)
    assert torch.allclose(logp, logp_rt, atol=1e-4), (logp - logp_rt).abs().max()
    f_rt, z = build_cnf_row_time(), make_circles()
    zero = torch.zeros(32, 1)
    ts = torch.linspace(0, 10, 32)
    with torch.no_grad():
        rows = f_rt(ts, (z, zero))[0]
        each = torch.cat([build_cnf()(ts[i], (z[i:i + 1], zero[i:i + 1]))[0] for i in range(32)])
    assert torch.allclose(rows, each, atol=1e-5)

    run("anode", build_anode, make_anode_data)
    run("fm_sampler", build_fm_sampler, make_noise)
    run("fm_solver_sampler", build_fm_solver_sampler, make_noise)
    run("hand_written_euler", build_hand_written_euler, make_hand_written_euler_data)

    x = make_noise()
    fm, cfm, st = build_fm_field(), build_torchcfm_field(), build_scalar_time_field()
    with torch.no_grad():
        for t in (torch.tensor(0.3), torch.full((64,), 0.3), torch.full((64, 1), 0.3)):
            assert fm(x, t).shape == x.shape
        assert cfm(torch.tensor(0.3), x).shape == x.shape and st(torch.tensor(0.3), x).shape == x.shape
        for t in (torch.full((64,), 0.3), torch.full((64, 1), 0.3)):
            for f in (cfm, st):
                try:
                    f(t, x)
                except (RuntimeError, TypeError, ValueError):
                    pass
                else:
                    raise AssertionError(f"{type(f).__name__} accepted t of shape {list(t.shape)}")
    print(f"{'fields':28s} FMField t in {{[], [N], [N,1]}}; torchcfm / scalar-time fields reject [N] and [N,1]")
    print(f"torchdiffeq families total {time.perf_counter() - start:.2f} s")

    if "--no-torchdyn" not in sys.argv:
        t = time.perf_counter()
        _neural_ode_class()
        print(f"torchdyn import {time.perf_counter() - t:.2f} s")
        t = time.perf_counter()
        run("torchdyn_sequential", build_torchdyn_sequential, make_torchdyn_data)
        run("torchdyn_dopri5", build_torchdyn_dopri5,
            lambda: make_torchdyn_data(model=build_torchdyn_dopri5()))
        run("torchdyn_neuralode", build_torchdyn_neuralode, lambda: make_noise(16, 4))
        run("torchcfm_neuralode", build_torchcfm_neuralode, make_noise)
        print(f"torchdyn families total {time.perf_counter() - t:.2f} s")
    print(f"all {time.perf_counter() - start:.2f} s")


class TwoInputSampler(nn.Module):
    """torchcfm's conditional-MNIST generation as a module people deploy: ``forward(noise, labels)``,
    ``odeint(lambda t, x: v(x, t, labels), noise, [0, 1], dopri5 at 1e-5)``; f reads the labels."""

    def __init__(self):
        super().__init__()
        self.v = LabelField()
        self.guidance = 1.0                  # a plain attribute, not in the weights

    def forward(self, noise, labels):
        return odeint(lambda t, x: self.guidance * self.v(x, t, labels), noise, torch.tensor([0.0, 1.0]), rtol=1e-5,
                      atol=1e-5, method="dopri5")[-1]


def build_two_input_sampler() -> TwoInputSampler:
    torch.manual_seed(0)
    return TwoInputSampler().eval()


class LabelShiftedStart(nn.Module):
    """``forward(noise, labels)`` whose labels move the initial state only (``h0 = noise + e(label)``);
    f is a plain velocity ``v(t, x)``, so the forward exports whole as a program of two inputs."""

    def __init__(self):
        super().__init__()
        self.shift = nn.Embedding(4, 2)
        self.func = MLPODEFunc(dim=2)

    def forward(self, noise, labels):
        return odeint(self.func, noise + self.shift(labels), torch.tensor([0.0, 1.0]), rtol=1e-4, atol=1e-4)[-1]


def build_label_shifted_start() -> LabelShiftedStart:
    torch.manual_seed(0)
    return LabelShiftedStart().eval()


class DiTStyleNet(nn.Module):
    """DiT's and SiT's ``forward_with_cfg``: the batch's first half run twice, with the labels and with
    the null label (the last class), guided, and returned twice."""

    def __init__(self, num_classes: int = 4, input_dim: int = 2):
        super().__init__()
        self.v = LabelField(input_dim=input_dim, num_classes=num_classes + 1)
        self.num_classes = num_classes

    def forward(self, x, t, y):
        return self.v(x, t, y)

    def forward_with_cfg(self, x, t, y, cfg_scale):
        half = x[: len(x) // 2]
        combined = torch.cat([half, half], dim=0)
        model_out = self.forward(combined, t, y)
        cond_eps, uncond_eps = torch.split(model_out, len(model_out) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([half_eps, half_eps], dim=0)


class SiTStyleSampler(nn.Module):
    """SiT's sample.py (flow matching on torchdiffeq): ``z = cat([z, z])``, ``y = cat([y, y_null])``,
    ``odeint`` of ``forward_with_cfg`` with ``t = ones(x.size(0)) * t``, then ``samples.chunk(2)[0]``:
    a state of 2N rows for N inputs, and labels of 2N rows that f reads. ``input_dim``: the latent's
    elements (the net sees it flat); ``atol``/``rtol`` as SiT's sampler passes them (it passes lists)."""

    def __init__(self, input_dim: int = 2, cfg_scale: float = 4.0, atol=1e-6, rtol=1e-6):
        super().__init__()
        self.net = DiTStyleNet(input_dim=input_dim)
        self.cfg_scale, self.atol, self.rtol = cfg_scale, atol, rtol

    def forward(self, z, y):
        n = z.shape[0]
        z = torch.cat([z, z], 0)
        y = torch.cat([y, torch.full((n,), self.net.num_classes, dtype=y.dtype)], 0)

        def _fn(t, x):
            t = torch.ones(x.size(0)).to(x) * t
            flat = self.net.forward_with_cfg(x.reshape(len(x), -1), t, y, self.cfg_scale)
            return flat.reshape(x.shape)
        samples = odeint(_fn, z, torch.tensor([0.0, 1.0]), method="dopri5", atol=self.atol, rtol=self.rtol)[-1]
        samples, _ = samples.chunk(2, dim=0)
        return samples


def build_sit_style_sampler() -> SiTStyleSampler:
    torch.manual_seed(0)
    return SiTStyleSampler().eval()


class DoubledLabelsSampler(SiTStyleSampler):
    """Guidance with the labels doubled before the solve (``y_in = cat([y, y_null])``, 2N rows) and the
    state doubled inside f only."""

    def forward(self, z, y):
        y_in = torch.cat([y, torch.full_like(y, self.net.num_classes)], 0)

        def f(t, x):
            cond, uncond = self.net(torch.cat([x, x]), t, y_in).chunk(2)
            return uncond + self.cfg_scale * (cond - uncond)
        return odeint(f, z, torch.tensor([0.0, 1.0]), method="dopri5", atol=1e-6, rtol=1e-6)[-1]


def build_doubled_labels_sampler() -> DoubledLabelsSampler:
    torch.manual_seed(0)
    return DoubledLabelsSampler().eval()


def build_latent_sit_sampler() -> SiTStyleSampler:
    """SiT on 4-channel latents ``[N, 4, 2, 2]`` (an SD-VAE's channels), the tolerances as SiT passes
    them, one-element lists (``atol=[atol]``)."""
    torch.manual_seed(0)
    return SiTStyleSampler(input_dim=16, cfg_scale=3.0, atol=[1e-6], rtol=[1e-3]).eval()


class GuidanceIntervalSampler(nn.Module):
    """LightningDiT's guidance interval: f guides only where ``t[0]`` (the batch's first row's time) is
    past ``cfg_interval_start``, with t made per row as SiT makes it, ``ones(x.size(0)) * t``."""

    def __init__(self):
        super().__init__()
        self.v = build_fm_field()
        self.g = nn.Linear(2, 2)
        self.cfg_interval_start = 0.11          # LightningDiT samples with an interval from 0.11

    def forward(self, x0):
        def f(t, x):
            t = torch.ones(x.size(0)).to(x) * t
            v = self.v(x, t)
            if t[0] > self.cfg_interval_start:
                v = v + 2.0 * torch.tanh(self.g(x))
            return v
        return odeint(f, x0, torch.tensor([0.0, 1.0]), rtol=1e-7, atol=1e-7)[-1]


def build_guidance_interval_sampler() -> GuidanceIntervalSampler:
    torch.manual_seed(0)
    return GuidanceIntervalSampler().eval()


class UnionTimesRegressor(nn.Module):
    """Irregular series' end times as latent-ODE codes batch them: one solve on the union of the batch's
    times (``torch.unique(t, return_inverse=True)``), each sample's state gathered at its own."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(2, 4)
        self.func = MLPODEFunc(4, 16)
        self.dec = nn.Linear(4, 2)

    def forward(self, x, t):
        t_union, inv = torch.unique(t, sorted=True, return_inverse=True)
        grid = torch.cat([torch.zeros(1, dtype=t.dtype), t_union])
        zs = odeint(self.func, self.enc(x), grid, rtol=1e-4, atol=1e-4)
        return self.dec(zs[inv + 1, torch.arange(x.shape[0])])


def build_union_times_regressor() -> UnionTimesRegressor:
    torch.manual_seed(0)
    return UnionTimesRegressor().eval()


def build_sit_style_sampler_f64() -> SiTStyleSampler:
    return build_sit_style_sampler().double()


def build_doubled_labels_sampler_f64() -> DoubledLabelsSampler:
    return build_doubled_labels_sampler().double()


def make_noise_and_labels(n: int = 24, seed: int = 0, classes: int = 4) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return {"noise": torch.randn(n, 2, generator=gen), "labels": torch.randint(0, classes, (n,), generator=gen)}
