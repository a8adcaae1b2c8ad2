"""MIDG-specific checks (the generic model contract runs in test_model_contract.py): the
invariance terms read domain labels in ``loss`` only, the adversarial term reverses the
encoder's gradient, CORAL is 0 for matching domains, and errors name the field."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msakit.data.batch import collate
from msakit.data.sources.synthetic import make_synthetic_domains
from msakit.errors import ConfigError
from msakit.models import create_model
from msakit.models.midg import coral

torch.set_num_threads(1)
TINY = dict(d=16, heads=2, adapter_dim=8, experts=2, expert_hidden=16, head_hidden=16)


@pytest.fixture(scope="module")
def batch():
    ds = make_synthetic_domains(seed=0, n=(8, 2, 2))
    return ds, collate(ds.splits["train"], np.arange(24))


def test_invariance_needs_domain_labels_and_forward_ignores_them(batch):
    ds, b = batch
    for inv in ("cdann", "dann", "coral"):
        torch.manual_seed(0)
        m = create_model("midg", ds.dims, invariance=inv, **TINY).eval()
        out = m(b)
        losses = m.loss(out, b)
        assert set(losses) == {"total", "pred", "invariance"}
        assert losses["invariance"] > 0, inv
        nolabel = b.replace(domain=None)
        assert m.loss(m(nolabel), nolabel)["invariance"] == 0
        # forward never reads the domain: same predictions with other labels
        torch.testing.assert_close(m(b.replace(domain=torch.zeros_like(b.domain))).pred, out.pred)
    m = create_model("midg", ds.dims, invariance="none", **TINY)
    assert m.loss(m(b), b)["invariance"] == 0 and not hasattr(m, "domain_clf")


def test_adversary_reverses_the_encoders_gradient(batch):
    ds, b = batch

    def grads(alpha):
        torch.manual_seed(0)
        m = create_model("midg", ds.dims, grl_alpha=alpha, dropout=0.0, **TINY).train()
        m.invariance(m(b), b).backward()
        return m.joint[0].weight.grad.clone(), m.domain_clf[0].weight.grad.clone()

    enc_pos, clf_pos = grads(1.0)
    enc_neg, clf_neg = grads(0.5)
    torch.testing.assert_close(enc_neg, 0.5 * enc_pos)  # encoder: -alpha times the CE gradient
    torch.testing.assert_close(clf_neg, clf_pos)  # the classifier itself descends the CE


def test_coral_by_hand():
    r = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
    same = torch.cat([r, r])
    dom = torch.tensor([0] * 40 + [1] * 40)
    assert coral(same, dom).abs() < 1e-6
    shifted = torch.cat([r, r + 1.0])
    # each domain's mean is 0.5 away from the batch's in each of 3 dims (3 * 0.25), and the
    # batch's (biased) covariance has 0.25 more in each of its 9 entries (9 * 0.25^2 / (4 * 9))
    torch.testing.assert_close(coral(shifted, dom), torch.tensor(0.75 + 0.015625), atol=1e-5, rtol=1e-5)
    assert coral(r, torch.zeros(40, dtype=torch.long)) == 0  # one domain: nothing to align


def test_config_and_domain_errors(batch):
    ds, b = batch
    with pytest.raises(ConfigError, match="invariance='irm'"):
        create_model("midg", ds.dims, invariance="irm")
    with pytest.raises(ConfigError, match="d=30 must be divisible by heads=4"):
        create_model("midg", ds.dims, d=30, heads=4)
    m = create_model("midg", ds.dims, domain_slots=2, **TINY)
    with pytest.raises(ConfigError, match="domain_slots=2"):
        m.loss(m(b), b)
    # one modality: no adapter, still runs
    one = create_model("midg", {"text": ds.dims["text"]}, **TINY)
    assert not one.use_adapter
    tb = b.replace(x={"text": b.x["text"]}, mask={"text": b.mask["text"]},
                   present={"text": b.present["text"]})
    assert one(tb).pred.shape == (b.size,)
