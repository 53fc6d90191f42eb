"""Class-conditional samplers written as loops, as their users write them: the loop hands f the labels
at every call (EDM's ``net(x_hat, t_hat, class_labels)``, a rectified flow's ``model(z, t, y)``), the
labels one of the model's inputs (``forward(noise, labels)``). Small nets whose output depends on the
label strongly, so that a row given another row's label is far off."""
from __future__ import annotations

import torch
from torch import nn

from denoisers import EDMSampler, Preconditioned

CLASSES = 4


class LabelledDenoiser(Preconditioned):
    """EDM's ``EDMPrecond`` with ``label_dim``: one-hot class labels mapped into F's input."""

    def __init__(self, dim: int = 2):
        super().__init__(dim)
        self.map_label = nn.Linear(CLASSES, 1, bias=False)
        nn.init.normal_(self.map_label.weight, std=2.0)

    def forward(self, x, sigma, class_labels=None):
        out = super().forward(x, sigma)
        labels = torch.zeros(x.shape[0], CLASSES) if class_labels is None else class_labels.to(torch.float32)
        return out + self.map_label(labels) * sigma.to(torch.float32).reshape(-1, 1) / (1 + sigma.reshape(-1, 1))


class ConditionalEDM(EDMSampler):
    """``edm_sampler(net, latents, class_labels)``: labels one-hot, a second input of the model."""

    def __init__(self, num_steps: int = 6):
        super().__init__(num_steps)
        self.net = LabelledDenoiser()

    def forward(self, latents, class_labels):
        return super().forward(latents, class_labels)


class LabelledVelocity(nn.Module):
    """A class-conditional velocity v(x, t, y): y integer class indices, embedded."""

    def __init__(self, dim: int = 2, hidden: int = 32):
        super().__init__()
        self.embed = nn.Embedding(CLASSES, hidden)
        self.inp = nn.Linear(dim + 1, hidden)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.normal_(self.embed.weight, std=1.0)

    def forward(self, x, t, y):
        t = t.reshape(-1, 1).expand(x.shape[0], 1).to(x.dtype)
        return self.out(self.inp(torch.cat([x, t], 1)) + self.embed(y))


class ConditionalRectifiedFlow(nn.Module):
    """rectified flow's ``sample_ode`` with labels: Euler from noise at t = 0 to 1, ``model(z, t, y)``."""

    def __init__(self, steps: int = 8):
        super().__init__()
        self.model = LabelledVelocity()
        self.steps = steps

    def forward(self, z, y):
        dt = 1.0 / self.steps
        for i in range(self.steps):
            t = torch.ones(z.shape[0]) * i / self.steps
            z = z + self.model(z, t, y) * dt
        return z


class EmbeddingFirst(nn.Module):
    """The labels embedded before the loop, the embedding handed to f: a block of its own
    (``self.sampler(noise, context)``), its f ``net(x, t, context)`` with a float context per row."""

    class Net(nn.Module):
        def __init__(self, dim: int = 2, hidden: int = 32):
            super().__init__()
            self.inp = nn.Linear(dim + 1, hidden)
            self.out = nn.Sequential(nn.Tanh(), nn.Linear(hidden, dim))

        def forward(self, x, t, context):
            return self.out(self.inp(torch.cat([x, t.expand(x.shape[0], 1)], 1)) + context)

    class Sampler(nn.Module):
        def __init__(self, steps: int):
            super().__init__()
            self.net = EmbeddingFirst.Net()
            self.steps = steps

        def forward(self, x, context):
            dt = 1.0 / self.steps
            for i in range(self.steps):          # midpoint steps
                t = torch.tensor([[i * dt]])
                mid = x + 0.5 * dt * self.net(x, t, context)
                x = x + dt * self.net(mid, t + 0.5 * dt, context)
            return x

    def __init__(self, steps: int = 4):
        super().__init__()
        self.embed = nn.Embedding(CLASSES, 32)
        nn.init.normal_(self.embed.weight, std=1.0)
        self.sampler = EmbeddingFirst.Sampler(steps)

    def forward(self, noise, labels):
        return self.sampler(noise, self.embed(labels))


class GuidedByTwoCalls(ConditionalRectifiedFlow):
    """Classifier-free guidance as two calls of f a step (with the labels and with a null class): the ODE's
    f is the guided velocity, which no module of the model computes. Refused, never misread."""

    def forward(self, z, y):
        dt, null = 1.0 / self.steps, torch.zeros_like(y)
        for i in range(self.steps):
            t = torch.ones(z.shape[0]) * i / self.steps
            v_cond, v_null = self.model(z, t, y), self.model(z, t, null)
            z = z + (v_null + 2.0 * (v_cond - v_null)) * dt
        return z


class GuidedByDoubling(ConditionalRectifiedFlow):
    """Classifier-free guidance by batch doubling around f (SiT's ``torch.cat([z, z])``). Refused."""

    def forward(self, z, y):
        dt, null = 1.0 / self.steps, torch.zeros_like(y)
        for i in range(self.steps):
            t = torch.ones(2 * z.shape[0]) * i / self.steps
            cond, uncond = self.model(torch.cat([z, z]), t, torch.cat([y, null])).chunk(2)
            z = z + (uncond + 2.0 * (cond - uncond)) * dt
        return z


def build_conditional_edm() -> ConditionalEDM:
    torch.manual_seed(3)
    return ConditionalEDM(num_steps=6)


def build_conditional_rectified_flow() -> ConditionalRectifiedFlow:
    torch.manual_seed(4)
    return ConditionalRectifiedFlow()


def build_embedding_first() -> EmbeddingFirst:
    torch.manual_seed(5)
    return EmbeddingFirst()


def build_guided_by_two_calls() -> GuidedByTwoCalls:
    torch.manual_seed(4)
    return GuidedByTwoCalls()


def build_guided_by_doubling() -> GuidedByDoubling:
    torch.manual_seed(4)
    return GuidedByDoubling()


def labelled_noise(n: int, seed: int = 0, one_hot: bool = False) -> dict[str, torch.Tensor]:
    """Data for these models: noise ``x`` [n, 2] and labels (class indices, or one-hot float32)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    return {"x": torch.randn(n, 2, generator=g),
            "labels": nn.functional.one_hot(labels, CLASSES).to(torch.float32) if one_hot else labels}


class GuidedUncondFirst(ConditionalRectifiedFlow):
    """SD3's pipeline's order: ``noise_pred_uncond, noise_pred_text = noise_pred.chunk(2)``, the null
    class first, a guidance scale of 4.5, midpoint steps."""

    def forward(self, z, y):
        dt, null = 1.0 / self.steps, torch.zeros_like(y)

        def guided(x, t):
            uncond, cond = self.model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([null, y])).chunk(2)
            return uncond + 4.5 * (cond - uncond)
        for i in range(self.steps // 2):
            t = torch.ones(z.shape[0]) * 2 * i * dt
            mid = z + guided(z, t) * dt
            z = z + guided(mid, t + dt) * 2 * dt
        return z


class GuidedInAnInterval(ConditionalRectifiedFlow):
    """Guidance from half way on (t >= 0.5): f's calls are doubled for the later steps, plain before."""

    def forward(self, z, y):
        dt, null = 1.0 / self.steps, torch.zeros_like(y)
        for i in range(self.steps):
            t = torch.ones(z.shape[0]) * i / self.steps
            if i >= self.steps // 2:
                cond, uncond = self.model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
                v = uncond + 2.0 * (cond - uncond)
            else:
                v = self.model(z, t, y)
            z = z + v * dt
        return z


def build_guided_uncond_first() -> GuidedUncondFirst:
    torch.manual_seed(4)
    return GuidedUncondFirst()


def build_guided_in_an_interval() -> GuidedInAnInterval:
    torch.manual_seed(4)
    return GuidedInAnInterval()


class TupleVelocity(LabelledVelocity):
    """REPA's SiT: ``forward(x, t, y)`` returns ``(x, zs)``, the projector's features beside the velocity."""

    def forward(self, x, t, y):
        v = super().forward(x, t, y)
        return v, [torch.tanh(v[:, :1])]


class REPAEulerSampler(nn.Module):
    """REPA's ``euler_sampler``: a float64 loop from t = 1 to 0, the model in float32 called with keywords,
    ``model(x.to(float32), t.to(float32), y=y)[0]``, classifier-free guidance by batch doubling, the null
    class 0, guidance over the whole interval."""

    def __init__(self, num_steps: int = 6, cfg_scale: float = 1.8, guidance_low: float = 0.0,
                 guidance_high: float = 1.0):
        super().__init__()
        self.model = TupleVelocity()
        self.num_steps, self.cfg_scale = num_steps, cfg_scale
        self.guidance_low, self.guidance_high = guidance_low, guidance_high

    def forward(self, latents, y):
        y_null = torch.zeros_like(y)
        t_steps = torch.linspace(1, 0, self.num_steps + 1, dtype=torch.float64)
        x_next = latents.to(torch.float64)
        for t_cur, t_next in zip(t_steps[:-1], t_steps[1:]):
            x_cur = x_next
            guided = self.cfg_scale > 1.0 and self.guidance_low <= t_cur <= self.guidance_high
            if guided:
                model_input, y_cur = torch.cat([x_cur] * 2, dim=0), torch.cat([y, y_null], dim=0)
            else:
                model_input, y_cur = x_cur, y
            time_input = torch.ones(model_input.size(0), dtype=torch.float64) * t_cur
            d_cur = self.model(model_input.to(torch.float32), time_input.to(torch.float32), y=y_cur)[0].to(torch.float64)
            if guided:
                d_cur_cond, d_cur_uncond = d_cur.chunk(2)
                d_cur = d_cur_uncond + self.cfg_scale * (d_cur_cond - d_cur_uncond)
            x_next = x_cur + (t_next - t_cur) * d_cur
        return x_next


def build_repa_euler() -> REPAEulerSampler:
    torch.manual_seed(6)
    return REPAEulerSampler()


def build_repa_guidance_interval() -> REPAEulerSampler:
    """REPA's recommended sampling: guidance only where t <= 0.7 (``--guidance-high 0.7``), 10 steps."""
    torch.manual_seed(6)
    return REPAEulerSampler(num_steps=10, guidance_high=0.7)


class EDMGuidanceInterval(nn.Module):
    """EDM's Heun sampler with guidance limited to σ in [0.3, 5] (Kynkäänniemi et al.): each call of the
    denoiser guided by its own σ, so the guided calls begin with a step's second call."""

    def __init__(self, num_steps: int = 18, weight: float = 2.0, low: float = 0.3, high: float = 5.0):
        super().__init__()
        self.net = LabelledDenoiser()
        self.num_steps, self.weight, self.low, self.high = num_steps, weight, low, high

    def denoise(self, x, sigma, labels):
        if not self.low <= float(sigma) <= self.high:
            return self.net(x, sigma, labels).to(torch.float64)
        cond, uncond = self.net(torch.cat([x, x]), sigma, torch.cat([labels, torch.zeros_like(labels)])).chunk(2)
        return (uncond + self.weight * (cond - uncond)).to(torch.float64)

    def forward(self, latents, class_labels):
        steps, rho = self.num_steps, 7.0
        index = torch.arange(steps, dtype=torch.float64)
        sigmas = (80.0 ** (1 / rho) + index / (steps - 1) * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
        sigmas = torch.cat([sigmas, torch.zeros_like(sigmas[:1])])
        x_next = latents.to(torch.float64) * sigmas[0]
        for i, (t_cur, t_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
            x_cur = x_next
            d_cur = (x_cur - self.denoise(x_cur, t_cur, class_labels)) / t_cur
            x_next = x_cur + (t_next - t_cur) * d_cur
            if i < steps - 1:
                d_prime = (x_next - self.denoise(x_next, t_next, class_labels)) / t_next
                x_next = x_cur + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
        return x_next


def build_edm_guidance_interval() -> EDMGuidanceInterval:
    torch.manual_seed(3)
    return EDMGuidanceInterval()


class TimeFirstGuidedLater(ConditionalRectifiedFlow):
    """``net(torch.full_like(x, t), x, y)``, the time first and shaped like the state, guided for t >= 0.5:
    doubled, the time is the batch twice over too."""

    class Net(LabelledVelocity):
        def forward(self, t, x, y):
            return super().forward(x, t[:, 0], y)

    def __init__(self, steps: int = 8):
        super().__init__(steps)
        self.model = TimeFirstGuidedLater.Net()

    def forward(self, z, y):
        dt, null = 1.0 / self.steps, torch.zeros_like(y)
        for i in range(self.steps):
            t = i * dt
            if t >= 0.5:
                both = torch.cat([z, z])
                cond, uncond = self.model(torch.full_like(both, t), both, torch.cat([y, null])).chunk(2)
                v = uncond + 2.0 * (cond - uncond)
            else:
                v = self.model(torch.full_like(z, t), z, y)
            z = z + v * dt
        return z


def build_time_first_guided_later() -> TimeFirstGuidedLater:
    torch.manual_seed(4)
    return TimeFirstGuidedLater()


class PairedInAnInterval(ConditionalRectifiedFlow):
    """Guidance by two calls a step (minRF's), from half way on. Refused."""

    def forward(self, z, y):
        dt, null = 1.0 / self.steps, torch.zeros_like(y)
        for i in range(self.steps):
            t = torch.ones(z.shape[0]) * i / self.steps
            if i >= self.steps // 2:
                vc, vu = self.model(z, t, y), self.model(z, t, null)
                v = vu + 2.0 * (vc - vu)
            else:
                v = self.model(z, t, y)
            z = z + v * dt
        return z


def build_paired_in_an_interval() -> PairedInAnInterval:
    torch.manual_seed(4)
    return PairedInAnInterval()


class ScaledVelocity(LabelledVelocity):
    def forward(self, x, t, y, scale=None):
        return super().forward(x, t, y) * scale


class ScaleFromTheBatch(ConditionalRectifiedFlow):
    """f handed a scale the forward computes from its batch (twice where a sample lies beyond 3.5): held as
    the loop passes it, not one row per sample."""

    def __init__(self, steps: int = 6):
        super().__init__(steps)
        self.model = ScaledVelocity()

    def forward(self, z, y):
        scale, dt = (z.abs().max() > 3.5).float() + 1.0, 1.0 / self.steps
        for i in range(self.steps):
            z = z + dt * self.model(z, torch.ones(z.shape[0]) * i * dt, y, scale=scale)
        return z


def build_scale_from_the_batch() -> ScaleFromTheBatch:
    torch.manual_seed(4)
    return ScaleFromTheBatch()


class ScaleFromTheBatchSize(ScaleFromTheBatch):
    """The scale a Python number from the batch's size: 1 below 30 rows, 2 from 30."""

    def forward(self, z, y):
        scale, dt = 1.0 + z.shape[0] // 30, 1.0 / self.steps
        for i in range(self.steps):
            z = z + dt * self.model(z, torch.ones(z.shape[0]) * i * dt, y, scale=scale)
        return z


def build_scale_from_the_batch_size() -> ScaleFromTheBatchSize:
    torch.manual_seed(4)
    return ScaleFromTheBatchSize()


class SteppedInPlace(ConditionalRectifiedFlow):
    """``x += dt * model(x, t, y)``: the tensor f was handed changes after each call."""

    def forward(self, z, y):
        x, dt = z.clone(), 1.0 / self.steps
        for i in range(self.steps):
            x += dt * self.model(x, torch.ones(x.shape[0]) * i * dt, y)
        return x


def build_stepped_in_place() -> SteppedInPlace:
    torch.manual_seed(4)
    return SteppedInPlace()


class GuidedOnAlternateSteps(ConditionalRectifiedFlow):
    """Guidance on every other step: no one interval of time. Refused."""

    def forward(self, z, y):
        dt, null = 1.0 / self.steps, torch.zeros_like(y)
        for i in range(self.steps):
            t = torch.ones(z.shape[0]) * i / self.steps
            if i % 2:
                cond, uncond = self.model(torch.cat([z, z]), torch.cat([t, t]), torch.cat([y, null])).chunk(2)
                v = uncond + 2.0 * (cond - uncond)
            else:
                v = self.model(z, t, y)
            z = z + v * dt
        return z


def build_guided_on_alternate_steps() -> GuidedOnAlternateSteps:
    torch.manual_seed(4)
    return GuidedOnAlternateSteps()


class KeywordTransformer(nn.Module):
    """A diffusers-style transformer: one required argument (its time a keyword that defaults to None), a
    text embedding per sample, ``(sample,)`` with ``return_dict=False``."""

    def __init__(self, dim: int = 2, text: int = 8, hidden: int = 32):
        super().__init__()
        self.inp, self.txt = nn.Linear(dim + 1, hidden), nn.Linear(text, hidden)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, hidden_states, encoder_hidden_states=None, timestep=None, return_dict=True):
        t = timestep.reshape(-1, 1).expand(hidden_states.shape[0], 1) / 1000
        sample = self.out(self.inp(torch.cat([hidden_states, t], 1)) + self.txt(encoder_hidden_states))
        return (sample,) if not return_dict else {"sample": sample}


class DiffusersStyleLoop(nn.Module):
    """A pipeline's loop written by hand: ``transformer(hidden_states=latents, timestep=t * 1000,
    encoder_hidden_states=prompt_embeds, return_dict=False)[0]``, Euler over sigmas from 1 to 0."""

    def __init__(self, steps: int = 5):
        super().__init__()
        self.transformer = KeywordTransformer()
        self.steps = steps

    def forward(self, latents, prompt_embeds):
        sigmas = torch.linspace(1, 0, self.steps + 1)
        for s, s_next in zip(sigmas[:-1], sigmas[1:]):
            t = (s * 1000).expand(latents.shape[0])
            noise_pred = self.transformer(hidden_states=latents, timestep=t, encoder_hidden_states=prompt_embeds,
                                          return_dict=False)[0]
            latents = latents + (s_next - s) * noise_pred
        return latents


def build_diffusers_style_loop() -> DiffusersStyleLoop:
    torch.manual_seed(7)
    return DiffusersStyleLoop()


class GuidedEDM(ConditionalEDM):
    """EDM's sampler with classifier-free guidance on the denoiser (k-diffusion's ``CFGDenoiser`` written
    into the loop): D = D_u + 2 (D_c - D_u), the batch doubled, the null label all zeros."""

    def forward(self, latents, class_labels):
        net, scale = self.net, 2.0

        def guided(x, sigma):
            cond, uncond = net(torch.cat([x, x]), sigma, torch.cat([class_labels, torch.zeros_like(class_labels)])
                               ).to(torch.float64).chunk(2)
            return uncond + scale * (cond - uncond)
        steps = self.num_steps
        index = torch.arange(steps, dtype=torch.float64)
        t_steps = (self.sigma_max ** (1 / self.rho) + index / (steps - 1)
                   * (self.sigma_min ** (1 / self.rho) - self.sigma_max ** (1 / self.rho))) ** self.rho
        t_steps = torch.cat([t_steps, torch.zeros_like(t_steps[:1])])
        x_next = latents.to(torch.float64) * t_steps[0]
        for i, (t_cur, t_next) in enumerate(zip(t_steps[:-1], t_steps[1:])):
            x_hat = x_next
            d_cur = (x_hat - guided(x_hat, t_cur)) / t_cur
            x_next = x_hat + (t_next - t_cur) * d_cur
            if i < steps - 1:
                d_prime = (x_next - guided(x_next, t_next)) / t_next
                x_next = x_hat + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
        return x_next


def build_guided_edm() -> GuidedEDM:
    torch.manual_seed(3)
    return GuidedEDM(num_steps=6)


class AddedCondUNet(nn.Module):
    """SDXL's UNet: the text embeddings per sample inside a dict argument, ``added_cond_kwargs``."""

    def __init__(self, dim: int = 2, text: int = 8, hidden: int = 32):
        super().__init__()
        self.inp, self.txt = nn.Linear(dim + 1, hidden), nn.Linear(text, hidden)
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))
        nn.init.normal_(self.txt.weight, std=1.0)

    def forward(self, sample, timestep, added_cond_kwargs=None):
        t = timestep.reshape(-1, 1).expand(sample.shape[0], 1)
        return self.out(self.inp(torch.cat([sample, t], 1)) + self.txt(added_cond_kwargs["text_embeds"]))


class AddedCondLoop(nn.Module):
    def __init__(self, steps: int = 6):
        super().__init__()
        self.unet = AddedCondUNet()
        self.steps = steps

    def forward(self, latents, text_embeds):
        added, dt = {"text_embeds": text_embeds}, 1.0 / self.steps
        for i in range(self.steps):
            latents = latents + self.unet(latents, torch.tensor(i * dt), added_cond_kwargs=added) * dt
        return latents


def build_added_cond_loop() -> AddedCondLoop:
    torch.manual_seed(9)
    return AddedCondLoop()


class DecodedAfterTheLoop(ConditionalRectifiedFlow):
    """A latent sampler that decodes in the same forward: the loop, then a linear decoder."""

    def __init__(self, steps: int = 6):
        super().__init__(steps)
        self.decoder = nn.Linear(2, 3)

    def forward(self, z, y):
        dt = 1.0 / self.steps
        for i in range(self.steps):
            z = z + dt * self.model(z, torch.ones(z.shape[0]) * i * dt, y)
        return self.decoder(z)


class DecodedAfterASampler(nn.Module):
    """The same with the loop in a module of its own: ``self.decoder(self.sampler(z, y))``."""

    def __init__(self, steps: int = 6):
        super().__init__()
        self.sampler = ConditionalRectifiedFlow(steps)
        self.decoder = nn.Linear(2, 3)

    def forward(self, z, y):
        return self.decoder(self.sampler(z, y))


def build_decoded_after_the_loop() -> DecodedAfterTheLoop:
    torch.manual_seed(4)
    return DecodedAfterTheLoop()


def build_decoded_after_a_sampler() -> DecodedAfterASampler:
    torch.manual_seed(4)
    return DecodedAfterASampler()
