"""The DiT training loss: MSE on the predicted noise, plus the variational-bound term for a
learned variance (the "hybrid" loss of improved DDPM, used by DiT; METHOD.md section 3).

``diffusers`` has no such loss, so it is written here after the DiT code
(``gaussian_diffusion.py``, ``training_losses`` with ``LossType.MSE`` and
``ModelVarType.LEARNED_RANGE``). The variance channels v in [-1, 1] interpolate the log
variance between the posterior variance and beta_t; the vb term sees the predicted mean
detached ("frozen_out" in the DiT code) so only the MSE trains the noise prediction.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from mdd.diffusion.schedule import NoiseSchedule


class LossTerms(NamedTuple):
    """Scalar losses of one batch; ``total = mse + vb`` (vb is 0 without learned variance)."""

    total: Tensor
    mse: Tensor
    vb: Tensor


def predicted_x0(model_output: Tensor, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
    """The model's clean-sample estimate ``p = x0_hat`` from its eps channels, with gradient.

    The first C channels of ``model_output`` (C = channels of ``x_t``) are the predicted
    noise, whether or not variance channels follow (METHOD.md section 2).
    """
    eps = model_output[:, : x_t.shape[1]]
    return schedule.predict_x0(x_t, t, eps)


def diffusion_loss(
    model_output: Tensor,
    x0: Tensor,
    x_t: Tensor,
    t: Tensor,
    noise: Tensor,
    schedule: NoiseSchedule,
    learned_variance: bool,
) -> LossTerms:
    """The epsilon-prediction loss of one batch, averaged over the batch.

    ``model_output`` has C channels (the noise prediction) or, with ``learned_variance``,
    2C channels: the noise prediction, then the variance interpolation value v. Computed
    in at least float32 whatever the model's precision.
    """
    channels = x0.shape[1]
    expected = 2 * channels if learned_variance else channels
    if model_output.shape[1] != expected or model_output.shape[2:] != x0.shape[2:]:
        raise ValueError(
            f"model output of shape {tuple(model_output.shape)} does not fit x0 of shape "
            f"{tuple(x0.shape)} with learned_variance={learned_variance}: expected "
            f"{expected} channels"
        )
    dtype = torch.promote_types(model_output.dtype, torch.float32)
    eps = model_output[:, :channels].to(dtype)
    mse = (eps - noise.to(dtype)).square().mean()
    if not learned_variance:
        return LossTerms(total=mse, mse=mse, vb=mse.new_zeros(()))

    variance_value = model_output[:, channels:].to(dtype)
    x0, x_t = x0.to(dtype), x_t.to(dtype)
    # frozen_out: the vb term must not pull on the mean, only on the variance.
    model_mean = schedule.posterior_mean(schedule.predict_x0(x_t, t, eps.detach()), x_t, t)
    min_log = schedule.at(schedule.posterior_log_variance_clipped, t, x_t)
    max_log = schedule.at(schedule.log_betas, t, x_t)
    frac = (variance_value + 1.0) / 2.0
    model_log_variance = frac * max_log + (1.0 - frac) * min_log

    true_mean = schedule.posterior_mean(x0, x_t, t)
    kl = _normal_kl(true_mean, min_log, model_mean, model_log_variance)
    decoder_nll = -_discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_variance)
    # In bits per dimension; at t = 0 the bound's term is the decoder likelihood, not a KL.
    kl_bits = kl.flatten(1).mean(1) / math.log(2.0)
    nll_bits = decoder_nll.flatten(1).mean(1) / math.log(2.0)
    vb = torch.where(t.to(x_t.device) == 0, nll_bits, kl_bits).mean()
    return LossTerms(total=mse + vb, mse=mse, vb=vb)


def _normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2).square() * torch.exp(-logvar2)
    )


def _approx_standard_normal_cdf(x: Tensor) -> Tensor:
    # The tanh approximation used by the DDPM / DiT code, kept for identical numbers.
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def _discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log P(x) of a Gaussian binned to 256 levels on [-1, 1], elementwise, in nats.

    The outermost bins extend to infinity, as in the DDPM code.
    """
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_cdf_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_min, log_cdf_delta),
    )
