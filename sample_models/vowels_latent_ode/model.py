"""A Latent ODE classifier for irregularly sampled series (JapaneseVowels), written the way a
torchdiffeq user writes one after Rubanova, Chen and Duvenaud (2019) and their latent_ode code.

One forward does it all:
  1. the recognition network reads the observed frames backwards in time: a GRU cell fed each
     frame's values, its observation mask and the time gap to the frame after it (GRU-Δt, the
     recognition RNN of Rubanova et al.'s RNN-VAE baseline; an ODE-RNN would cost an ODE solve
     per observation), then an MLP from its last hidden state to the mean and std of z0
     (20 dimensions, latent_ode's ``transform_z0``);
  2. z0 is that mean: no sampling, so the forward is deterministic (training samples z0, see
     train.py);
  3. ``odeint(self.func, z0, t, method="dopri5", rtol=1e-3, atol=1e-4)``, latent_ode's solver
     and tolerances, solves the latent ODE over t = [0, 4]; f is an autonomous MLP
     20 -> 64 -> 64 -> 20 with tanh, as latent_ode's ODEFunc;
  4. a linear classifier (latent_ode's ``--linear-classif``) reads z(4), the end of the latent
     trajectory, and gives 9 logits (one per speaker).

x is [N, 29, 25], per slot 12 values, 12 mask entries and the time stamp (see prepare_data.py);
a padded or unobserved slot (mask all 0) leaves the GRU state as it was. Nothing here knows
about dise.
"""
from __future__ import annotations

import torch
from torch import nn
from torchdiffeq import odeint

CHANNELS = 12
CLASSES = 9


class ODEFunc(nn.Module):
    """dz/dt = net(z): autonomous, as latent_ode's ODEFunc."""

    def __init__(self, latent_dim: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, latent_dim),
        )
        self.nfe = 0

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        self.nfe += 1
        return self.net(z)


class EncoderGRU(nn.Module):
    """GRU-Δt read backwards over the observations -> (mean, std) of q(z0 | x), each [N, latent_dim]."""

    def __init__(self, latent_dim: int, rec_hidden: int, channels: int = CHANNELS):
        super().__init__()
        self.channels = channels
        self.gru = nn.GRUCell(2 * channels + 1, rec_hidden)
        self.transform_z0 = nn.Sequential(nn.Linear(rec_hidden, rec_hidden), nn.Tanh(),
                                          nn.Linear(rec_hidden, 2 * latent_dim))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.channels
        values, mask, times = x[..., :c], x[..., c:2 * c], x[..., 2 * c]
        h = x.new_zeros(x.shape[0], self.gru.hidden_size)
        later = x.new_full((x.shape[0],), -1.0)           # time of the next observed frame; -1: none yet
        for i in reversed(range(x.shape[1])):
            seen = mask[:, i].amax(1)
            gap = torch.where(later < 0, torch.zeros_like(later), later - times[:, i])
            step = self.gru(torch.cat([values[:, i], mask[:, i], gap[:, None]], 1), h)
            h = torch.where(seen[:, None] > 0, step, h)
            later = torch.where(seen > 0, times[:, i], later)
        mean, std = self.transform_z0(h).chunk(2, dim=1)
        return mean, nn.functional.softplus(std)


class LatentODEClassifier(nn.Module):
    def __init__(self, latent_dim: int = 20, hidden: int = 64, rec_hidden: int = 64, classif_hidden: int = 0,
                 t_end: float = 4.0, rtol: float = 1e-3, atol: float = 1e-4):
        super().__init__()
        self.encoder = EncoderGRU(latent_dim, rec_hidden)
        self.func = ODEFunc(latent_dim, hidden)
        if classif_hidden:                  # latent_ode's default classifier, one hidden layer
            self.classifier = nn.Sequential(nn.Linear(latent_dim, classif_hidden), nn.ReLU(),
                                            nn.Linear(classif_hidden, CLASSES))
        else:                               # latent_ode's --linear-classif
            self.classifier = nn.Linear(latent_dim, CLASSES)
        self.register_buffer("integration_time", torch.tensor([0.0, t_end]), persistent=False)
        self.rtol = rtol
        self.atol = atol

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z0, _ = self.encoder(x)             # the mean of q(z0 | x)
        return self.classify(z0)

    def classify(self, z0: torch.Tensor) -> torch.Tensor:
        """Solve the latent ODE from z0 over [0, t_end] and classify z(t_end): [N, latent] -> [N, 9]."""
        t = self.integration_time.type_as(z0)
        zt = odeint(self.func, z0, t, method="dopri5", rtol=self.rtol, atol=self.atol)
        return self.classifier(zt[-1])


def build(checkpoint=None, *, latent_dim: int = 20, hidden: int = 64, rec_hidden: int = 64,
          classif_hidden: int = 0, t_end: float = 4.0) -> LatentODEClassifier:
    """The Latent ODE classifier. ``--arch sample_models.vowels_latent_ode.model:build`` points here.

    Args:
        checkpoint: a state dict, or a dict holding one under ``state_dict``, to load; None builds
            the model untrained (dise loads weights.safetensors into it).
        latent_dim, hidden, rec_hidden: sizes of z, of f's hidden layers and of the GRU; smaller
            ones make a tiny version for tests.
        classif_hidden: 0 for the linear classifier (the sample's), else one hidden ReLU layer.
        t_end: the latent solve runs over [0, t_end].
    """
    model = LatentODEClassifier(latent_dim, hidden, rec_hidden, classif_hidden, t_end)
    if checkpoint is not None:
        model.load_state_dict(checkpoint.get("state_dict", checkpoint))
    return model
