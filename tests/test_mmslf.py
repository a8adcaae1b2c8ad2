"""MMSLF: teacher -> student in one ``msakit.train`` call (the teacher reused, not retrained),
named distillation terms, the ``plain`` ablation without a teacher, prompt-free evaluation,
refusals (no cue texts, a changed teacher) and the prompt's effect on the teacher.

Cue texts are written here from the label (train) or a fixed sentence (valid/test), as the
offline provider of ``msakit.prompts`` does from transcript and label; the prompt encoder is
the real packaged MiniLM."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

import msakit
import msakit.train.engine as engine
from msakit.data.batch import collate
from msakit.data.registry import load_dataset
from msakit.errors import ConfigError, RunError
from msakit.models import create_model
from msakit.train.api import config_fingerprint as config_hash
from msakit.train.engine import load_run_model, predict

SMALL = dict(d=16, heads=2, dim_head=8, ff=32, fusion_heads=2, fusion_ff=16, teacher_depth=2,
             teacher_fusion_depth=1, depth=1, fusion_depth=1, prompt_tokens=8, prompt_heads=2,
             prompt_ff=16, batch_size=32, dropout=0.1)
WORDS = ("very negative", "negative", "neutral", "positive", "very positive")


@contextlib.contextmanager
def counting_fits():
    """The run folders the engine fits (not reuses) inside the block, in order."""
    fits: list[str] = []
    orig = engine._fit

    def counting(model_name, dataset, seed, run_dir, *a, **k):
        fits.append(str(run_dir))
        return orig(model_name, dataset, seed, run_dir, *a, **k)

    engine._fit = counting
    try:
        yield fits
    finally:
        engine._fit = orig


def with_prompts(ds, train_text=None):
    """``ds`` with cue texts, under another name as ``msakit.prompts.attach_prompts`` does (the
    content hash covers the cue texts; the bare dataset keeps its name and hash)."""
    splits = {}
    for name, sp in ds.splits.items():
        text = [f"the speaker seems {WORDS[int(np.clip(round(float(y) + 2), 0, 4))]}"
                if name == "train" else "a short clip of someone talking" for y in sp.y]
        if name == "train" and train_text is not None:
            text = [train_text] * len(sp)
        splits[name] = dataclasses.replace(sp, prompt_text=text)
    return dataclasses.replace(ds, name=f"{ds.name}+cues", splits=splits)


@pytest.fixture(scope="module")
def prompted():
    return with_prompts(load_dataset("synthetic-tiny"))


PROMPT_ENCODES: list[int] = []  # cue texts the frozen prompt encoder read during `run`


@pytest.fixture(scope="module")
def run(prompted, tmp_path_factory):
    """One teacher -> student run (2 epochs each), shared by the tests that only read it."""
    from transformers import BertModel  # the packaged MiniLM's class

    import msakit.models.mmslf as mmslf

    out = tmp_path_factory.mktemp("mmslf") / "run"
    mmslf._PROMPT_STATES.clear()  # as in a fresh process
    forward = BertModel.forward

    def counting(self, *a, **k):
        PROMPT_ENCODES.append(1)
        return forward(self, *a, **k)

    BertModel.forward = counting
    try:
        with counting_fits() as fits:
            msakit.train("mmslf", prompted, out, seeds=[1], epochs=2, overrides=SMALL)
    finally:
        BertModel.forward = forward
    return out, fits


def test_each_cue_text_is_encoded_once_per_process(run, prompted):
    """The frozen prompt encoder reads each distinct cue text once: the student's teacher
    (loaded from disk in the same command) reuses the teacher stage's states."""
    distinct = {t for sp in prompted.splits.values() for t in sp.prompt_text}
    assert len(PROMPT_ENCODES) == len(distinct) == 6


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_one_call_trains_the_teacher_then_the_student(run):
    out, fits = run
    seed = out / "seed_1"
    assert fits == [str(seed / "teacher"), str(seed)]  # teacher first
    for d in (seed, seed / "teacher"):
        assert (d / "model.pt").exists() and (d / "metrics.json").exists()
    teacher_cfg = json.loads((seed / "teacher" / "config.json").read_text())
    student_cfg = json.loads((seed / "config.json").read_text())
    assert teacher_cfg["model_config"]["stage"] == "teacher"
    assert teacher_cfg["model_config"]["lr"] == SMALL.get("teacher_lr", 2e-4)
    mc = student_cfg["model_config"]
    assert mc["stage"] == "student"
    assert mc["teacher_config"] == teacher_cfg["model_config"]
    assert mc["teacher_config_hash"] == config_hash(teacher_cfg)
    # the teacher's weights are not in the student's
    state = torch.load(seed / "model.pt", weights_only=True)
    assert not any(k.startswith(("prompt", "_teacher")) for k in state)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["_meta"]["seeds"] == [1]  # the teacher folder is not a seed


def test_distillation_terms_are_logged_by_name(run):
    out, _ = run
    student = rows(out / "seed_1" / "logs" / "metrics.csv")
    teacher = rows(out / "seed_1" / "teacher" / "logs" / "metrics.csv")
    train_rows = [r for r in student if r.get("train/total")]
    assert len(train_rows) == 2
    for r in train_rows:
        att, hid = float(r["train/distill_attention"]), float(r["train/distill_hidden"])
        pred, total = float(r["train/pred"]), float(r["train/total"])
        assert att > 0 and hid > 0 and np.isfinite([att, hid]).all()
        # alpha 1, beta 1, gamma 0.2 (epoch means of each term: the sum holds for the means)
        assert total == pytest.approx(pred + att + 0.2 * hid, rel=1e-4)
    assert "train/distill_attention" not in teacher[0] and "train/pred" in teacher[0]


def test_a_finished_teacher_is_reused_not_retrained(run, prompted, tmp_path):
    """The student was killed (no weights, no metrics): the same call trains only the student,
    with the teacher that is there; the same call on a finished run trains nothing."""
    src, _ = run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    teacher = out / "seed_1" / "teacher"
    before = (teacher / "model.pt").read_bytes(), (teacher / "metrics.json").read_bytes()
    for name in ("model.pt", "metrics.json"):
        (out / "seed_1" / name).unlink()
    shutil.rmtree(out / "seed_1" / "ckpt")
    with counting_fits() as fits:
        msakit.train("mmslf", prompted, out, seeds=[1], epochs=2, overrides=SMALL)
        assert fits == [str(out / "seed_1")]
        msakit.train("mmslf", prompted, out, seeds=[1], epochs=2, overrides=SMALL)
        assert fits == [str(out / "seed_1")]
    after = (teacher / "model.pt").read_bytes(), (teacher / "metrics.json").read_bytes()
    assert before == after
    # the retrained student equals the first one (same teacher, same seed)
    assert (out / "seed_1" / "metrics.json").read_bytes() == (
        src / "seed_1" / "metrics.json").read_bytes()


def test_other_prompts_are_not_read_by_a_reused_teacher(run, prompted, tmp_path):
    src, _ = run
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    for p in (out / "seed_1").iterdir():  # only the teacher is left
        if p.name != "teacher":
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    changed = with_prompts(load_dataset("synthetic-tiny"), train_text="no cue")
    with pytest.raises(RunError, match=r"teacher holds a finished run with another config "
                                       r"\(dataset_hash"):
        msakit.train("mmslf", changed, out, seeds=[1], epochs=2, overrides=SMALL)


def test_a_changed_teacher_is_refused(run):
    out, _ = run
    cfg = json.loads((out / "seed_1" / "config.json").read_text())
    model = create_model("mmslf", cfg["dims"], **{**cfg["overrides"],
                                                  "teacher_config_hash": "0" * 64})
    with pytest.raises(RunError, match="teacher's config"):
        model.load_teacher(out / "seed_1", load_run_model, config_hash)
    model = create_model("mmslf", cfg["dims"], **cfg["overrides"])
    model.load_teacher(out / "seed_1", load_run_model, config_hash)  # the recorded one fits
    assert model.teacher is not None and not any(p.requires_grad for p in model.teacher.parameters())


def test_evaluation_needs_no_prompts_and_gives_the_same_predictions(run, prompted):
    out, _ = run
    model, _ = load_run_model(out / "seed_1")
    bare = load_dataset("synthetic-tiny")
    assert bare.splits["test"].prompt_text is None
    a = predict(model, prompted.splits["test"])["pred"]
    b = predict(model, bare.splits["test"])["pred"]
    np.testing.assert_array_equal(a, b)
    # and through the evaluation command's code (the dataset is reloaded from its name)
    from msakit.evaluate.runs import evaluate_runs

    s = evaluate_runs(out, dataset="synthetic-tiny", protocol="modality:0.5")
    assert np.isfinite(s["test"]["mae"]["mean"]) and s["test"]["mae"]["n"] == 1


def test_plain_is_the_student_network_without_a_teacher(prompted, tmp_path):
    out = tmp_path / "plain"
    msakit.train("mmslf", prompted, out, seeds=[1], epochs=1, overrides={**SMALL, "stage": "plain"})
    assert not (out / "seed_1" / "teacher").exists()
    cfg = json.loads((out / "seed_1" / "config.json").read_text())["model_config"]
    assert cfg["teacher_config"] is None and cfg["teacher_config_hash"] == ""
    log = rows(out / "seed_1" / "logs" / "metrics.csv")
    assert "train/distill_hidden" not in log[0] and "train/pred" in log[0]
    # the same parameters as the student network
    dims = prompted.dims
    s_keys = set(create_model("mmslf", dims, **SMALL).state_dict())
    assert set(create_model("mmslf", dims, **{**SMALL, "stage": "plain"}).state_dict()) == s_keys


def test_without_cue_texts_the_teacher_and_student_refuse(tmp_path):
    bare = load_dataset("synthetic-tiny")
    for stage in ("student", "teacher"):
        with pytest.raises(ConfigError, match=rf"stage={stage}: .*prompt_text.*stage=plain"):
            msakit.train("mmslf", bare, tmp_path / stage, seeds=[1], epochs=1,
                         overrides={**SMALL, "stage": stage})
        assert not (tmp_path / stage / "seed_1").exists()


def test_the_prompt_changes_the_teacher_even_on_text_only_samples(prompted):
    torch.manual_seed(0)
    teacher = create_model("mmslf", prompted.dims, **{**SMALL, "stage": "teacher"}).eval()
    split = prompted.splits["train"].subset(np.arange(6))
    split.present["audio"][:] = False  # text only: no audio or vision steps to modulate
    split.present["vision"][:] = False
    b1 = collate(teacher.prepare_split(split), np.arange(6))
    other = split.subset(np.arange(6))
    other.prompt_text = ["the speaker seems furious and sad"] * 6
    b2 = collate(teacher.prepare_split(other), np.arange(6))
    with torch.no_grad():
        p1, p2 = teacher(b1).pred, teacher(b2).pred
        p0 = teacher(b1.replace(prompt_ids=None, prompt_ids_mask=None)).pred
    assert not torch.allclose(p1, p2) and not torch.allclose(p1, p0)
    # prompt tokens under a False mask do not matter
    ids = b1.prompt_ids.clone()
    ids[~b1.prompt_ids_mask] = 7
    with torch.no_grad():
        torch.testing.assert_close(teacher(b1.replace(prompt_ids=ids)).pred, p1)


def test_prompt_states_memoised_under_bf16_are_never_read_in_fp32(prompted):
    """The frozen prompt encoder's memo is shared by every MMSLF model of a process, but a
    bf16-autocast run keeps its own: an fp32 prediction after one is the fresh fp32 one."""
    import msakit.models.mmslf as mmslf

    torch.manual_seed(0)
    teacher = create_model("mmslf", prompted.dims, **{**SMALL, "stage": "teacher"}).eval()
    b = collate(teacher.prepare_split(prompted.splits["valid"]), np.arange(8))
    mmslf._PROMPT_STATES.clear()
    with torch.no_grad():
        fresh = teacher(b).pred
        mmslf._PROMPT_STATES.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            teacher(b)
        after_bf16 = teacher(b).pred
    assert torch.equal(after_bf16, fresh)


def test_attention_maps_are_distributions_over_observed_steps(prompted):
    torch.manual_seed(0)
    student = create_model("mmslf", prompted.dims, **SMALL)
    teacher = create_model("mmslf", prompted.dims, **{**SMALL, "stage": "teacher"})
    student.attach_teacher(teacher)
    student.train()
    split = student.prepare_split(prompted.splits["train"])
    b = collate(split, np.arange(8))
    b.mask["audio"][0, 0] = False
    b.present["vision"][1] = False
    b = student.prepare_batch(b)
    out = student(b)
    for m in ("audio", "vision"):
        att = out.extras[f"attn_{m}"]  # (B, H, Lq, Ls)
        obs = b.observed(m)
        assert torch.all(att.masked_select(~obs[:, None, None, :].expand_as(att)) == 0)
        sums = att.sum(-1)
        rows_with = obs.any(1)
        torch.testing.assert_close(sums[rows_with], torch.ones_like(sums[rows_with]))
        assert torch.all(sums[~rows_with] == 0)
    losses = student.loss(out, b)
    assert set(losses) == {"total", "pred", "distill_attention", "distill_hidden"}
    losses["total"].backward()
    assert all(p.grad is None for p in teacher.parameters())  # the teacher stays frozen
    assert student.head.weight.grad is not None


@pytest.mark.parametrize("spec", ["frames:0.5", "modality:0.5", "noise:0.1", "frames:random"])
def test_distillation_under_every_protocol(prompted, spec):
    """Teacher and student read the same corrupted batch; every term stays finite and the
    maps keep to the corrupted batch's observed steps."""
    from msakit.corrupt import parse_protocol

    torch.manual_seed(0)
    student = create_model("mmslf", prompted.dims, **SMALL)
    student.attach_teacher(create_model("mmslf", prompted.dims, **{**SMALL, "stage": "teacher"}))
    student.train()
    b = parse_protocol(spec)(collate(student.prepare_split(prompted.splits["train"]),
                                     np.arange(16)), seed=3)
    assert b.prompt_ids is not None
    b = student.prepare_batch(b)
    out = student(b)
    losses = student.loss(out, b)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["distill_attention"] > 0
    for m in ("audio", "vision"):
        hidden = ~b.observed(m)[:, None, None, :].expand_as(out.extras[f"attn_{m}"])
        assert torch.all(out.extras[f"attn_{m}"][hidden] == 0)


def test_a_student_can_reuse_any_finished_teacher(run, prompted, tmp_path):
    """teacher_run=ABSOLUTE: no teacher is trained; that one is distilled and recorded."""
    src, _ = run
    teacher = (src / "seed_1" / "teacher").resolve()
    out = tmp_path / "student"
    msakit.train("mmslf", prompted, out, seeds=[2], epochs=1,
                 overrides={**SMALL, "teacher_run": str(teacher)})
    assert not (out / "seed_2" / "teacher").exists()
    mc = json.loads((out / "seed_2" / "config.json").read_text())["model_config"]
    assert mc["teacher_config_hash"] == config_hash(
        json.loads((teacher / "config.json").read_text()))
    assert "train/distill_hidden" in rows(out / "seed_2" / "logs" / "metrics.csv")[0]


def test_teacher_predictions_ignore_masks_and_batch_mates(prompted):
    """The model contract's evaluation properties, for the teacher with its cue texts."""
    torch.manual_seed(0)
    teacher = create_model("mmslf", prompted.dims, **{**SMALL, "stage": "teacher"}).eval()
    split = teacher.prepare_split(prompted.splits["test"])
    b = collate(split, np.arange(8))
    b.mask["audio"][0, 1] = False
    b.present["vision"][2] = False
    with torch.no_grad():
        p = teacher(b).pred
        g = torch.Generator().manual_seed(1)
        x = {m: torch.where(b.observed(m)[..., None], t, torch.randn(t.shape, generator=g) * 100)
             for m, t in b.x.items()}
        torch.testing.assert_close(teacher(b.replace(x=x)).pred, p, atol=1e-5, rtol=1e-5)
        for i in range(8):
            one = collate(split, [i])
            one.mask["audio"][:, 1] &= i != 0
            one.present["vision"][:] &= i != 2
            torch.testing.assert_close(teacher(one).pred, p[i:i + 1], atol=1e-5, rtol=1e-4)
