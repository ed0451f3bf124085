"""Original DiT checkpoints (facebookresearch/DiT key layout) load into diffusers' DiT exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel
from timm.models.vision_transformer import Attention, Mlp, PatchEmbed
from torch import nn

from mdd.diffusion.convert import convert_original_dit, load_original_dit, match_original_dit
from mdd.errors import MddError

# A faithful, minimal copy of facebookresearch/DiT models.py (the reference for conversion).


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(frequency_embedding_size, hidden_size),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size),
        )
        self.frequency_embedding_size = frequency_embedding_size

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: int = 10000) -> torch.Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        args = t[:, None].float() * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.timestep_embedding(t, self.frequency_embedding_size))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0]) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class DiTBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(
            in_features=hidden_size,
            hidden_features=int(hidden_size * mlp_ratio),
            act_layer=lambda: nn.GELU(approximate="tanh"),
            drop=0,
        )
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(
            c
        ).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float64)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega
    out = np.einsum("m,d->md", pos.reshape(-1), omega)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.stack(np.meshgrid(grid_w, grid_h), axis=0).reshape([2, 1, grid_size, grid_size])
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])
    return np.concatenate([emb_h, emb_w], axis=1)


class DiT(nn.Module):
    def __init__(
        self,
        input_size: int,
        patch_size: int,
        in_channels: int,
        hidden_size: int,
        depth: int,
        num_heads: int,
        num_classes: int,
        learn_sigma: bool = True,
        class_dropout_prob: float = 0.1,
    ) -> None:
        super().__init__()
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        pos = get_2d_sincos_pos_embed(hidden_size, int(num_patches**0.5))
        self.pos_embed.data.copy_(torch.from_numpy(pos).float().unsqueeze(0))
        self.blocks = nn.ModuleList(DiTBlock(hidden_size, num_heads) for _ in range(depth))
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        c, p = self.out_channels, self.patch_size
        h = w = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], h, w, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, h * p, w * p)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.x_embedder(x) + self.pos_embed
        c = self.t_embedder(t) + self.y_embedder(y, self.training)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))


# Tiny configuration: depth 2, hidden 32, 2 heads, patch 2, 8x8x4 input, learned sigma, 10 classes.
DEPTH, HIDDEN, HEADS, PATCH, SIZE, CHANNELS, CLASSES = 2, 32, 2, 2, 8, 4, 10
TINY_CONFIG = {
    "num_attention_heads": HEADS,
    "attention_head_dim": HIDDEN // HEADS,
    "in_channels": CHANNELS,
    "out_channels": 2 * CHANNELS,
    "num_layers": DEPTH,
    "sample_size": SIZE,
    "patch_size": PATCH,
    "num_embeds_ada_norm": CLASSES,
}


@pytest.fixture
def original() -> DiT:
    torch.manual_seed(0)
    model = DiT(SIZE, PATCH, CHANNELS, HIDDEN, DEPTH, HEADS, CLASSES)
    # Random weights everywhere, adaLN and final layer included: DiT's own zero init of
    # those layers would make both models output zeros and the comparison vacuous.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name != "pos_embed":
                param.normal_(0.0, 0.3)
    return model.eval()


def _inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, CHANNELS, SIZE, SIZE, generator=generator)
    t = torch.tensor([0, 437, 999])
    y = torch.tensor([0, 9, CLASSES])  # the last is the null (unconditional) class
    return x, t, y


def test_converted_checkpoint_reproduces_original_outputs(original: DiT, tmp_path) -> None:
    path = tmp_path / "DiT-tiny.pt"
    torch.save(original.state_dict(), path)
    converted = load_original_dit(path, TINY_CONFIG).eval()
    x, t, y = _inputs()
    with torch.no_grad():
        expected = original(x, t, y)
        actual = converted(hidden_states=x, timestep=t, class_labels=y).sample
    assert expected.shape == (3, 2 * CHANNELS, SIZE, SIZE)
    assert expected.abs().mean() > 0.1  # a real comparison, not zeros against zeros
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_diffusers_timestep_frequencies_differ_without_match_original_dit(original: DiT) -> None:
    plain = DiTTransformer2DModel.from_config(TINY_CONFIG).eval()
    plain.load_state_dict(convert_original_dit(original.state_dict(), DEPTH))
    x, t, y = _inputs()
    with torch.no_grad():
        expected = original(x, t, y)
        unmatched = plain(hidden_states=x, timestep=t, class_labels=y).sample
        matched = match_original_dit(plain)(hidden_states=x, timestep=t, class_labels=y).sample
    assert (unmatched - expected).abs().max() > 1e-3
    torch.testing.assert_close(matched, expected, atol=1e-5, rtol=1e-5)


def test_qkv_is_split_in_query_key_value_order(original: DiT) -> None:
    converted = convert_original_dit(original.state_dict(), DEPTH)
    qkv = original.blocks[1].attn.qkv.weight
    assert torch.equal(converted["transformer_blocks.1.attn1.to_q.weight"], qkv[:HIDDEN])
    assert torch.equal(converted["transformer_blocks.1.attn1.to_k.weight"], qkv[HIDDEN:-HIDDEN])
    assert torch.equal(converted["transformer_blocks.1.attn1.to_v.weight"], qkv[-HIDDEN:])


def test_shared_embedders_are_copied_into_every_block(original: DiT) -> None:
    converted = convert_original_dit(original.state_dict(), DEPTH)
    table = original.y_embedder.embedding_table.weight
    for n in range(DEPTH):
        key = f"transformer_blocks.{n}.norm1.emb.class_embedder.embedding_table.weight"
        assert torch.equal(converted[key], table)
    assert table.shape[0] == CLASSES + 1  # the null-class row comes along


def test_ema_weights_are_preferred_in_a_training_checkpoint(original: DiT, tmp_path) -> None:
    ema = original.state_dict()
    raw = {k: torch.zeros_like(v) for k, v in ema.items()}
    path = tmp_path / "0012000.pt"
    torch.save({"model": raw, "ema": ema}, path)
    model = load_original_dit(path, TINY_CONFIG)
    assert torch.equal(model.proj_out_2.weight, original.final_layer.linear.weight)


def test_depth_mismatch_names_the_extra_keys(original: DiT) -> None:
    with pytest.raises(MddError, match="blocks.1"):
        convert_original_dit(original.state_dict(), depth=1)


def test_missing_key_is_reported(original: DiT) -> None:
    state = original.state_dict()
    del state["final_layer.linear.bias"]
    with pytest.raises(MddError, match="final_layer.linear.bias"):
        convert_original_dit(state, DEPTH)


def test_wrong_latent_size_is_explained(original: DiT, tmp_path) -> None:
    path = tmp_path / "DiT-tiny.pt"
    torch.save(original.state_dict(), path)
    with pytest.raises(MddError, match="latents of 8x8"):
        load_original_dit(path, {**TINY_CONFIG, "sample_size": 16})


def test_pickled_objects_are_refused(tmp_path) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"model": {"weight": torch.zeros(1)}, "args": _Namespace()}, path)
    with pytest.raises(MddError, match="weights-only"):
        load_original_dit(path, TINY_CONFIG)


def test_missing_file_is_reported(tmp_path) -> None:
    with pytest.raises(MddError, match="no such original DiT checkpoint"):
        load_original_dit(tmp_path / "DiT-XL-2-256x256.pt", TINY_CONFIG)


class _Namespace:
    """An arbitrary class: unpickling it would run code from the file's point of view."""
