"""The model contract, checked for every registered model (``MODELS.names()``).

Each model runs on a tiny synthetic batch (text 8x16, audio 12x4, vision 10x6) with padded
sequences, dropped steps inside sequences and samples missing whole modalities:

- output ``pred`` has shape (B,) and is finite, in training and evaluation mode;
- ``loss`` returns a dict with ``total``; every term is a finite scalar;
- content under a False mask, or of an absent modality, does not change evaluation outputs;
- in evaluation a sample's prediction does not depend on the other samples in its batch (nor
  on the padding length they imply); ``on_fit_end`` is called first with an
  ``EngineContext`` so models with memory banks can fill them;
- the training loss sends a gradient to every trainable parameter;
- a tiny batch can be overfit;
- under bf16 autocast (``--precision bf16-mixed``) a training step is finite and an
  evaluation prediction is the fp32 one up to bf16 rounding;
- with ``n_classes=3`` the model classifies: ``pred`` is (B, 3) logits, every loss term is
  finite, the ``pred`` term is the cross-entropy, and a tiny batch can be fitted to 100%
  accuracy;
- modules are built in the canonical modality order: dims given in another dict order give
  the same state_dict under the same seed.

Gradient exemptions: a model whose parameters legitimately get no gradient from one batch
declares them in a class attribute ``grad_exempt = {"fnmatch pattern": "reason", ...}``; each
pattern must match a trainable parameter and carry a reason, and nothing else is exempt.

Small configs for speed go in ``TINY`` (model name -> config overrides; default none).
The last section holds MulT-specific checks.
"""

from __future__ import annotations

import copy
import fnmatch

import numpy as np
import pytest
import torch

from msakit.data.batch import Batch, SplitData, collate
from msakit.data.dataset import MSADataset
from msakit.models import MODELS, create_model
from msakit.train.engine import EngineContext

TINY: dict[str, dict] = {
    "mult": dict(d=16, heads=2, layers=1, mem_layers=1),
    "hme": dict(d=32, heads=2, enc_layers=1, latent_depth=1, hyper_depth=1),
    "lnln": dict(d=32, heads=2, dim_head=16, ff=64),
    "cyin": dict(d=32, latent=16, cra_hidden=32),
    "midg": dict(d=16, heads=2, adapter_dim=8, experts=2, expert_hidden=16, head_hidden=16),
    "dashfusion": dict(d=16, heads=2, enc_layers=1, align_heads=2, align_dim_head=8, bottleneck=4),
    "tfn": dict(text_hidden=8, audio_hidden=4, vision_hidden=4, text_out=4, post_fusion_dim=16,
                audio_dropout=0.0, vision_dropout=0.0),
    "lmf": dict(text_hidden=16, audio_hidden=8, vision_hidden=8, text_out=8, rank=4,
                audio_dropout=0.1, vision_dropout=0.1),
    "misa": dict(hidden=16, fusion_ff=32, dropout=0.0, fusion_dropout=0.0),
    "self_mm": dict(audio_hidden=4, vision_hidden=4, audio_out=4, vision_out=4,
                    post_fusion_dim=16, text_post_dim=4, audio_post_dim=4,
                    vision_post_dim=4, text_post_dropout=0.0, audio_post_dropout=0.0),
    "almt": dict(d=16, n_tokens=4, heads=2, dim_head=8, ff=16, ahl_depth=2, fusion_depth=1,
                 fusion_ff=16),
    "mmslf": dict(d=16, heads=2, dim_head=8, ff=32, dropout=0.0, fusion_heads=2, fusion_ff=16),
}
SHAPES = {"text": (8, 16), "audio": (12, 4), "vision": (10, 6)}
DIMS = {m: D for m, (_, D) in SHAPES.items()}
# (row in the split) -> modality -> steps dropped inside the observed length
GAPS = {0: {"text": [2], "audio": [3, 4]}, 4: {"vision": [1]}, 5: {"audio": [0, 5]}}
ABSENT = {1: ["audio"], 2: ["audio", "vision"], 3: ["text"], 6: ["vision"]}


def make_split(n: int, seed: int, absent: dict[int, list[str]] | None = None) -> SplitData:
    rng = np.random.default_rng(seed)
    x, lens, present = {}, {}, {}
    for m, (L, D) in SHAPES.items():
        lens[m] = rng.integers(max(1, L // 2), L + 1, n)
        lens[m][0] = L  # one full-length sample
        a = rng.normal(size=(n, L, D)).astype("f4")
        a[np.arange(L)[None, :] >= lens[m][:, None]] = 0
        x[m] = a
        present[m] = np.ones(n, bool)
    for row, mods in (absent or {}).items():
        for m in mods:
            present[m][row] = False
    y = rng.uniform(-3, 3, n).astype("f4")
    return SplitData(x, lens, y, [f"r{seed}_{i}" for i in range(n)], present=present)


SPLIT = make_split(8, 0, ABSENT)


def make_batch(idx: list[int], split: SplitData = SPLIT) -> Batch:
    """collate + the GAPS of the chosen rows (keyed by row, so any batch gets the same masks)."""
    b = collate(split, idx)
    for j, row in enumerate(idx):
        for m, steps in GAPS.get(row, {}).items():
            for s in steps:
                if s < b.mask[m].shape[1]:
                    b.mask[m][j, s] = False
    return b


def garbage_under_masks(b: Batch, seed: int = 1) -> Batch:
    g = torch.Generator().manual_seed(seed)
    x = {}
    for m, t in b.x.items():
        noise = torch.randn(t.shape, generator=g) * 100
        x[m] = torch.where(b.observed(m).unsqueeze(-1), t, noise)
    return b.replace(x=x)


def context(batch_size: int = 4) -> EngineContext:
    ds = MSADataset(
        "contract",
        {
            "train": make_split(12, 10, {2: ["audio"], 5: ["text"]}),
            "valid": make_split(4, 11),
            "test": make_split(4, 12),
        },
    )
    return EngineContext(dataset=ds, batch_size=batch_size, seed=0)


def build(name: str, dims: dict[str, int] | None = None, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, dims or DIMS, **{**TINY.get(name, {}), **extra})


def ready(name: str) -> torch.nn.Module:
    """A model in evaluation mode after the engine's end-of-fit hook."""
    model = build(name)
    model.on_fit_end(context())
    return model.eval()


def predict(model, b: Batch) -> torch.Tensor:
    with torch.no_grad():
        return model(b).pred


ALL = list(range(len(SPLIT)))
# the built-in models (a test that registers a helper model must not add it to this list)
NAMES = [n for n in MODELS.names() if MODELS.get(n).cls.__module__.startswith("msakit.models.")]


def test_registry_has_the_contract_models():
    assert {"late_fusion", "mult"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_output_shape_finite_and_loss_terms(name):
    model = build(name)
    b = make_batch(ALL)
    model.train()
    out = model(b)
    assert out.pred.shape == (b.size,)
    assert torch.isfinite(out.pred).all()
    losses = model.loss(out, b)
    assert "total" in losses
    for k, v in losses.items():
        assert isinstance(v, torch.Tensor) and v.dim() == 0, f"loss term {k!r} is not a scalar"
        assert torch.isfinite(v), f"loss term {k!r} = {v}"
    model.on_fit_end(context())
    p = predict(model.eval(), b)
    assert p.shape == (b.size,) and torch.isfinite(p).all()


@pytest.mark.parametrize("name", NAMES)
def test_masked_and_absent_content_is_ignored(name):
    model = ready(name)
    b = make_batch(ALL)
    p1 = predict(model, b)
    p2 = predict(model, garbage_under_masks(b))
    torch.testing.assert_close(p1, p2, atol=1e-5, rtol=1e-5)
    # and the same garbage would matter if it were observed
    seen = {
        "mask": {m: torch.ones_like(k) for m, k in b.mask.items()},
        "present": {m: torch.ones_like(p) for m, p in b.present.items()},
    }
    p3 = predict(model, b.replace(**seen))
    assert not torch.allclose(p3, predict(model, garbage_under_masks(b).replace(**seen)))


@pytest.mark.parametrize("name", NAMES)
def test_prediction_independent_of_batch_mates(name):
    model = ready(name)
    p = predict(model, make_batch(ALL))
    alone = torch.cat([predict(model, make_batch([i])) for i in ALL])
    torch.testing.assert_close(alone, p, atol=1e-5, rtol=1e-4)
    rev = ALL[::-1]
    torch.testing.assert_close(predict(model, make_batch(rev)), p[rev], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_gradients_reach_every_trainable_parameter(name):
    model = build(name).train()
    exempt = dict(getattr(model, "grad_exempt", {}) or {})
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for pat, why in exempt.items():
        assert isinstance(why, str) and why.strip(), f"grad_exempt[{pat!r}] needs a reason"
        assert any(fnmatch.fnmatch(n, pat) for n, _ in named), f"grad_exempt {pat!r} is stale"
    b = make_batch(ALL)
    torch.manual_seed(0)
    model.loss(model(b), b)["total"].backward()
    dead = [
        n
        for n, p in named
        if (p.grad is None or not p.grad.abs().sum() > 0)
        and not any(fnmatch.fnmatch(n, pat) for pat in exempt)
    ]
    assert not dead, f"no gradient reaches: {dead}"


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_step_and_prediction(name):
    """``--precision bf16-mixed``: a training step under CPU autocast gives a finite loss and
    finite gradients, and an evaluation prediction under autocast is the fp32 one up to bf16
    rounding (and not bit-identical: bf16 was really used)."""
    model = build(name).train()
    b = make_batch(ALL)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.loss(model(b), b)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    losses["total"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    model.zero_grad()
    model.on_fit_end(context())
    model.eval()
    p32 = predict(model, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        p16 = predict(model, b).float()
    assert not torch.equal(p16, p32)
    torch.testing.assert_close(p16, p32, atol=0.05, rtol=0.05)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_batch_can_be_overfit(name):
    model = build(name)
    b = make_batch(ALL)
    model.on_fit_end(context())
    err0 = (predict(model.eval(), b) - b.y).abs().mean().item()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    model.on_train_epoch_start(0, context())
    torch.manual_seed(0)
    for _ in range(80):
        opt.zero_grad()
        model.loss(model(b), b)["total"].backward()
        opt.step()
    model.on_fit_end(context())
    err = (predict(model.eval(), b) - b.y).abs().mean().item()
    assert err < 0.35 * err0, f"L1 {err0:.3f} -> {err:.3f} after 80 Adam steps"


# ------------------------------------------------------------------ classification heads
K = 3
Y_CLASS = torch.arange(len(ALL)) % K  # arbitrary labels: fitting them means memorising


@pytest.mark.parametrize("name", NAMES)
def test_classification_heads_shapes_loss_and_fit(name):
    import torch.nn.functional as F

    model = build(name, n_classes=K)
    assert model.n_classes == K and model.out_dim == K
    b = make_batch(ALL).replace(y=Y_CLASS.clone())
    model.train()
    out = model(b)
    assert out.pred.shape == (b.size, K) and torch.isfinite(out.pred).all()
    losses = model.loss(out, b)
    for k, v in losses.items():
        assert v.dim() == 0 and torch.isfinite(v), f"loss term {k!r} = {v}"
    torch.testing.assert_close(losses["pred"], F.cross_entropy(out.pred, b.y))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.on_train_epoch_start(0, context())
    acc = 0.0
    for step in range(1, 61):
        model.train()
        opt.zero_grad()
        model.loss(model(b), b)["total"].backward()
        opt.step()
        if step % 15 == 0:
            model.on_fit_end(context())
            logits = predict(model.eval(), b)
            assert logits.shape == (b.size, K) and torch.isfinite(logits).all()
            acc = (logits.argmax(1) == b.y).float().mean().item()
            if acc == 1.0:
                break
    assert acc == 1.0, f"train accuracy {acc:.3f} after {step} Adam steps on 8 samples"


# ------------------------------------------------------------------ canonical modality order
@pytest.mark.parametrize("name", NAMES)
def test_modules_built_in_canonical_modality_order(name):
    reordered = {m: DIMS[m] for m in ("vision", "text", "audio")}
    assert list(reordered) != list(DIMS)
    a, b = build(name).state_dict(), build(name, dims=reordered).state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the models agree on a batch (whose dict order is the dataset's)
    ma, mb = build(name).eval(), build(name, dims=reordered).eval()
    batch = make_batch(ALL)
    torch.testing.assert_close(predict(ma, batch), predict(mb, batch))


# ------------------------------------------------------------------ MulT-specific checks
def test_mult_size_matches_mmsa_mosi():
    """MMSA 2.2.1's MulT on MOSI (768/5/20) has 2,571,551 parameters; ours adds the null
    states (6 pairs x 4 layers x 50) and missing states (3 x 100)."""
    m = create_model("mult", {"text": 768, "audio": 5, "vision": 20})
    assert sum(p.numel() for p in m.parameters()) == 2_571_551 + 6 * 4 * 50 + 3 * 100


def test_tfn_size_matches_mmsa_mosi():
    """MMSA 2.2.1's TFN on MOSI (768/5/20; hidden 128/32/128, text_out 32, post-fusion 64) has
    9,497,045 parameters, 2 of them its frozen output range/shift (buffers here); ours adds
    the missing vectors (text_out 32 + audio 32 + vision 128). With 3 classes MMSA has
    9,497,175."""
    dims = {"text": 768, "audio": 5, "vision": 20}
    m = create_model("tfn", dims)
    assert sum(p.numel() for p in m.parameters()) == 9_497_045 - 2 + (32 + 32 + 128)
    m = create_model("tfn", dims, n_classes=3)
    assert sum(p.numel() for p in m.parameters()) == 9_497_175 - 2 + (32 + 32 + 128)


def test_lmf_size_matches_mmsa_mosi():
    """MMSA 2.2.1's LMF on MOSI (768/5/20; hidden 128/16/128, text_out 64, rank 3) has 505,071
    parameters (506,339 with 3 classes); ours adds the missing vectors (64 + 16 + 128)."""
    dims = {"text": 768, "audio": 5, "vision": 20}
    m = create_model("lmf", dims)
    assert sum(p.numel() for p in m.parameters()) == 505_071 + (64 + 16 + 128)
    m = create_model("lmf", dims, n_classes=3)
    assert sum(p.numel() for p in m.parameters()) == 506_339 + (64 + 16 + 128)


def test_mult_no_nan_with_empty_modality_and_heavy_key_dropout():
    model = build("mult", attn_dropout=0.95, attn_dropout_audio=0.95, attn_dropout_vision=0.95)
    b = make_batch(ALL)
    b = b.replace(
        present={**b.present, "audio": torch.zeros_like(b.present["audio"])},
        mask={**b.mask, "audio": torch.zeros_like(b.mask["audio"])},
    )
    model.train()
    out = model(b)
    out.pred.sum().backward()
    assert torch.isfinite(out.pred).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert predict(model.eval(), b).isfinite().all()


def test_mult_weights_dropout_mode_and_last_pool_run():
    for extra in (dict(attn_dropout_mode="weights"), dict(pool="last")):
        model = build("mult", **extra).train()
        b = make_batch(ALL)
        assert model(b).pred.isfinite().all()
        model.eval()
        torch.testing.assert_close(
            predict(model, b), predict(model, garbage_under_masks(b)), atol=1e-5, rtol=1e-5
        )


def test_last_observed_picks_the_last_true_step():
    from msakit.models.mult import last_observed

    h = torch.arange(12.0).view(2, 3, 2)
    obs = torch.tensor([[True, True, False], [False, False, False]])
    torch.testing.assert_close(last_observed(h, obs), torch.tensor([[2.0, 3.0], [6.0, 7.0]]))


def test_masked_attention_matches_torch_multihead_attention():
    from msakit.models.layers.attention import MaskedAttention, attention_mask

    torch.manual_seed(0)
    d, heads = 12, 3
    ours = MaskedAttention(d, heads).eval()
    ref = torch.nn.MultiheadAttention(d, heads, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.in_proj.weight)
        ref.in_proj_bias.copy_(ours.in_proj.bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    x, src = torch.randn(3, 5, d), torch.randn(3, 7, d)
    obs = torch.tensor([[1] * 7, [1, 1, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1]]).bool()
    mask, empty = attention_mask(obs)
    assert empty is None
    with torch.no_grad():
        want = ref(x, src, src, key_padding_mask=~obs)[0]
        torch.testing.assert_close(ours(x, mask, src), want, atol=1e-5, rtol=1e-5)
        obs_x = torch.ones(3, 5, dtype=torch.bool)
        want_self = ref(x, x, x, key_padding_mask=~obs_x)[0]
        torch.testing.assert_close(
            ours(x, attention_mask(obs_x)[0]), want_self, atol=1e-5, rtol=1e-5
        )


def test_mult_config_errors_name_the_field():
    with pytest.raises(ValueError, match="heads"):
        create_model("mult", DIMS, d=10, heads=3)
    with pytest.raises(ValueError, match="pool"):
        create_model("mult", DIMS, pool="max")
    with pytest.raises(ValueError, match="attn_dropout_mode"):
        create_model("mult", DIMS, attn_dropout_mode="cells")
    with pytest.raises(ValueError, match="two modalities"):
        create_model("mult", {"text": 16})


def test_model_specific_config_checks_raise_config_error():
    from msakit.errors import ConfigError
    from msakit.models.mult import MulTConfig

    cases = [
        ("mult", dict(d=32), "d=32 must be divisible by heads=10"),  # the README's example
        ("mult", dict(conv_kernel=4), "conv_kernel=4 must be odd"),
        ("mult", dict(pool="max"), "pool='max'"),
        ("mult", dict(attn_dropout_mode="cells"), "attn_dropout_mode='cells'"),
        ("late_fusion", dict(d=30, heads=4), "d=30 must be divisible by heads=4"),
        ("lnln", dict(dominant="video"), "dominant='video'"),
        ("lnln", dict(d=30, heads=4), "d=30 must be divisible by heads=4"),
        ("hme", dict(pool="last"), "pool='last'"),
        ("hme", dict(retriever="faiss-not-installed"), "retriever='faiss-not-installed'.*exact"),
        ("hme", dict(k=0), "k=0"),
        ("hme", dict(kernel_size=2), "kernel_size=2 must be odd"),
        ("hme", dict(weight_lb=0.5, weight_ub=0.4), "weight_lb"),
        ("cyin", dict(d=30, heads=4), "d=30 must be divisible by heads=4"),
        ("cyin", dict(latent=15, fusion_heads=2), "latent=15 must be divisible by fusion_heads=2"),
    ]
    for name, kw, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            create_model(name, DIMS, **kw)
    # a config built directly (not through make_config) is checked by the model too
    with pytest.raises(ConfigError, match="divisible"):
        create_model("mult", DIMS, config=MulTConfig(d=32))
    # the dominant modality must be one the dataset has
    with pytest.raises(ConfigError, match="dominant"):
        create_model("lnln", {"audio": 4, "vision": 6}, **{**TINY["lnln"], "dominant": "text"})
    # "auto" (the default) takes text when present, else the first modality
    assert create_model("lnln", {"audio": 4, "vision": 6}, **TINY["lnln"]).dominant == "audio"
    assert create_model("lnln", DIMS, **TINY["lnln"]).dominant == "text"
    # valid alternatives build
    create_model("mult", DIMS, d=30)
    create_model("lnln", DIMS, dominant="audio", **TINY["lnln"])


def test_mult_state_dict_roundtrip_gives_same_predictions():
    model = build("mult").eval()
    torch.manual_seed(5)
    other = create_model("mult", DIMS, **TINY["mult"]).eval()
    b = make_batch(ALL)
    assert not torch.allclose(predict(other, b), predict(model, b))
    other.load_state_dict(copy.deepcopy(model.state_dict()))
    torch.testing.assert_close(predict(other, b), predict(model, b))


# ------------------------------------------------------------------ MMSA baselines' sizes (issue 13)
MOSI_DIMS = {"text": 768, "audio": 5, "vision": 20}


def n_params(name: str, **kw) -> int:
    return sum(p.numel() for p in create_model(name, MOSI_DIMS, **kw).parameters())


def test_misa_size_matches_mmsa_mosi():
    """MMSA 2.2.1's MISA on MOSI (768/5/20, hidden 128, BERT excluded) has 1,138,033
    parameters (1,138,803 with 3 classes). msakit drops its unused ``tlayer_norm`` (2 x 1536)
    and its never-trained ``sp_discriminator`` (128 x 4 + 4) and adds the missing vectors
    (3 x 128)."""
    assert n_params("misa") == 1_138_033 - 2 * 1536 - (128 * 4 + 4) + 3 * 128
    assert n_params("misa", n_classes=3) == 1_138_803 - 2 * 1536 - (128 * 4 + 4) + 3 * 128
    assert n_params("misa", preset="paper") == n_params("misa")


def test_self_mm_size_matches_mmsa_mosi():
    """MMSA 2.2.1's Self-MM on MOSI (768/5/20, BERT excluded: the text representation is the
    768-d feature itself) has 159,332 parameters; msakit adds the missing vectors (text 768 +
    audio 16 + vision 32). MMSA's heads are scalar only; ours give K logits when classifying
    (K = 3: each of the 4 heads' last layer gains 2 x (its width + 1))."""
    assert n_params("self_mm") == 159_332 + 768 + 16 + 32
    assert n_params("self_mm", preset="paper") == n_params("self_mm")
    assert n_params("self_mm", n_classes=3) == n_params("self_mm") + 2 * (128 + 32 + 16 + 32 + 4)


def test_almt_size_matches_mmsa_mosi():
    """MMSA master's ALMT on MOSI (768/5/20, BERT excluded) has 2,603,649 parameters. msakit
    has no learned position tables for the step sequences ((50 + 8 + 375 + 8 + 500 + 8) x 128:
    sinusoidal positions for steps, the 8 tokens start from N(0, 1)) and one LayerNorm where
    MMSA normalises q, k and v separately (5 self-attention layers x 2 x 256, 2 cross layers x
    256); it adds nothing for missing modalities."""
    lost = (50 + 8 + 375 + 8 + 500 + 8) * 128 + 5 * 2 * 256 + 2 * 256
    assert n_params("almt") == 2_603_649 - lost == 2_479_105
    assert n_params("almt", preset="paper") == n_params("almt")
