"""The DDPM noise schedule: linear betas, the forward process q(x_t | x_0) and its posterior.

Same numbers as the DiT / improved-DDPM code (``get_named_beta_schedule("linear", 1000)``)
and as ``diffusers.DDPMScheduler(beta_schedule="linear")`` (METHOD.md section 3: 1000
training timesteps, linear betas from 1e-4 to 0.02). Like the DiT code, every table is
computed once in float64 and each lookup is cast to the caller's precision (at least
float32), so the small posterior variances near t = 0 keep their digits.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor


class NoiseSchedule:
    """Per-timestep tables of a linear-beta DDPM, all 1-D float64 tensors of length T.

    ``betas``, ``alphas_cumprod`` (abar_t), ``alphas_cumprod_prev`` (abar_{t-1}, 1 at t = 0),
    ``log_betas``, ``sqrt_alphas_cumprod``, ``sqrt_one_minus_alphas_cumprod``,
    ``sqrt_recip_alphas_cumprod``, ``sqrt_recipm1_alphas_cumprod``, and for the posterior
    q(x_{t-1} | x_t, x_0): ``posterior_variance``, ``posterior_log_variance_clipped`` (the
    variance at t = 0 is 0, so its log takes the value of t = 1, as in the DiT code),
    ``posterior_mean_coef1`` (times x_0) and ``posterior_mean_coef2`` (times x_t).
    """

    def __init__(
        self, num_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> None:
        if num_timesteps < 2:
            raise ValueError(f"num_timesteps must be at least 2, got {num_timesteps}")
        if not 0.0 < beta_start <= beta_end < 1.0:
            raise ValueError(
                f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, "
                f"beta_end={beta_end}"
            )
        self.num_timesteps = num_timesteps
        betas = torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = torch.cat([alphas_cumprod.new_ones(1), alphas_cumprod[:-1]])
        posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)

        self.betas = betas
        self.log_betas = torch.log(betas)
        self.alphas_cumprod = alphas_cumprod
        self.alphas_cumprod_prev = alphas_cumprod_prev
        self.sqrt_alphas_cumprod = torch.sqrt(alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = torch.sqrt(1.0 - alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = torch.sqrt(1.0 / alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = torch.sqrt(1.0 / alphas_cumprod - 1.0)
        self.posterior_variance = posterior_variance
        self.posterior_log_variance_clipped = torch.log(
            torch.cat([posterior_variance[1:2], posterior_variance[1:]])
        )
        self.posterior_mean_coef1 = betas * torch.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - alphas_cumprod_prev) * torch.sqrt(alphas) / (1.0 - alphas_cumprod)
        )

    def to(self, device: torch.device | str) -> NoiseSchedule:
        """A copy whose tables live on ``device`` (lookups then need no transfer)."""
        moved = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(moved, name, value.to(device))
        return moved

    def at(self, table: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``table[t]`` shaped [B, 1, ..., 1] to broadcast against ``like``.

        Cast to ``like``'s dtype but never below float32 (the DiT code's ``.float()``),
        so half-precision activations still get full-precision coefficients.
        """
        dtype = torch.promote_types(like.dtype, torch.float32)
        values = table[t.to(table.device)].to(device=like.device, dtype=dtype)
        return values.view(-1, *([1] * (like.dim() - 1)))

    def add_noise(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample q(x_t | x_0): ``sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise``."""
        return (
            self.at(self.sqrt_alphas_cumprod, t, x0) * x0
            + self.at(self.sqrt_one_minus_alphas_cumprod, t, x0) * noise
        )

    def predict_x0(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """``(x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``, in the DiT code's rearranged form.

        This is the ``p = x0_hat`` the minimax criteria compare (METHOD.md section 2).
        """
        return (
            self.at(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
            - self.at(self.sqrt_recipm1_alphas_cumprod, t, x_t) * eps
        )

    def posterior_mean(self, x0: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Mean of q(x_{t-1} | x_t, x_0)."""
        return (
            self.at(self.posterior_mean_coef1, t, x_t) * x0
            + self.at(self.posterior_mean_coef2, t, x_t) * x_t
        )

    def sample_timesteps(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """``batch_size`` timesteps drawn uniformly from {0, ..., T - 1} (int64).

        Drawn on the generator's own device, then moved, so a CPU generator gives the
        same timesteps whatever device trains.
        """
        draw_device = generator.device if generator is not None else device
        t = torch.randint(
            0, self.num_timesteps, (batch_size,), generator=generator, device=draw_device
        )
        return t.to(device) if device is not None else t
