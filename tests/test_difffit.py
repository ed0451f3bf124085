"""DiffFit selects exactly the paper's parameter subset of a diffusers DiT; labels drop once."""

from __future__ import annotations

import copy

import pytest
import torch
from diffusers import DiTTransformer2DModel
from diffusers.models.embeddings import LabelEmbedding

from mdd.diffusion.difffit import apply_difffit, fold_difffit_gammas, trainable_state_dict
from mdd.diffusion.training import disable_block_label_dropout, drop_labels

# Tiny DiT: 4 blocks, 2 heads x 8 = width 16, MLP 64, patch 2 on 4x4x4 inputs,
# learned variance (8 output channels), 10 classes + the null row.
WIDTH, CLASSES = 16, 10


def tiny_dit(**overrides: object) -> DiTTransformer2DModel:
    torch.manual_seed(0)
    config = {
        "num_attention_heads": 2,
        "attention_head_dim": 8,
        "in_channels": 4,
        "out_channels": 8,
        "num_layers": 4,
        "sample_size": 4,
        "patch_size": 2,
        "num_embeds_ada_norm": CLASSES,
        **overrides,
    }
    # diffusers' default init: random adaLN weights, so outputs are not trivially zero.
    return DiTTransformer2DModel(**config)


def batch(n: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, 4, 4, generator=generator)
    t = torch.randint(0, 1000, (n,), generator=generator)
    y = torch.arange(n) % (CLASSES + 1)  # includes the null class 10
    return x, t, y


def run(model: DiTTransformer2DModel, inputs: tuple) -> torch.Tensor:
    x, t, y = inputs
    return model(hidden_states=x, timestep=t, class_labels=y).sample


BLOCK_BIASES = [
    "norm1.emb.timestep_embedder.linear_1.bias",
    "norm1.emb.timestep_embedder.linear_2.bias",
    "norm1.linear.bias",  # the adaLN projection's bias: a bias, so trained
    "attn1.to_q.bias",
    "attn1.to_k.bias",
    "attn1.to_v.bias",
    "attn1.to_out.0.bias",
    "ff.net.0.proj.bias",
    "ff.net.2.bias",
]


def expected_names() -> set[str]:
    names = {"pos_embed.proj.bias", "proj_out_1.bias", "proj_out_2.bias"}
    for n in range(4):
        names |= {f"transformer_blocks.{n}.{b}" for b in BLOCK_BIASES}
        names.add(f"transformer_blocks.{n}.norm1.emb.class_embedder.embedding_table.weight")
    for n in (0, 1):  # first half of the 4 blocks
        names |= {f"transformer_blocks.{n}.difffit_gamma_attn"}
        names |= {f"transformer_blocks.{n}.difffit_gamma_ff"}
    return names


def test_selection_is_biases_class_tables_and_first_half_gammas() -> None:
    model = tiny_dit()
    selection = apply_difffit(model)
    assert set(selection.names) == expected_names()
    assert "transformer_blocks.0.norm1.linear.weight" not in selection.names
    assert {n for n, p in model.named_parameters() if p.requires_grad} == expected_names()


def test_selection_counts_match_the_architecture() -> None:
    selection = apply_difffit(tiny_dit())
    # Per block: t-embedder biases 16 + 16, adaLN bias 6 * 16, q/k/v/out 4 * 16,
    # MLP 64 + 16 = 272; 4 blocks, plus patch-embed 16, proj_out_1 32, proj_out_2 2*2*8.
    assert selection.by_group["bias"] == 4 * 272 + 16 + 32 + 32
    assert selection.by_group["class_embedding"] == 4 * (CLASSES + 1) * WIDTH
    assert selection.by_group["gamma"] == 2 * 2 * WIDTH
    assert selection.by_group["norm"] == 0  # DiT's LayerNorms have no affine parameters
    assert selection.trainable_params == 1168 + 704 + 64
    # Per block: t-embedder 256*16+16 + 16*16+16, table 176, adaLN 16*96+96,
    # attention 4 * (16*16+16), MLP 16*64+64 + 64*16+16 = 9408.
    # Top: patch conv 4*16*4+16, proj_out_1 16*32+32, proj_out_2 16*32+32 = 1360; gammas 64.
    assert selection.total_params == 4 * 9408 + 1360 + 64


def test_normalisation_affines_are_selected_by_module_type() -> None:
    selection = apply_difffit(tiny_dit(norm_elementwise_affine=True))
    norm_names = {n for n in selection.names if ".norm3." in n}
    assert norm_names == {
        f"transformer_blocks.{n}.norm3.{p}" for n in range(4) for p in ("weight", "bias")
    }
    assert selection.by_group["norm"] == 4 * 2 * WIDTH


def test_gammas_start_at_one_and_leave_the_output_unchanged() -> None:
    model = tiny_dit().eval()
    inputs = batch()
    with torch.no_grad():
        before = run(model, inputs)
        apply_difffit(model)
        after = run(model, inputs)
    assert torch.equal(before, after)
    for n in (0, 1):
        assert torch.equal(model.transformer_blocks[n].difffit_gamma_attn, torch.ones(WIDTH))
        assert torch.equal(model.transformer_blocks[n].difffit_gamma_ff, torch.ones(WIDTH))
    assert not hasattr(model.transformer_blocks[2], "difffit_gamma_attn")


def test_gammas_follow_the_model_dtype() -> None:
    model = tiny_dit().double()
    apply_difffit(model)
    assert model.transformer_blocks[0].difffit_gamma_ff.dtype == torch.float64
    x, t, y = batch()
    assert run(model, (x.double(), t, y)).dtype == torch.float64


def test_gammas_scale_the_block_outputs() -> None:
    model = tiny_dit().eval()
    apply_difffit(model)
    inputs = batch()
    with torch.no_grad():
        base = run(model, inputs)
        model.transformer_blocks[1].difffit_gamma_ff.fill_(2.0)
        scaled = run(model, inputs)
    assert (scaled - base).abs().max() > 1e-3


def test_one_training_step_moves_only_the_selection() -> None:
    model = tiny_dit().train()
    disable_block_label_dropout(model)
    apply_difffit(model)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    chosen = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x, t, y = batch()
    loss = (run(model, (x, t, y)) - torch.ones(6, 8, 4, 4)).pow(2).mean()
    loss.backward()
    optimizer.step()
    params = dict(model.named_parameters())
    assert "transformer_blocks.0.norm1.linear.weight" in frozen
    assert all(torch.equal(params[n], value) for n, value in frozen.items())
    moved = {n for n, value in chosen.items() if not torch.equal(params[n], value)}
    assert "transformer_blocks.0.difffit_gamma_attn" in moved
    assert "transformer_blocks.3.norm1.emb.class_embedder.embedding_table.weight" in moved
    assert "transformer_blocks.2.attn1.to_q.bias" in moved


def test_gammas_survive_state_dict_round_trip() -> None:
    source = tiny_dit().eval()
    apply_difffit(source)
    with torch.no_grad():
        source.transformer_blocks[0].difffit_gamma_attn.uniform_(0.5, 1.5)
    state = source.state_dict()
    assert "transformer_blocks.0.difffit_gamma_attn" in state
    target = tiny_dit().eval()
    apply_difffit(target)
    target.load_state_dict(state)
    inputs = batch()
    with torch.no_grad():
        assert torch.equal(run(source, inputs), run(target, inputs))


def test_deep_copy_uses_its_own_gammas() -> None:
    model = tiny_dit().eval()
    apply_difffit(model)
    ema = copy.deepcopy(model)
    inputs = batch()
    with torch.no_grad():
        before = run(ema, inputs)
        model.transformer_blocks[0].difffit_gamma_attn.fill_(3.0)
        assert torch.equal(run(ema, inputs), before)


def test_trainable_state_dict_holds_only_the_selection_as_copies() -> None:
    model = tiny_dit()
    selection = apply_difffit(model)
    state = trainable_state_dict(model)
    assert set(state) == set(selection.names)
    assert sum(v.numel() for v in state.values()) == selection.trainable_params
    with torch.no_grad():
        model.proj_out_2.bias.add_(1.0)
    assert not torch.equal(state["proj_out_2.bias"], model.proj_out_2.bias)
    restored = tiny_dit()
    apply_difffit(restored)
    result = restored.load_state_dict(state, strict=False)
    assert result.unexpected_keys == []


def test_folding_gammas_keeps_outputs_and_leaves_a_plain_model() -> None:
    model = tiny_dit().eval()
    apply_difffit(model)
    with torch.no_grad():
        for block in model.transformer_blocks[:2]:
            block.difffit_gamma_attn.uniform_(0.5, 1.5)
            block.difffit_gamma_ff.uniform_(0.5, 1.5)
        inputs = batch()
        expected = run(model, inputs)
        fold_difffit_gammas(model)
        folded = run(model, inputs)
    torch.testing.assert_close(folded, expected, atol=1e-6, rtol=1e-5)
    assert not any("difffit" in name for name in model.state_dict())
    assert not any(len(m._forward_hooks) for m in model.modules())


def test_label_dropout_rate_is_close_to_p() -> None:
    labels = torch.arange(20000) % CLASSES
    dropped = drop_labels(labels, CLASSES, 0.1, torch.Generator().manual_seed(0))
    is_null = dropped == CLASSES
    assert abs(is_null.float().mean().item() - 0.1) < 0.01
    assert torch.equal(dropped[~is_null], labels[~is_null])


def test_label_dropout_extremes() -> None:
    labels = torch.arange(10)
    assert torch.equal(drop_labels(labels, CLASSES, 0.0), labels)
    assert torch.equal(drop_labels(labels, CLASSES, 1.0), torch.full((10,), CLASSES))
    with pytest.raises(ValueError, match="probability"):
        drop_labels(labels, CLASSES, 1.5)


def test_disabled_block_dropout_makes_train_mode_deterministic() -> None:
    inputs = batch(64)
    model = tiny_dit().train()
    torch.manual_seed(2)
    with torch.no_grad():
        # diffusers' default: every block drops labels on its own draw.
        assert not torch.equal(run(model, inputs), run(model, inputs))
        disable_block_label_dropout(model)
        assert torch.equal(run(model, inputs), run(model, inputs))
    tables = [m for m in model.modules() if isinstance(m, LabelEmbedding)]
    assert len(tables) == 4
    assert all(m.dropout_prob == 0 for m in tables)
    assert all(m.embedding_table.num_embeddings == CLASSES + 1 for m in tables)


def test_original_dit_embedders_are_shared_so_difffit_trains_one_class_table(tmp_path) -> None:
    """The original DiT has one class table; diffusers copies it into every block."""
    from mdd.diffusion.backbone import create_backbone, load_backbone

    torch.manual_seed(0)
    model = create_backbone("DiT-tiny/2", 1000, 4, 16)
    first = model.transformer_blocks[0].norm1.emb.state_dict()
    for block in model.transformer_blocks[1:]:  # as after converting an original checkpoint
        block.norm1.emb.load_state_dict(first)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
        for block in model.transformer_blocks[1:]:
            block.norm1.emb.load_state_dict(model.transformer_blocks[0].norm1.emb.state_dict())
    model.save_pretrained(tmp_path / "dit")
    unshared = load_backbone("DiT-tiny/2", tmp_path / "dit")
    x = torch.randn(2, 4, 16, 16)
    t = torch.tensor([10, 500])
    y = torch.tensor([193, 207])
    shared_emb = (
        unshared.transformer_blocks[1].norm1.emb is unshared.transformer_blocks[0].norm1.emb
    )
    assert shared_emb
    selection = apply_difffit(unshared)
    assert selection.by_group["class_embedding"] == 1001 * 32  # one table: 1000 classes + null
    with torch.no_grad():
        reference = model(hidden_states=x, timestep=t, class_labels=y).sample
        loaded = unshared.eval()(hidden_states=x, timestep=t, class_labels=y).sample
    assert torch.allclose(reference, loaded, atol=1e-5)
