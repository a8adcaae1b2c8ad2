"""The shared masked attention block (``msakit.models.layers.attention``): masks, empty rows,
dropout kinds and each option."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from msakit.models.layers.attention import (
    AttentionBlock,
    AttentionEncoder,
    MaskedAttention,
    attention_mask,
)

D, H = 8, 2
KEEP = torch.tensor(
    [[1, 1, 1, 1, 1, 1], [1, 0, 1, 0, 0, 1], [0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 0, 0]]
).bool()


def seeded(cls, *args, **kw):
    torch.manual_seed(0)
    return cls(*args, **kw)


def under_masks(t: torch.Tensor, keep: torch.Tensor, value: float) -> torch.Tensor:
    return t.masked_fill(~keep.unsqueeze(-1), value)


def test_attention_mask_shortcuts():
    assert attention_mask(torch.ones(2, 3, dtype=torch.bool)) == (None, None)
    mask, empty = attention_mask(KEEP[:2])
    assert empty is None and torch.equal(mask[:, 0, 0], KEEP[:2])
    mask, empty = attention_mask(KEEP)
    assert empty.tolist() == [False, False, True, False]
    assert mask[2, 0, 0].tolist() == [True] + [False] * 5  # the empty row attends key 0 only


@pytest.mark.parametrize("mode", ["key", "weights"])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("zero", [True, False])
def test_masked_keys_never_influence_the_output(mode, cross, zero):
    enc = seeded(
        AttentionEncoder, D, H, 2, zero_masked=zero, attn_dropout=0.5, dropout_mode=mode,
        null=cross,
    ).eval()
    x = torch.randn(4, 6 if not cross else 3, D)
    src = torch.randn(4, 6, D) if cross else None
    values = (0.0, 1e4, float("nan")) if zero else (0.0, 1e4)  # zeroing also stops NaN
    with torch.no_grad():
        if cross:
            outs = [enc(x, KEEP, under_masks(src, KEEP, v)) for v in values]
            rows = slice(None)
        else:
            outs = [enc(under_masks(x, KEEP, v), KEEP) for v in values]
            rows = KEEP
    for o in outs:
        assert torch.isfinite(o[rows]).all()
        torch.testing.assert_close(o[rows], outs[0][rows])


@pytest.mark.parametrize("mode", ["key", "weights"])
def test_attention_ignores_masked_keys_in_training_too(mode):
    attn = seeded(MaskedAttention, D, H, 0.5, mode).train()
    x, src = torch.randn(4, 3, D), torch.randn(4, 6, D)
    mask, empty = attention_mask(KEEP)
    outs = []
    for v in (0.0, 1e4):
        torch.manual_seed(1)
        outs.append(attn(x, mask, under_masks(src, KEEP, v)))
    rows = ~empty  # the empty row reads key 0 and is replaced by the block (next test)
    torch.testing.assert_close(outs[0][rows], outs[1][rows])


@pytest.mark.parametrize("null", [False, True])
def test_rows_without_observed_keys_are_finite_zero_or_null(null):
    blk = seeded(AttentionBlock, D, H, cross=True, null=null).eval()
    if null:
        nn.init.normal_(blk.null)
    x, src = torch.randn(4, 3, D, requires_grad=True), torch.randn(4, 6, D)
    mask, empty = attention_mask(KEEP)
    out = blk(x, mask, empty, src)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()
    # empty row 2: attention output is exactly zero / the null vector, whatever src holds
    h = x[2] + (blk.null if null else 0.0)
    want = h + blk.fc2(F.relu(blk.fc1(blk.norm2(h))))
    torch.testing.assert_close(out[2], want)


def test_encoder_rows_with_nothing_observed_stay_finite_in_training():
    enc = seeded(AttentionEncoder, D, H, 2, attn_dropout=0.9, dropout_mode="key").train()
    x = torch.randn(4, 6, D, requires_grad=True)
    out = enc(x, torch.zeros(4, 6, dtype=torch.bool))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_key_dropout_drops_whole_keys_and_renormalises():
    attn = MaskedAttention(D, H, dropout=0.6, dropout_mode="key").train()
    q, k = torch.randn(3, H, 5, 4), torch.randn(3, H, 7, 4)
    keep = torch.rand(3, 7) > 0.3
    keep[:, 0] = True
    v = torch.where(keep[:, None, :, None], 1.0, 100.0).expand(3, H, 7, 4)
    torch.manual_seed(0)
    out = attn._attend(q, k, v, keep[:, None, None, :])
    # convex combinations of observed values only: no rescaling, no masked key
    torch.testing.assert_close(out, torch.ones_like(out))
    # one draw per (sample, head, key): identical queries get identical answers
    q_same = torch.randn(3, H, 1, 4).expand(3, H, 5, 4)
    v_rand = torch.randn(3, H, 7, 4)
    out = attn._attend(q_same, k, v_rand, None)
    torch.testing.assert_close(out, out[:, :, :1].expand_as(out))
    assert not torch.allclose(out, attn.eval()._attend(q_same, k, v_rand, None))


def test_weight_dropout_drops_entries_with_rescaling():
    attn = MaskedAttention(D, H, dropout=0.5, dropout_mode="weights").train()
    q_same = torch.randn(2, H, 1, 4).expand(2, H, 6, 4)
    k, v = torch.randn(2, H, 9, 4), torch.ones(2, H, 9, 4)
    torch.manual_seed(0)
    out = attn._attend(q_same, k, v, None)
    assert not torch.allclose(out, torch.ones_like(out))  # kept weights scaled by 1 / (1 - p)
    assert not torch.allclose(out, out[:, :, :1].expand_as(out))  # per-entry draws
    attn.eval()
    torch.testing.assert_close(attn._attend(q_same, k, v, None), torch.ones_like(out))


def test_torch_init_and_layout_reproduce_torch_transformer_encoder():
    """like_torch == nn.TransformerEncoder(norm_first) + LayerNorm: same draws under a seed,
    same outputs in evaluation and, with dropout, in training."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(D, H, 16, 0.2, batch_first=True, norm_first=True)
    ref = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    ref_norm = nn.LayerNorm(D)
    ours = seeded(AttentionEncoder.like_torch, D, H, 2, 16, 0.2, 0.2)
    assert torch.equal(ours.layers[0].attn.in_proj.weight, ref.layers[0].self_attn.in_proj_weight)
    assert torch.equal(ours.layers[1].fc2.weight, ref.layers[1].linear2.weight)
    keep = KEEP[:2]
    x = torch.randn(2, 6, D)
    for train in (False, True):
        ref.train(train)
        ours.train(train)
        torch.manual_seed(1)
        want = ref_norm(ref(under_masks(x, keep, 0.0), src_key_padding_mask=~keep))
        torch.manual_seed(1)
        got = ours(x, keep)
        torch.testing.assert_close(got[keep], want[keep])


def test_init_schemes():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(D, H, batch_first=True)
    ours = seeded(MaskedAttention, D, H, init="torch")
    assert torch.equal(ours.in_proj.weight, mha.in_proj_weight)
    assert torch.equal(ours.out_proj.weight, mha.out_proj.weight)
    xav = seeded(MaskedAttention, D, H, init="xavier")
    assert not xav.in_proj.bias.any() and not xav.out_proj.bias.any()
    bound = (6 / (D + D)) ** 0.5
    assert xav.out_proj.weight.abs().max() <= bound
    torch.manual_seed(0)
    lin = nn.Linear(D, 3 * D, bias=False)
    assert torch.equal(seeded(MaskedAttention, D, H, bias=False, init="default").in_proj.weight,
                       lin.weight)
    blk = seeded(AttentionBlock, D, H, init="xavier")
    assert not blk.fc1.bias.any() and not blk.fc2.bias.any()


def test_sources_sum_answers_before_the_output_projection():
    attn = seeded(MaskedAttention, D, H, bias=False, sources=2).eval()
    x, s1, s2 = torch.randn(2, 3, D), torch.randn(2, 4, D), torch.randn(2, 5, D)
    w = attn.in_proj.weight

    def heads(t):
        return t.unflatten(-1, (H, -1)).transpose(1, 2)

    q = heads(x @ w[:D].T)
    a = sum(
        F.scaled_dot_product_attention(
            q, heads(s @ w[D + 2 * i * D : 2 * D + 2 * i * D].T),
            heads(s @ w[2 * D + 2 * i * D : 3 * D + 2 * i * D].T),
        )
        for i, s in enumerate((s1, s2))
    )
    want = attn.out_proj(a.transpose(1, 2).flatten(2))
    torch.testing.assert_close(attn(x, None, [s1, s2]), want)
    assert attn.in_proj.weight.shape == (5 * D, D) and attn.in_proj.bias is None


def test_n_query_dim_head_cross_norm_and_all_layers():
    enc = seeded(AttentionEncoder, D, H, 2, dim_head=3, ff=5, act="gelu", norm=False).eval()
    blk = enc.layers[0]
    assert blk.attn.in_proj.weight.shape == (3 * H * 3, D) and blk.fc1.out_features == 5
    x = torch.randn(2, 6, D)
    with torch.no_grad():
        full = enc(x, KEEP[:2], all_layers=True)
        part = enc(x, KEEP[:2], n_out=2)
    assert len(full) == 3 and part.shape == (2, 2, D)
    torch.testing.assert_close(part, full[-1][:, :2])
    shared, own = AttentionBlock(D, H), AttentionBlock(D, H, cross=True)
    n = sum(p.numel() for p in shared.parameters())
    assert sum(p.numel() for p in own.parameters()) == n + 2 * D and shared.norm_src is None


def test_residual_dropouts_and_clone():
    blk = seeded(AttentionBlock, D, H, res_dropout=1.0, ff_res_dropout=0.0).train()
    x = torch.randn(2, 4, D)
    # the attention branch is dropped entirely, the feed-forward branch kept
    torch.testing.assert_close(blk(x), x + blk.fc2(F.relu(blk.fc1(blk.norm2(x)))))
    blk.ff_res_dropout = 1.0
    torch.testing.assert_close(blk(x), x)
    enc = seeded(AttentionEncoder, D, H, 3, clone=True)
    a, b = (dict(layer.named_parameters()) for layer in enc.layers[::2])
    assert all(torch.equal(a[k], b[k]) for k in a)
    enc = seeded(AttentionEncoder, D, H, 2)
    assert not torch.equal(enc.layers[0].fc1.weight, enc.layers[1].fc1.weight)


def test_bad_options_raise():
    for kw in (dict(dropout_mode="cells"), dict(init="he")):
        with pytest.raises(ValueError, match=next(iter(kw))):
            MaskedAttention(D, H, **kw)
    with pytest.raises(ValueError, match="divisible"):
        MaskedAttention(10, 3)
    with pytest.raises(ValueError, match="act"):
        AttentionBlock(D, H, act="tanh")
