"""DSA and IDC augmentation: shapes, one draw per batch, seeding, and what each transform does."""

import pytest
import torch

from mdd.errors import ConfigError
from mdd.eval.augment import (
    DSA_TRANSFORMS,
    cutmix,
    dsa_augment,
    idc_augment,
    random_resized_crop,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same_image_batch(batch: int = 6, channels: int = 3, size: int = 16) -> torch.Tensor:
    return torch.rand(1, channels, size, size, generator=_gen(99)).expand(batch, -1, -1, -1)


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("name", list(DSA_TRANSFORMS))
def test_every_dsa_transform_keeps_shape_and_dtype(name: str, per_sample: bool) -> None:
    x = torch.rand(5, 3, 12, 12, generator=_gen())
    out = dsa_augment(x, _gen(1), strategy=name, per_sample=per_sample)
    assert out.shape == x.shape
    assert out.dtype == x.dtype
    assert not torch.equal(out, x) or name == "flip"  # a flip may draw "no flip"


@pytest.mark.parametrize("name", list(DSA_TRANSFORMS))
def test_dsa_one_draw_per_batch_keeps_identical_images_identical(name: str) -> None:
    x = _same_image_batch()
    for seed in range(5):
        out = dsa_augment(x, _gen(seed), strategy=name)
        assert torch.equal(out, out[:1].expand_as(out)), f"{name} seed {seed}"


def test_dsa_full_strategy_draws_once_per_batch() -> None:
    x = _same_image_batch()
    g = _gen(3)
    for _ in range(20):
        out = dsa_augment(x, g)
        assert torch.equal(out, out[:1].expand_as(out))


def test_dsa_per_sample_draws_differ_between_identical_images() -> None:
    x = _same_image_batch(batch=16)
    out = dsa_augment(x, _gen(0), strategy="crop", per_sample=True)
    assert not torch.equal(out, out[:1].expand_as(out))


def test_dsa_is_reproducible_from_the_generator_seed() -> None:
    x = torch.rand(4, 1, 10, 10, generator=_gen())
    a = dsa_augment(x, _gen(7), strategy="scale_rotate")
    b = dsa_augment(x, _gen(7), strategy="scale_rotate")
    c = dsa_augment(x, _gen(8), strategy="scale_rotate")
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_dsa_flip_mirrors_the_whole_batch_or_nothing() -> None:
    x = torch.rand(4, 2, 6, 6, generator=_gen())
    outcomes = set()
    for seed in range(12):
        out = dsa_augment(x, _gen(seed), strategy="flip")
        assert torch.equal(out, x) or torch.equal(out, x.flip(3))
        outcomes.add(torch.equal(out, x))
    assert outcomes == {True, False}


def _translate(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """out[i, j] = x[i + dy, j + dx], zero outside."""
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    out[..., max(0, -dy) : h - max(0, dy), max(0, -dx) : w - max(0, dx)] = x[
        ..., max(0, dy) : h - max(0, -dy), max(0, dx) : w - max(0, -dx)
    ]
    return out


def test_dsa_crop_is_a_zero_filled_shift_of_at_most_an_eighth_of_the_side() -> None:
    # 16 px: the shift is at most int(16 * 0.125 + 0.5) = 2 pixels each way.
    x = torch.arange(1.0, 2 * 16 * 16 + 1).view(2, 1, 16, 16)
    seen = set()
    for seed in range(30):
        out = dsa_augment(x, _gen(seed), strategy="crop")
        shifts = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.equal(out, _translate(x, dy, dx))
        ]
        assert len(shifts) == 1
        seen.add(shifts[0])
    assert len(seen) > 5


def test_dsa_cutout_zeroes_one_square_of_half_the_side_clipped_to_the_image() -> None:
    x = torch.rand(3, 1, 8, 8, generator=_gen()) + 1.0  # no zeros before
    for seed in range(20):
        out = dsa_augment(x, _gen(seed), strategy="cutout")
        zero = out[0, 0] == 0
        assert torch.equal(out == 0, zero.expand_as(out))
        rows, cols = zero.any(dim=1).nonzero().flatten(), zero.any(dim=0).nonzero().flatten()
        assert 2 <= len(rows) <= 4 and 2 <= len(cols) <= 4  # half of 8, possibly clipped
        assert int(zero.sum()) == len(rows) * len(cols)  # a filled rectangle
        assert torch.equal(out[out != 0], x[out != 0])


def test_unknown_dsa_transform_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="noise"):
        dsa_augment(torch.zeros(1, 1, 4, 4), _gen(), strategy="crop_noise")


def test_random_resized_crop_stays_inside_the_image() -> None:
    # A crop box outside the image would bring in grid_sample's zero padding.
    x = 0.5 + 0.5 * torch.rand(16, 3, 20, 20, generator=_gen())
    out = random_resized_crop(x, _gen(1))
    assert out.shape == x.shape
    assert float(out.min()) >= 0.5 - 1e-5
    assert not torch.allclose(out, x)


def test_idc_augment_draws_per_image_and_is_seeded() -> None:
    x = _same_image_batch(batch=8)
    a = idc_augment(x, _gen(5))
    assert a.shape == x.shape
    assert not torch.allclose(a[0], a[1])
    assert torch.equal(a, idc_augment(x, _gen(5)))


def test_idc_colour_jitter_and_lighting_act_on_whole_images() -> None:
    # A flat mid-gray image stays flat per channel: jitter and lighting are per-image maps.
    x = torch.full((6, 3, 12, 12), 0.5)
    out = idc_augment(x, _gen(2))
    flat = out.flatten(2)
    torch.testing.assert_close(flat, flat[:, :, :1].expand_as(flat))
    assert not torch.allclose(out, x)


def test_idc_augment_rejects_grayscale_images() -> None:
    with pytest.raises(ConfigError, match="RGB"):
        idc_augment(torch.rand(2, 1, 8, 8), _gen())


def test_cutmix_pastes_one_box_from_a_permuted_batch_and_reports_the_kept_share() -> None:
    b, h, w = 8, 12, 12
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, h, w).contiguous()
    labels = torch.arange(b)
    for seed in range(10):
        mixed, pasted_labels, kept = cutmix(x, labels, _gen(seed))
        assert sorted(pasted_labels.tolist()) == list(range(b))  # a permutation
        boxes = mixed != x
        own = [i for i in range(b) if pasted_labels[i] != i]
        for i in own:
            assert torch.all((mixed[i] == i) | (mixed[i] == pasted_labels[i]))
            assert torch.equal(boxes[i], boxes[own[0]])  # the same box for every image
            assert float((mixed[i] == i).float().mean()) == pytest.approx(kept)
        assert 0.0 <= kept <= 1.0
