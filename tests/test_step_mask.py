"""Per-step observation masks in the data contract (SplitData.mask): steps keep their time
positions, gaps are missing steps that no reader, statistic, protocol or model treats as data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from msakit.corrupt import parse_protocol
from msakit.data.batch import SplitData, collate, concat_splits
from msakit.data.dataset import MSADataset
from msakit.data.report import inspect_dataset
from msakit.errors import DataError
from msakit.models import create_model

L = {"text": 6, "audio": 8, "vision": 5}
D = {"text": 4, "audio": 3, "vision": 2}
POISON = 1e6  # what sits under a missing step: any use of it shows in every figure


def gapped(n: int = 20, seed: int = 0, poison: float = POISON) -> SplitData:
    """Audio with a gap in the middle of every sample, vision with leading missing steps;
    the content under missing steps is ``poison``."""
    rng = np.random.default_rng(seed)
    x = {m: rng.normal(size=(n, L[m], D[m])).astype("f4") for m in L}
    lengths = {"text": np.full(n, 6), "audio": np.full(n, 7), "vision": np.full(n, 5)}
    mask = {"audio": np.ones((n, 8), bool), "vision": np.ones((n, 5), bool)}
    mask["audio"][:, 2:4] = False
    mask["audio"][:, 7:] = False
    mask["vision"][:, :2] = False
    for m, mk in mask.items():
        x[m][~mk] = poison
    return SplitData(x=x, lengths=lengths, y=rng.uniform(-3, 3, n),
                     ids=[f"s{seed}_{i}" for i in range(n)], mask=mask)


def test_collate_keeps_gaps_in_place_and_hides_their_content():
    sd = gapped()
    b = collate(sd, [0, 1, 2])
    assert b.mask["audio"][0].tolist() == [True, True, False, False, True, True, True]
    assert b.mask["vision"][1].tolist() == [False, False, True, True, True]
    assert b.mask["text"].all() and b.present["vision"].all()
    assert float(b.x["audio"].abs().max()) < 100 and float(b.x["vision"].abs().max()) < 100
    # observed content at its own step, not shifted
    np.testing.assert_array_equal(b.x["audio"][0, 4].numpy(), sd.x["audio"][0, 4])
    # subset and concatenation keep the masks; a part without one joins as all-observed
    sub = sd.subset([3, 4])
    assert sub.observed("audio").tolist() == sd.observed("audio")[[3, 4]].tolist()
    plain = SplitData(x={m: np.ones((2, L[m] + 2, D[m]), "f4") for m in L},
                      lengths={m: np.full(2, L[m] + 1) for m in L}, y=[0, 0], ids=["p0", "p1"])
    cat = concat_splits([sub, plain])
    assert cat.x["audio"].shape[1] == 10 and set(cat.mask) == {"audio", "vision"}
    assert cat.observed("audio")[0].tolist() == [True] * 2 + [False] * 2 + [True] * 3 + [False] * 3
    assert cat.observed("audio")[2].tolist() == [True] * 9 + [False]
    assert (cat.observed("text") == (np.arange(8)[None] < [[6], [6], [7], [7]])).all()


def test_statistics_and_normaliser_skip_missing_steps():
    sd = gapped()
    ds = MSADataset("gapped", {"train": sd, "valid": gapped(6, 1), "test": gapped(6, 2)})
    rep = inspect_dataset(ds)["splits"]["train"]["modalities"]
    assert rep["audio"]["observed_steps"] == 20 * 5
    assert rep["audio"]["observed_step_rate"] == pytest.approx(5 / 8)
    assert rep["vision"]["max"] < 100
    model = create_model("late_fusion", D)
    model.fit_normalizer(sd)
    obs = sd.x["audio"][sd.observed("audio")]
    np.testing.assert_allclose(model.norm_mean_audio.numpy(), obs.mean(0), rtol=1e-5)


def test_frames_protocol_counts_only_observed_steps_and_never_restores_a_gap():
    sd = gapped(200)
    clean = collate(sd, np.arange(200))
    out = parse_protocol("frames:0.5")(clean, seed=0)
    kept = out.observed("audio")
    assert not (kept & ~clean.observed("audio")).any()
    share = float(kept.sum()) / float(clean.observed("audio").sum())
    assert share == pytest.approx(0.5, abs=0.05)
    assert out.corruption.missing_rate["audio"].mean() == pytest.approx(1 - share, abs=1e-6)


def test_model_prediction_ignores_content_under_gaps():
    torch.manual_seed(0)
    model = create_model("mult", D, d=8, heads=2, layers=1).eval()
    a, b = gapped(poison=POISON), gapped(poison=-3.0)
    with torch.no_grad():
        pa = model(collate(a, np.arange(8))).pred
        pb = model(collate(b, np.arange(8))).pred
    torch.testing.assert_close(pa, pb)
    assert torch.isfinite(pa).all()


@pytest.mark.parametrize("bad,words", [
    ({"audio": np.ones((20, 7), bool)}, r"mask\['audio'\] must be \(N, L\)=\(20, 8\) bool"),
    ({"audio": np.ones((20, 8), bool)}, r"mask\['audio'\] marks steps at or beyond "
                                        r"lengths\['audio'\] observed \(20 samples, the first id "
                                        r"'s0_0': length 7\)"),
    ({"sound": np.ones((20, 8), bool)}, r"mask has modality 'sound'"),
])
def test_bad_masks_are_refused_with_the_field_named(bad, words):
    sd = gapped()
    with pytest.raises(DataError, match=words):
        SplitData(x=sd.x, lengths=sd.lengths, y=sd.y, ids=sd.ids, mask=bad)


def test_rnn_last_is_the_packed_runs_final_state_whatever_sits_under_the_mask():
    """The padded fast path (models.layers.rnn_last) against the packed run it replaces: the
    same state after each row's last observed step, gaps and unequal lengths included, and no
    NaN under a mask reaches the weight gradients."""
    from msakit.models.layers import pack_observed, rnn_last

    torch.manual_seed(0)
    rnn = torch.nn.LSTM(3, 5, batch_first=True)
    x = torch.randn(4, 9, 3)
    obs = torch.ones(4, 9, dtype=torch.bool)
    obs[0, 6:] = False  # shorter
    obs[1, [2, 3, 7]] = False  # gaps
    obs[2, :4] = False  # leading missing steps
    _, (h, _) = rnn(pack_observed(x, obs))
    torch.testing.assert_close(rnn_last(rnn, x, obs), h[-1], atol=1e-5, rtol=1e-5)
    junk = x.masked_fill(~obs[..., None], float("nan"))
    out = rnn_last(rnn, junk, obs)
    torch.testing.assert_close(out, h[-1], atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in rnn.parameters())
    full = torch.ones(4, 9, dtype=torch.bool)  # nothing missing: no gather, no masking
    _, (hf, _) = rnn(x)
    torch.testing.assert_close(rnn_last(rnn, x, full), hf[-1], atol=1e-5, rtol=1e-5)
