"""Backbone presets build the documented DiTs; load_backbone round-trips and explains bad paths."""

from __future__ import annotations

import pytest
import torch
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding

from mdd.diffusion.backbone import (
    PRESETS,
    backbone_info,
    create_backbone,
    load_backbone,
    predict,
)
from mdd.errors import ConfigError, MddError


def randomize(model: DiTTransformer2DModel) -> DiTTransformer2DModel:
    """Non-zero weights everywhere: a fresh DiT outputs exact zeros (adaLN-Zero)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)
    return model.eval()


def sample_inputs(model: DiTTransformer2DModel, n: int = 3) -> tuple[torch.Tensor, ...]:
    info = backbone_info(model)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, *info.latent_shape, generator=generator)
    t = torch.tensor([5, 500, 999])[:n]
    y = torch.tensor([0, 3, info.null_class])[:n]
    return x, t, y


@pytest.mark.parametrize(
    ("preset", "channels", "size", "out_channels"),
    [("latent-s", 4, 7, 4), ("latent-tiny", 4, 7, 4), ("pixel-s", 1, 28, 1), ("pixel-s", 1, 32, 1)],
)
def test_presets_map_inputs_to_outputs_of_the_right_shape(
    preset: str, channels: int, size: int, out_channels: int
) -> None:
    model = create_backbone(preset, num_classes=10, in_channels=channels, sample_size=size)
    x, t, y = sample_inputs(model)
    with torch.no_grad():
        out = predict(model, x, t, y)
    assert out.shape == (3, out_channels, size, size)


def test_latent_s_is_the_documented_architecture() -> None:
    config = create_backbone("latent-s", 10, 4, 7).config
    assert (config.num_layers, config.num_attention_heads, config.attention_head_dim) == (6, 4, 32)
    assert (config.patch_size, config.in_channels, config.out_channels) == (1, 4, 4)


def test_latent_tiny_parameter_count() -> None:
    model = create_backbone("latent-tiny", num_classes=10, in_channels=4, sample_size=7)
    # Width 32, MLP 128. Per block: q/k/v/out 4 * (32*32+32) = 4224, MLP 4224 + 4128,
    # adaLN 32*192+192 = 6336, t-embedder 256*32+32 + 32*32+32 = 9280, table 11*32 = 352.
    per_block = 4224 + 8352 + 6336 + 9280 + 352
    # Patch embed 4*32+32, proj_out_1 32*64+64, proj_out_2 32*4+4.
    assert sum(p.numel() for p in model.parameters()) == 2 * per_block + 160 + 2112 + 132


def test_fresh_backbone_starts_at_zero_output_with_shared_conditioning() -> None:
    model = create_backbone("latent-tiny", num_classes=10, in_channels=4, sample_size=7)
    x, t, y = sample_inputs(model)
    with torch.no_grad():
        assert torch.equal(predict(model, x, t, y), torch.zeros(3, 4, 7, 7))
    first, second = (block.norm1.emb for block in model.transformer_blocks)
    table = first.class_embedder.embedding_table.weight
    assert torch.equal(table, second.class_embedder.embedding_table.weight)
    assert 0.01 < table.std().item() < 0.03  # DiT's normal(0, 0.02) class embedding


def test_backbones_keep_the_null_row_and_drop_no_labels_per_block() -> None:
    model = create_backbone("latent-tiny", num_classes=7, in_channels=4, sample_size=7)
    tables = [m for m in model.modules() if isinstance(m, LabelEmbedding)]
    assert all(m.embedding_table.num_embeddings == 8 for m in tables)
    assert all(m.dropout_prob == 0 for m in tables)
    assert backbone_info(model).null_class == 7


def test_dit_xl_2_config_and_info() -> None:
    config = PRESETS["DiT-XL/2"].config()
    assert config["num_layers"] == 28
    assert config["num_attention_heads"] * config["attention_head_dim"] == 1152
    assert (config["patch_size"], config["in_channels"], config["out_channels"]) == (2, 4, 8)
    assert (config["sample_size"], config["num_embeds_ada_norm"]) == (32, 1000)
    with torch.device("meta"):
        model = DiTTransformer2DModel.from_config(config)
    info = backbone_info(model)
    assert info.learned_variance
    assert info.null_class == 1000
    assert info.latent_shape == (4, 32, 32)
    assert model.proj_out_2.weight.shape == (2 * 2 * 8, 1152)


def test_eps_only_presets_have_no_learned_variance() -> None:
    info = backbone_info(create_backbone("latent-s", 10, 4, 7))
    assert not info.learned_variance
    assert info.latent_shape == (4, 7, 7)


def test_save_pretrained_folder_round_trips(tmp_path) -> None:
    model = randomize(create_backbone("latent-tiny", 10, 4, 7))
    model.save_pretrained(tmp_path / "base")
    loaded = load_backbone("latent-tiny", tmp_path / "base").eval()
    inputs = sample_inputs(model)
    with torch.no_grad():
        assert torch.equal(predict(loaded, *inputs), predict(model, *inputs))
    assert all(m.dropout_prob == 0 for m in loaded.modules() if isinstance(m, LabelEmbedding))


def test_pipeline_layout_reads_the_transformer_subfolder(tmp_path) -> None:
    model = randomize(create_backbone("latent-tiny", 10, 4, 7))
    model.save_pretrained(tmp_path / "pipeline" / "transformer")
    loaded = load_backbone("latent-tiny", str(tmp_path / "pipeline")).eval()
    inputs = sample_inputs(model)
    with torch.no_grad():
        assert torch.equal(predict(loaded, *inputs), predict(model, *inputs))


def test_preset_mismatch_is_explained(tmp_path) -> None:
    create_backbone("latent-tiny", 10, 4, 7).save_pretrained(tmp_path / "base")
    with pytest.raises(ConfigError, match="model.preset 'latent-s'"):
        load_backbone("latent-s", tmp_path / "base")


@pytest.mark.parametrize("name", ["missing", "DiT-XL-2-256x256.pt"])
def test_missing_path_names_the_expected_layout(tmp_path, name: str) -> None:
    with pytest.raises(MddError, match="facebook/DiT-XL-2-256 layout"):
        load_backbone("DiT-XL/2", tmp_path / name)


def test_folder_without_config_is_explained(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(MddError, match="holds no DiT config"):
        load_backbone("DiT-XL/2", tmp_path / "empty")


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="latent-s"):
        create_backbone("DiT-S/2", 10, 4, 7)


def test_patch_size_must_tile_the_input() -> None:
    with pytest.raises(ConfigError, match="patches of 4"):
        create_backbone("pixel-s", 10, 1, 30)


def test_predict_broadcasts_one_timestep_over_the_batch() -> None:
    model = randomize(create_backbone("latent-tiny", 10, 4, 7))
    x, _, y = sample_inputs(model)
    with torch.no_grad():
        single = predict(model, x, torch.tensor(250), y)
        per_item = predict(model, x, torch.full((3,), 250), y)
    assert torch.equal(single, per_item)
