"""Probability-flow samplers over a denoiser D(x, σ), as EDM's ``generate.py`` and k-diffusion's
``sampling.py`` write them: they step dx/dσ = (x - D(x, σ)) / σ from the noise times σ_max down to
σ = 0, Heun (or Euler) steps, the last one Euler. Small nets, the loops as their authors wrote them."""
from __future__ import annotations

import torch
from torch import nn


class Preconditioned(nn.Module):
    """EDM's ``EDMPrecond``: D(x, σ) = c_skip x + c_out F(c_in x, c_noise), F run in float32, σ one per
    row or one for the batch, ``class_labels`` (unused here) passed by the sampler as None."""

    def __init__(self, dim: int = 2, sigma_data: float = 0.5, hidden: int = 32):
        super().__init__()
        self.sigma_data = sigma_data
        self.model = nn.Sequential(nn.Linear(dim + 1, hidden), nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x, sigma, class_labels=None):
        x = x.to(torch.float32)
        sigma = sigma.to(torch.float32).reshape(-1, 1)
        c_skip = self.sigma_data ** 2 / (sigma ** 2 + self.sigma_data ** 2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + self.sigma_data ** 2).sqrt()
        c_in = 1 / (self.sigma_data ** 2 + sigma ** 2).sqrt()
        c_noise = sigma.log() / 4
        f_x = self.model(torch.cat([c_in * x, c_noise.expand(x.shape[0], 1)], dim=1))
        return c_skip * x + c_out * f_x

    def round_sigma(self, sigma):
        return torch.as_tensor(sigma)


class EDMSampler(nn.Module):
    """``edm_sampler`` with S_churn = 0 (deterministic): Karras' ρ schedule, a float64 state started at
    ``latents * t_steps[0]``, Heun steps but for the last, Euler to σ = 0."""

    def __init__(self, num_steps: int = 6, sigma_min: float = 0.002, sigma_max: float = 80.0, rho: float = 7.0):
        super().__init__()
        self.net = Preconditioned()
        self.num_steps, self.sigma_min, self.sigma_max, self.rho = num_steps, sigma_min, sigma_max, rho

    def forward(self, latents, class_labels=None):
        net, num_steps, rho = self.net, self.num_steps, self.rho
        step_indices = torch.arange(num_steps, dtype=torch.float64, device=latents.device)
        t_steps = (self.sigma_max ** (1 / rho) + step_indices / (num_steps - 1)
                   * (self.sigma_min ** (1 / rho) - self.sigma_max ** (1 / rho))) ** rho
        t_steps = torch.cat([net.round_sigma(t_steps), torch.zeros_like(t_steps[:1])])
        x_next = latents.to(torch.float64) * t_steps[0]
        for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
            x_hat, t_hat = x_next, net.round_sigma(t_cur)
            denoised = net(x_hat, t_hat, class_labels).to(torch.float64)
            d_cur = (x_hat - denoised) / t_hat
            x_next = x_hat + (t_next - t_hat) * d_cur
            if i < num_steps - 1:
                denoised = net(x_next, t_next, class_labels).to(torch.float64)
                d_prime = (x_next - denoised) / t_next
                x_next = x_hat + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        return x_next


def get_sigmas_karras(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    ramp = torch.linspace(0, 1, n)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def to_d(x, sigma, denoised):
    return (x - denoised) / sigma.reshape(-1, *[1] * (x.ndim - 1)) if sigma.ndim else (x - denoised) / sigma


class KDiffusionSampler(nn.Module):
    """k-diffusion's ``sample_heun`` (or ``sample_euler``) in float32 over ``get_sigmas_karras``, the
    noise scaled by ``sigmas[0]`` first and σ passed per row (``sigma * s_in``)."""

    def __init__(self, n: int = 5, heun: bool = True, sigma_min: float = 0.03, sigma_max: float = 14.6):
        super().__init__()
        self.model = Preconditioned()
        self.register_buffer("sigmas", get_sigmas_karras(n, sigma_min, sigma_max))
        self.heun = heun

    def forward(self, noise):
        sigmas = self.sigmas
        x = noise * sigmas[0]
        s_in = x.new_ones([x.shape[0]])
        for i in range(len(sigmas) - 1):
            denoised = self.model(x, sigmas[i] * s_in)
            d = to_d(x, sigmas[i], denoised)
            dt = sigmas[i + 1] - sigmas[i]
            if not self.heun or sigmas[i + 1] == 0:
                x = x + d * dt
            else:
                x_2 = x + d * dt
                denoised_2 = self.model(x_2, sigmas[i + 1] * s_in)
                d_2 = to_d(x_2, sigmas[i + 1], denoised_2)
                x = x + (d + d_2) / 2 * dt
        return x


class ScaledTwiceSampler(KDiffusionSampler):
    """Noise scaled by 2 σ_max, a start dise does not guess: refused, never misread."""

    def forward(self, noise):
        return super().forward(2 * noise)


def build_edm_sampler() -> EDMSampler:
    torch.manual_seed(0)
    return EDMSampler(num_steps=6)


def build_edm_sampler_18() -> EDMSampler:
    torch.manual_seed(0)
    return EDMSampler(num_steps=18)


def build_k_heun() -> KDiffusionSampler:
    torch.manual_seed(1)
    return KDiffusionSampler(n=5, heun=True)


def build_k_euler() -> KDiffusionSampler:
    torch.manual_seed(2)
    return KDiffusionSampler(n=8, heun=False)


def build_scaled_twice() -> ScaledTwiceSampler:
    torch.manual_seed(1)
    return ScaledTwiceSampler(n=5)


class Float32Denoiser(Preconditioned):
    """A denoiser that runs in float32 only (no cast of its own): the float64 loop casts for it."""

    def forward(self, x, sigma, class_labels=None):
        assert x.dtype == torch.float32, x.dtype
        return super().forward(x, sigma, class_labels)


class CastingEDMSampler(EDMSampler):
    """EDM's float64 loop around a float32-only denoiser, cast at each call: ``D(x.float(), t.float()).double()``."""

    def __init__(self, num_steps: int = 6):
        super().__init__(num_steps)
        self.net = Float32Denoiser()

    def forward(self, latents):
        t_steps = [float(t) for t in (self.sigma_max ** (1 / self.rho) + torch.arange(self.num_steps, dtype=torch.float64)
                                      / (self.num_steps - 1) * (self.sigma_min ** (1 / self.rho)
                                                                - self.sigma_max ** (1 / self.rho))) ** self.rho] + [0.0]
        denoise = lambda x, t: self.net(x.float(), torch.tensor(t).float()).double()  # noqa: E731
        x_next = latents.to(torch.float64) * t_steps[0]
        for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
            x_hat = x_next
            d_cur = (x_hat - denoise(x_hat, t_cur)) / t_cur
            x_next = x_hat + (t_next - t_cur) * d_cur
            if i < self.num_steps - 1:
                d_prime = (x_next - denoise(x_next, t_next)) / t_next
                x_next = x_hat + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
        return x_next


class NoZeroHeun(KDiffusionSampler):
    """``sample_heun`` over sigmas without the appended 0: Heun all the way to σ_min."""

    def __init__(self, n: int = 5):
        super().__init__(n=n, heun=True)
        self.sigmas = self.sigmas[:-1].clone()


class FloatSigmaDenoiser(Preconditioned):
    """σ taken as a Python number (``math.log``), as hand-written toy code does; undefined at 0."""

    def forward(self, x, sigma, class_labels=None):
        import math
        s = float(sigma)
        return super().forward(x, torch.full((x.shape[0],), math.exp(math.log(s)), dtype=torch.float32))


class FloatSigmaEuler(KDiffusionSampler):
    """``sample_euler`` handing D σ as a Python float."""

    def __init__(self):
        super().__init__(n=6, heun=False)
        self.model = FloatSigmaDenoiser()

    def forward(self, noise):
        sigmas = self.sigmas.tolist()
        x = noise * sigmas[0]
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            x = x + (x - self.model(x, s)) / s * (s_next - s)
        return x


def build_casting_edm() -> CastingEDMSampler:
    torch.manual_seed(0)
    return CastingEDMSampler()


def build_no_zero_heun() -> NoZeroHeun:
    torch.manual_seed(1)
    return NoZeroHeun()


def build_float_sigma_euler() -> FloatSigmaEuler:
    torch.manual_seed(2)
    return FloatSigmaEuler()
