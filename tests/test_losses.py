"""The noise schedule against diffusers, and the hybrid DiT loss against a from-scratch
computation of the variational bound (METHOD.md section 3)."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler

from mdd.diffusion.losses import diffusion_loss, predicted_x0
from mdd.diffusion.schedule import NoiseSchedule


def _diffusers_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear"
    )


def test_schedule_matches_diffusers_alphas_cumprod():
    schedule = NoiseSchedule()
    reference = _diffusers_scheduler()
    torch.testing.assert_close(schedule.betas.float(), reference.betas, rtol=1e-6, atol=0)
    # diffusers accumulates the product in float32, we in float64: a few float32 ulps apart.
    torch.testing.assert_close(
        schedule.alphas_cumprod.float(), reference.alphas_cumprod, rtol=2e-5, atol=0
    )
    assert schedule.alphas_cumprod[0].item() == pytest.approx(1 - 1e-4, abs=1e-15)
    assert schedule.alphas_cumprod_prev[0].item() == 1.0


def test_add_noise_matches_diffusers():
    schedule = NoiseSchedule()
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 5, 5, generator=generator)
    noise = torch.randn(4, 3, 5, 5, generator=generator)
    t = torch.tensor([0, 17, 500, 999])
    expected = _diffusers_scheduler().add_noise(x0, noise, t)
    torch.testing.assert_close(schedule.add_noise(x0, t, noise), expected, rtol=1e-5, atol=1e-5)


def test_predict_x0_inverts_add_noise_by_the_paper_formula():
    schedule = NoiseSchedule()
    x0 = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    eps = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 250, 999])
    x_t = schedule.add_noise(x0, t, eps)
    abar = schedule.alphas_cumprod[t].view(-1, 1, 1, 1)
    by_formula = (x_t - torch.sqrt(1 - abar) * eps) / torch.sqrt(abar)
    torch.testing.assert_close(schedule.predict_x0(x_t, t, eps), by_formula)
    torch.testing.assert_close(schedule.predict_x0(x_t, t, eps), x0)
    model_output = torch.cat([eps, torch.zeros_like(eps)], dim=1)
    torch.testing.assert_close(predicted_x0(model_output, x_t, t, schedule), x0)


def test_schedule_lookups_keep_float32_for_half_inputs():
    schedule = NoiseSchedule()
    x = torch.ones(2, 1, 2, 2, dtype=torch.bfloat16)
    coefficient = schedule.at(schedule.sqrt_alphas_cumprod, torch.tensor([3, 4]), x)
    assert coefficient.dtype == torch.float32 and coefficient.shape == (2, 1, 1, 1)


def test_sample_timesteps_are_uniform_and_reproducible():
    schedule = NoiseSchedule()
    first = schedule.sample_timesteps(20000, torch.Generator().manual_seed(3), "cpu")
    second = schedule.sample_timesteps(20000, torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(first, second)
    assert first.dtype == torch.long
    assert int(first.min()) == 0 and int(first.max()) == 999
    assert abs(first.double().mean().item() - 499.5) < 10  # std of the mean is about 2


def _approx_cdf(x: float) -> float:
    return 0.5 * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def _hybrid_loss_by_hand(model_output, x0, x_t, t, noise):
    """The hybrid loss from the DDPM definitions, element by element in Python floats."""
    betas = [1e-4 + (0.02 - 1e-4) * k / 999 for k in range(1000)]
    # Posterior variance at t = 1; at t = 0 the variance is 0, so its log is taken at t = 1.
    posterior_var_1 = betas[1] * (1 - (1 - betas[0])) / (1 - (1 - betas[0]) * (1 - betas[1]))
    channels = x0.shape[1]
    mse_terms, vb_items = [], []
    for b in range(x0.shape[0]):
        step = int(t[b])
        abar_t = math.prod(1 - beta for beta in betas[: step + 1])
        abar_prev = math.prod(1 - beta for beta in betas[:step])
        beta_t = betas[step]
        posterior_var = beta_t * (1 - abar_prev) / (1 - abar_t) if step > 0 else posterior_var_1
        coef_x0 = beta_t * math.sqrt(abar_prev) / (1 - abar_t)
        coef_xt = (1 - abar_prev) * math.sqrt(1 - beta_t) / (1 - abar_t)
        per_element = []
        for index in torch.cartesian_prod(*(torch.arange(n) for n in x0.shape[1:])).tolist():
            c, rest = index[0], tuple(index[1:])
            eps_hat = model_output[(b, c, *rest)].item()
            v = model_output[(b, c + channels, *rest)].item()
            x0_v, xt_v = x0[(b, c, *rest)].item(), x_t[(b, c, *rest)].item()
            mse_terms.append((eps_hat - noise[(b, c, *rest)].item()) ** 2)
            x0_hat = (xt_v - math.sqrt(1 - abar_t) * eps_hat) / math.sqrt(abar_t)
            model_mean = coef_x0 * x0_hat + coef_xt * xt_v
            frac = (v + 1) / 2
            model_var = math.exp(frac * math.log(beta_t) + (1 - frac) * math.log(posterior_var))
            if step > 0:
                true_mean = coef_x0 * x0_v + coef_xt * xt_v
                # KL(N(m1, s1) || N(m2, s2)) = 0.5 (log(s2/s1) + (s1 + (m1 - m2)^2) / s2 - 1)
                kl = 0.5 * (
                    math.log(model_var / posterior_var)
                    + (posterior_var + (true_mean - model_mean) ** 2) / model_var
                    - 1
                )
                per_element.append(kl / math.log(2))
            else:
                std = math.sqrt(model_var)
                upper = _approx_cdf((x0_v - model_mean + 1 / 255) / std)
                lower = _approx_cdf((x0_v - model_mean - 1 / 255) / std)
                if x0_v < -0.999:
                    prob = upper
                elif x0_v > 0.999:
                    prob = 1 - lower
                else:
                    prob = upper - lower
                per_element.append(-math.log(prob) / math.log(2))
        vb_items.append(sum(per_element) / len(per_element))
    mse = sum(mse_terms) / len(mse_terms)
    vb = sum(vb_items) / len(vb_items)
    return mse + vb, mse, vb


def _tiny_case():
    schedule = NoiseSchedule()
    x0 = torch.tensor(
        [[[[-1.0, 1.0], [0.3, -0.2]]], [[[0.5, -0.7], [0.1, 0.9]]]], dtype=torch.float64
    )
    noise = torch.tensor(
        [[[[0.4, -1.2], [0.8, 0.05]]], [[[-0.3, 1.1], [0.6, -0.9]]]], dtype=torch.float64
    )
    t = torch.tensor([0, 600])
    x_t = schedule.add_noise(x0, t, noise)
    eps_hat = noise + torch.tensor(
        [[[[0.02, -0.01], [0.005, 0.03]]], [[[0.2, -0.1], [0.15, 0.05]]]], dtype=torch.float64
    )
    variance_value = torch.tensor(
        [[[[0.3, -0.5], [0.9, -0.95]]], [[[0.1, 0.6], [-0.4, 0.0]]]], dtype=torch.float64
    )
    model_output = torch.cat([eps_hat, variance_value], dim=1)
    return schedule, model_output, x0, x_t, t, noise


def test_hybrid_loss_matches_the_variational_bound_computed_by_hand():
    schedule, model_output, x0, x_t, t, noise = _tiny_case()
    terms = diffusion_loss(model_output, x0, x_t, t, noise, schedule, learned_variance=True)
    total, mse, vb = _hybrid_loss_by_hand(model_output, x0, x_t, t, noise)
    assert terms.mse.item() == pytest.approx(mse, rel=1e-9)
    assert terms.vb.item() == pytest.approx(vb, rel=1e-9)
    assert terms.total.item() == pytest.approx(total, rel=1e-9)
    assert terms.vb.item() > 0


def test_vb_term_trains_only_the_variance_channels():
    schedule, model_output, x0, x_t, t, noise = _tiny_case()
    output = model_output.clone().requires_grad_()
    terms = diffusion_loss(output, x0, x_t, t, noise, schedule, learned_variance=True)
    vb_grad = torch.autograd.grad(terms.vb, output, retain_graph=True)[0]
    assert bool((vb_grad[:, :1] == 0).all())  # the mean is detached
    assert bool((vb_grad[:, 1:].abs() > 0).all())
    mse_grad = torch.autograd.grad(terms.mse, output)[0]
    assert bool((mse_grad[:, 1:] == 0).all())
    torch.testing.assert_close(mse_grad[:, :1], 2 * (output[:, :1] - noise).detach() / 8)


def test_fixed_variance_loss_is_the_eps_mse():
    schedule, model_output, x0, x_t, t, noise = _tiny_case()
    eps_hat = model_output[:, :1]
    terms = diffusion_loss(eps_hat, x0, x_t, t, noise, schedule, learned_variance=False)
    # The eps errors of _tiny_case squared and averaged over the 8 elements.
    errors = [0.02, -0.01, 0.005, 0.03, 0.2, -0.1, 0.15, 0.05]
    assert terms.mse.item() == pytest.approx(sum(e * e for e in errors) / 8, rel=1e-9)
    assert terms.total.item() == terms.mse.item() and terms.vb.item() == 0.0


def test_wrong_number_of_output_channels_is_rejected():
    schedule, model_output, x0, x_t, t, noise = _tiny_case()
    with pytest.raises(ValueError, match="expected 1 channels"):
        diffusion_loss(model_output, x0, x_t, t, noise, schedule, learned_variance=False)
