"""Training-step time with a fine-tuned bert-base text encoder: msakit against the reference code.

One run measures, each row in its own fresh subprocess (so peak memory figures compare), the
training step of

- msakit's models (lnln, hme, almt, misa, self_mm, mult, tfn, lmf, late_fusion: those it
  registers; lnln and hme also sized like their reference, hme also on the word-aligned
  50-step shapes its reference trains on) with ``text_encoder=<a local
  bert-base-uncased-shaped folder>``, fine-tuned;
- a bare BERT step (forward, mean-of-states loss, backward, AdamW), the floor that any model
  fine-tuning this encoder at this shape pays ("what bounds it");
- the reference implementations with BERT fine-tuned: LNLN (github Haoyu-ha/LNLN), HME
  (github YetZzzzzz/HME), MMSA 2.2.1's MISA, Self-MM and MulT (``use_bert=True,
  use_finetune=True``: not MulT's default config) from PyPI, and ALMT from MMSA's master branch.

Workload: batch 32, MOSI unaligned shapes (audio 375x5, vision 500x20, every step observed,
random features), real MOSI transcripts (32 random sentences of the mosi-text train split).
The encoder on both sides is ``BertModel(BertConfig())`` (the bert-base-uncased architecture,
random weights, seed 0) saved with ``save_pretrained`` in a temporary folder together with the
uncased BERT vocabulary of the packaged MiniLM (the same WordPiece vocab as bert-base-uncased);
both sides load that folder, so they start from the same weights.

Text input, per side:

- references: their usual input, MMSA's ``text_bert`` layout (ids / mask / segment ids padded
  to 50 tokens), tokenised from the same sentences with the same tokenizer;
- msakit, three modes: ``pad50`` (ids padded to 50 tokens: like for like), ``trimmed`` (msakit's
  collate trims a batch to its longest sentence: its real behaviour on one random batch) and
  ``bucketed`` (batches of a training epoch as msakit's engine builds them, length-bucketed
  and trimmed; the timed ones at evenly spaced quantiles of the epoch's batch lengths, so their
  mean estimates what an epoch costs per step).

One training step is what each implementation's trainer does per batch: zero grads, forward
(msakit: the model's default training corruption, then the model), the method's loss,
backward, the trainer's gradient clipping, one optimizer step, with each trainer's optimizer
kind (Adam / AdamW, parameter groups and learning rates as configured). Time is the mean over
the timed steps after warm-up, wall and process CPU time (all threads). MMSA's trainers
accumulate gradients over ``update_epochs`` batches (MISA 2, Self-MM 4, MulT 8); the table's
step always includes one optimizer update per batch of 32 (like for like); ``trainer/batch``
shows the cost per batch with the trainer's accumulation (forward-backward + update / N).

The reference sources are taken from each repository at run time (``git archive`` of a pinned
commit from a local mirror or a clone, into a temporary directory; never copied into this
project). Each reference runs in its own virtual environment (``python -m venv
--system-site-packages`` under the user cache dir), so it reuses the installed torch; the
script refuses to measure if pip replaced torch there. HME's README pins transformers==4.30.2,
so its venv has that version; LNLN and MMSA use the installed transformers.

    python benchmarks/bench_text_vs_refs.py --out bench_text_refs.json --markdown
    python benchmarks/bench_text_vs_refs.py --steps 1 --warmup 0 --only 'ref:lnln,msakit:lnln@*'
    python benchmarks/bench_text_vs_refs.py --render bench_text_refs.json   # markdown again
    python benchmarks/bench_text_vs_refs.py --list                          # the row keys

On a machine shared with other jobs, use ``--threads 1`` (the default) and read the CPU times.

``--precision 32,bf16-mixed`` times every selected row in both precisions (rows ``KEY+bf16``):
``bf16-mixed`` runs each implementation's forward, loss and backward under
``torch.autocast("cpu", dtype=torch.bfloat16)`` (fp32 weights and optimizer step), what
``msakit train --precision bf16-mixed`` does; for the references that wrapper is ours (their
code has no such option), so ``+bf16`` rows compare like for like at the same precision.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _refbench import (  # benchmarks/
    HME_TRANSFORMERS,
    MMSA_VERSION,
    REPOS,
    cache_root,
    engine_step,
    ensure_venv,
    fetch_source,
    machine,
    parse_precisions,
    time_steps,
    venv_versions,
    worker_error,
)

BATCH = 32
MAX_LEN = 50
SHAPES = {"audio": (375, 5), "vision": (500, 20)}

# what each reference row needed, as printed in the report
PATCHES = {
    "ref:lnln": "config model.feature_extractor.bert_pretrained -> the local BERT folder; missing "
                "inputs made with its own MMDataset.generate_m (train-time rates: U(0,1), half "
                "set to 0) outside the timed step; no code change",
    "ref:hme": "HME_main imported with the README's MOSI arguments; "
               "./BERT_en -> the local BERT folder (symlink in a temporary working dir); "
               "HME_main.DEVICE set to CPU (the code hard-codes cuda:0); transformers "
               f"{HME_TRANSFORMERS} as its README pins; the loop body of HME_main.train_epoch "
               "(its AdamW from transformers.optimization, clip_grad_value 0.8)",
    "mmsa:misa": "args.pretrained -> the local BERT folder; trainer's own loss methods",
    "mmsa:self_mm": "args.pretrained -> the local BERT folder; trainer's own weighted loss and "
                    "label/centre updates (as from epoch 2 on)",
    "mmsa:mult+bert": "args.use_bert=True, use_finetune=True, transformers='bert', pretrained -> "
                      "the local BERT folder (MulT's MMSA config has use_bert false)",
    "mmsa:almt": "ALMT.py of MMSA master loaded into the 2.2.1 package (master's package imports "
                 "pytorch_transformers for CENET); master's config for almt/mosi; "
                 "args.pretrained -> the local BERT folder; its trainer step (AdamW, MSE, no clip)",
}
# msakit models timed by default (those of them that msakit registers)
MSAKIT_MODELS = ["lnln", "hme", "almt", "misa", "self_mm", "mult", "tfn", "lmf", "late_fusion"]
MODES = ["pad50", "trimmed", "bucketed"]
# msakit models sized like their reference's MOSI configuration (rows "msakit:NAME/ref@MODE")
REF_SIZED = {
    "hme": "d=192,heads=16,enc_layers=4,hyper_depth=3,latent_depth=4",  # README's MOSI command
    "lnln": "dim_head=64",  # the reference's attention head size (ours: d / heads = 16)
}
REFERENCES = ["ref:lnln", "ref:hme", f"ref:hme/aligned{MAX_LEN}", "mmsa:misa", "mmsa:self_mm",
              "mmsa:mult+bert", "mmsa:almt"]
COUNTERPART = {"lnln": "ref:lnln", "hme": "ref:hme", "mult": "mmsa:mult+bert",
               "almt": "mmsa:almt", "misa": "mmsa:misa", "self_mm": "mmsa:self_mm"}
REPO_OF = {"ref:lnln": "lnln", "ref:hme": "hme", f"ref:hme/aligned{MAX_LEN}": "hme",
           "mmsa:almt": "mmsa"}  # the reference rows whose source comes from GitHub
VENV_OF = {k: ("mmsa" if k.startswith("mmsa:") else REPO_OF[k]) for k in REFERENCES}


BF16 = "+bf16"  # key suffix of a row timed under bf16 autocast (--precision bf16-mixed)


def _aligned(key: str) -> bool:
    return f"/aligned{MAX_LEN}" in key


def _bf16(key: str) -> bool:
    return key.endswith(BF16)


def counterpart(key: str) -> str | None:
    """The reference of the same method as msakit row ``key`` (same data shapes and
    precision)."""
    ref = COUNTERPART.get(key.split(":", 1)[1].split("@")[0].split("/")[0])
    return None if ref is None else (ref + (f"/aligned{MAX_LEN}" if _aligned(key) else "")
                                     + (BF16 if _bf16(key) else ""))


# ============================================================================ worker side
def _nparams(module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _load_data(work: Path, seq: int | None = None):
    """(arrays, meta); with ``seq``, audio and vision cut to their first ``seq`` steps (the
    word-aligned MOSI shapes: 50 steps for every modality)."""
    import numpy as np

    z = np.load(work / "data.npz")
    meta = json.loads((work / "texts.json").read_text())
    arrays = {k: z[k] for k in z.files}
    if seq:
        for m in SHAPES:
            arrays[m] = np.ascontiguousarray(arrays[m][:, :seq])
    return arrays, meta


def _ref_tensors(arrays):
    """The references' batch: text_bert (B, 3, 50) float (ids, mask, segment ids), audio,
    vision, labels (B,)."""
    import torch

    return (torch.from_numpy(arrays["text_bert"]).float(), torch.from_numpy(arrays["audio"]),
            torch.from_numpy(arrays["vision"]), torch.from_numpy(arrays["y"]))


def _build_msakit(spec: dict, work: Path):
    import dataclasses

    import numpy as np

    from msakit.data.batch import SplitData, collate
    from msakit.models import create_model

    arrays, meta = _load_data(work, spec.get("seq"))
    overrides = dict(kv.split("=", 1) for kv in spec.get("sets", []))
    model = create_model(spec["model"], {"text": 768, **{m: d for m, (_, d) in SHAPES.items()}},
                         text_encoder=meta["bert_dir"], **overrides)
    cfg = model.config
    mode = spec["mode"]
    batches = meta["bucketed"] if mode == "bucketed" else [meta["texts"]]
    n = BATCH
    prepared = []
    for texts in batches:
        sd = SplitData(
            x={"text": np.zeros((n, 1, 1), np.float32), "audio": arrays["audio"],
               "vision": arrays["vision"]},
            lengths={"text": np.ones(n, np.int64),
                     **{m: np.full(n, arrays[m].shape[1], np.int64) for m in SHAPES}},
            y=arrays["y"], ids=[f"s{i}" for i in range(n)], raw_text=list(texts),
        )
        sp = model.prepare_split(sd)
        if mode == "pad50" and sp.text_ids.shape[1] < MAX_LEN:
            pad = MAX_LEN - sp.text_ids.shape[1]
            sp = dataclasses.replace(
                sp,
                x={**sp.x, "text": np.zeros((n, MAX_LEN, sp.x["text"].shape[2]), np.float32)},
                text_ids=np.pad(sp.text_ids, ((0, 0), (0, pad)),
                                constant_values=int(model.text_encoder.tokenizer.pad_token_id or 0)),
                text_ids_mask=np.pad(sp.text_ids_mask, ((0, 0), (0, pad))),
            )
        if not prepared:
            model.fit_normalizer(sp)
        prepared.append(collate(sp, np.arange(n), trim=mode != "pad50"))
    model.on_train_epoch_start(0, None)
    model.train()
    fb, opt = engine_step(model, lambda i: prepared[i % len(prepared)])
    kind = type(opt)
    clip = float(cfg.grad_clip or 0.0)
    by_value = cfg.grad_clip_mode == "value"

    enc = model.text_encoder.encoder
    info = {
        "params": _nparams(model),
        "params_encoder": _nparams(enc),
        "text_lens": [int(b.text_ids.shape[1]) for b in prepared],
        "optimizer": f"{kind.__name__} (text_lr {cfg.text_lr}, lr {cfg.lr}, wd {cfg.weight_decay})",
        "clip": f"{'value' if by_value else 'norm'} {clip}" if clip else "none",
        "corruption": cfg.default_corrupt,
        "loss": getattr(cfg, "loss", "l1"),
        "config": {k: getattr(cfg, k) for k in overrides} or "defaults",
        "accum": 1,
    }
    return fb, opt.step, info


def _build_bert(spec: dict, work: Path):
    import torch
    from transformers import AutoModel, AutoTokenizer

    _, meta = _load_data(work)
    tok = AutoTokenizer.from_pretrained(meta["bert_dir"])
    model = AutoModel.from_pretrained(meta["bert_dir"])
    model.train()
    mode = spec["mode"]
    batches = meta["bucketed"] if mode == "bucketed" else [meta["texts"]]
    pad = "max_length" if mode == "pad50" else "longest"
    encs = [tok(list(t), padding=pad, truncation=True, max_length=MAX_LEN, return_tensors="pt")
            for t in batches]
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)

    def fb(i: int):
        e = encs[i % len(encs)]
        h = model(input_ids=e["input_ids"], attention_mask=e["attention_mask"]).last_hidden_state
        m = e["attention_mask"].unsqueeze(-1).to(h.dtype)
        loss = (h * m).sum() / m.sum() / h.shape[-1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        return loss

    n = _nparams(model)
    info = {"params": n, "params_encoder": n, "text_lens": [int(e["input_ids"].shape[1]) for e in encs],
            "optimizer": "AdamW (lr 2e-5)", "clip": "none", "loss": "mean of last states",
            "accum": 1}
    return fb, opt.step, info


def _build_lnln(spec: dict, work: Path):
    import random

    import numpy as np
    import torch
    import yaml

    src = Path(spec["src"])
    sys.path.insert(0, str(src))
    from core.dataset import MMDataset  # noqa: E402  (the reference's own modules)
    from core.losses import MultimodalLoss
    from models.lnln import build_model

    arrays, meta = _load_data(work)
    args = yaml.safe_load((src / "configs" / "train_mosi.yaml").read_text())
    args["model"]["feature_extractor"]["bert_pretrained"] = meta["bert_dir"]
    model = build_model(args)
    model.train()
    text, audio, vision, y = (t.numpy() for t in _ref_tensors(arrays))
    n = len(y)
    # missing inputs as its training set makes them: rates U(0,1) per sample and modality,
    # half of the samples' rates set to 0 (MMDataset.__getitem__ at index 0 of an epoch)
    np.random.seed(args["base"]["seed"])
    random.seed(args["base"]["seed"])
    rates = [np.random.uniform(size=(n, 1)) for _ in range(3)]
    for r in rates:
        r[random.sample(range(n), n // 2)] = 0
    gen = MMDataset.generate_m  # a method that does not use self
    seed = args["base"]["seed"]
    text_m, _, text_mask, _ = gen(None, text[:, 0, :], text[:, 1, :], None, rates[0], seed, "text")
    text_m = np.concatenate([text_m[:, None], text_mask[:, None], text[:, 2:3, :]], axis=1)
    lens = {m: np.full(n, L) for m, (L, _) in SHAPES.items()}
    audio_m = gen(None, audio, None, lens["audio"], rates[1], seed, "audio")[0]
    vision_m = gen(None, vision, None, lens["vision"], rates[2], seed, "vision")[0]
    f = lambda a: torch.from_numpy(np.asarray(a, np.float32))  # noqa: E731
    complete = (f(vision), f(audio), f(text))
    incomplete = (f(vision_m), f(audio_m), f(text_m))
    label = {
        "sentiment_labels": f(y).view(-1, 1),
        "completeness_labels": 1.0 - f(rates[0]),
        "effectiveness_labels": torch.cat([torch.ones(n * 8), torch.zeros(n * 8)]).long(),
    }
    loss_fn = MultimodalLoss(args)
    opt = torch.optim.AdamW(model.parameters(), lr=args["base"]["lr"],
                            weight_decay=args["base"]["weight_decay"])

    def fb(i: int):
        out = model(complete, incomplete)
        loss = loss_fn(out, label)["loss"]
        loss.backward()
        return loss

    def upd():
        opt.step()
        opt.zero_grad()  # train.py: backward, step, zero_grad

    info = {"params": _nparams(model), "params_encoder": _nparams(model.bertmodel),
            "text_lens": [MAX_LEN], "optimizer": f"AdamW (lr {args['base']['lr']}, wd "
            f"{args['base']['weight_decay']})", "clip": "none",
            "loss": "0.9 MSE(w) + 0.8 CE(disc) + 0.1 MSE(rec) + MSE(pred)",
            "note": "BERT runs twice with gradients (incomplete and complete text)", "accum": 1}
    return fb, upd, info


def _build_hme(spec: dict, work: Path):
    import numpy as np
    import torch

    src = Path(spec["src"]) / "HME_MSA"
    arrays, meta = _load_data(work, spec.get("seq"))
    run_dir = Path(spec["tmp"]) / "hme_cwd"
    run_dir.mkdir(parents=True, exist_ok=True)
    link = run_dir / "BERT_en"
    if not link.exists():
        link.symlink_to(meta["bert_dir"], target_is_directory=True)
    os.chdir(run_dir)  # HME loads './BERT_en/'
    sys.path.insert(0, str(src))
    # the README's MOSI command; the unaligned MOSI lengths (375 / 500) via --alignment
    # unalign, unless the row asks for the aligned 50-step data the README trains on
    sys.argv = ["HME_main.py", "--dataset", "mosi", "--learning_rate", "2e-5", "--d_l", "192",
                "--missing_rate", "0.2", "--layers", "4", "--hyper_depth", "3",
                "--latent_layers", "4", "--latent_dim", "192", "--n_epochs", "100",
                "--alignment", "align" if spec.get("seq") == MAX_LEN else "unalign"]
    import HME_main as H  # noqa: E402  (the reference's script; parses sys.argv on import)

    H.DEVICE = torch.device("cpu")
    args = H.args
    torch.manual_seed(0)
    model = H.prep_for_training(0)
    model.train()
    text, audio, vision, y = _ref_tensors(arrays)
    input_ids, input_mask, segment_ids = text[:, 0].long(), text[:, 1].long(), text[:, 2].long()
    np.random.seed(args.seed)
    ps = torch.from_numpy(H.generate_missing_matrix(args.train_nums, 3,
                                                    missing_rate=args.missing_rate)[: len(y)])
    no_decay = ["bias", "LayerNorm.weight"]
    groups = [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
         "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
         "weight_decay": 0.0},
    ]
    opt = H.AdamW(groups, lr=args.learning_rate, eps=args.adam_epsilon)
    loss_fct = torch.nn.L1Loss()
    label_ids = y

    def fb(i: int):  # the loop body of HME_main.train_epoch
        outputs = model(input_ids, vision, audio, ps, token_type_ids=segment_ids,
                        attention_mask=input_mask, labels=None)
        loss_task = loss_fct(outputs["predictions"].view(-1), label_ids.view(-1))
        loss_fc = (loss_fct(outputs["logits_l_p"].view(-1), label_ids.view(-1))
                   + loss_fct(outputs["logits_a_p"].view(-1), label_ids.view(-1))
                   + loss_fct(outputs["logits_v_p"].view(-1), label_ids.view(-1))) / 3.0
        loss = loss_task + 0.8 * loss_fc + 0.01 * outputs["info_losses"]
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_([p for p in model.parameters() if p.requires_grad],
                                        args.clip)
        return loss

    import transformers

    info = {"params": _nparams(model), "params_encoder": _nparams(model.bert),
            "text_lens": [MAX_LEN], "optimizer": f"transformers.AdamW (lr {args.learning_rate}, "
            f"wd {args.weight_decay})", "clip": f"value {args.clip}",
            "loss": "L1 + 0.8 unimodal L1 + 0.01 KL",
            "config": {k: getattr(args, k) for k in ("d_l", "num_heads", "layers", "hyper_depth",
                                                     "latent_layers", "missing_rate", "alignment")},
            "transformers": transformers.__version__, "accum": 1,
            "note": "its README trains MOSI with the aligned 50-step data and batch 256"}
    return fb, opt.step, info


def _mmsa_args(name: str, bert_dir: str, config_file: str = ""):
    from MMSA.config import get_config_regression

    args = get_config_regression(name, "mosi", config_file)
    args.train_mode = "regression"
    args.num_classes = 1
    args.device = "cpu"
    args.pretrained = bert_dir
    args.transformers = "bert"
    args.feature_dims = [768, SHAPES["audio"][1], SHAPES["vision"][1]]
    return args


def _build_mmsa(spec: dict, work: Path):
    import torch

    arrays, meta = _load_data(work)
    text, audio, vision, y = _ref_tensors(arrays)
    n = len(y)
    labels = y.view(-1, 1)
    which = spec["model"]
    info: dict = {"text_lens": [MAX_LEN]}
    if which == "almt":
        import importlib.util

        import MMSA.models.singleTask  # noqa: F401  (the 2.2.1 package the file loads into)

        path = Path(spec["src"]) / "src" / "MMSA" / "models" / "singleTask" / "ALMT.py"
        mspec = importlib.util.spec_from_file_location("MMSA.models.singleTask.ALMT", path)
        mod = importlib.util.module_from_spec(mspec)
        sys.modules[mspec.name] = mod
        mspec.loader.exec_module(mod)
        cfg = Path(spec["src"]) / "src" / "MMSA" / "config" / "config_regression.json"
        args = _mmsa_args("almt", meta["bert_dir"], str(cfg))
        model = mod.ALMT(args)
        bert = model.bertmodel
        opt = torch.optim.AdamW(model.parameters(), lr=args.learning_rate,
                                weight_decay=args.weight_decay)
        crit = torch.nn.MSELoss()

        def fb(i: int):
            opt.zero_grad()
            loss = crit(model(text, audio, vision), labels)
            loss.backward()
            return loss

        info.update(optimizer=f"AdamW (lr {args.learning_rate}, wd {args.weight_decay})",
                    clip="none", loss="MSE", accum=1)
    else:
        from MMSA.models import AMIO

        args = _mmsa_args(which.replace("+bert", ""), meta["bert_dir"])
        if which == "mult+bert":
            args.use_bert = args.use_finetune = args.use_bert_finetune = True
        model = AMIO(args)
        accum = int(args.get("update_epochs", 1))
        if which == "misa":
            from MMSA.trains.singleTask.MISA import MISA as Trainer

            tr = Trainer(args)
            tr.model = model
            bert = model.Model.bertmodel
            opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad],
                                   lr=args.learning_rate)

            def fb(i: int):
                opt.zero_grad()
                out = model(text, audio, vision)["M"]
                sim = tr.get_cmd_loss() if args.use_cmd_sim else tr.get_domain_loss()
                loss = (tr.criterion(out, labels) + args.diff_weight * tr.get_diff_loss()
                        + args.sim_weight * sim + args.recon_weight * tr.get_recon_loss())
                loss.backward()
                if args.grad_clip != -1.0:
                    torch.nn.utils.clip_grad_value_(
                        [p for p in model.parameters() if p.requires_grad], args.grad_clip)
                return loss

            info.update(optimizer=f"Adam (lr {args.learning_rate})", clip=f"value {args.grad_clip}",
                        loss="MSE + diff + CMD + recon")
        elif which == "self_mm":
            from MMSA.trains.multiTask.SELF_MM import SELF_MM as Trainer

            tr = Trainer(args)
            idx = torch.arange(n)
            tr.init_labels(idx, y)
            M = model.Model
            bert = M.text_model
            no_decay = ["bias", "LayerNorm.bias", "LayerNorm.weight"]
            bp = list(M.text_model.named_parameters())
            other = [p for nm, p in M.named_parameters() if "text_model" not in nm
                     and "audio_model" not in nm and "video_model" not in nm]
            opt = torch.optim.Adam([
                {"params": [p for nm, p in bp if not any(nd in nm for nd in no_decay)],
                 "weight_decay": args.weight_decay_bert, "lr": args.learning_rate_bert},
                {"params": [p for nm, p in bp if any(nd in nm for nd in no_decay)],
                 "weight_decay": 0.0, "lr": args.learning_rate_bert},
                {"params": list(M.audio_model.parameters()), "weight_decay": args.weight_decay_audio,
                 "lr": args.learning_rate_audio},
                {"params": list(M.video_model.parameters()), "weight_decay": args.weight_decay_video,
                 "lr": args.learning_rate_video},
                {"params": other, "weight_decay": args.weight_decay_other,
                 "lr": args.learning_rate_other},
            ])
            alen = torch.full((n,), SHAPES["audio"][0], dtype=torch.long)
            vlen = torch.full((n,), SHAPES["vision"][0], dtype=torch.long)
            names = {"M": "fusion", "T": "text", "A": "audio", "V": "vision"}

            def fb(i: int):
                opt.zero_grad()
                out = model(text, (audio, alen), (vision, vlen))
                loss = 0.0
                for m in "MTAV":
                    loss = loss + tr.weighted_loss(out[m], tr.label_map[names[m]][idx],
                                                   indexes=idx, mode=names[m])
                loss.backward()
                f = [out[k].detach() for k in ("Feature_f", "Feature_t", "Feature_a", "Feature_v")]
                tr.update_labels(*f, 2, idx, out)  # as from the second epoch on
                tr.update_features(*f, idx)
                tr.update_centers()
                return loss

            info.update(optimizer="Adam, 5 groups (BERT lr 5e-5)", clip="none",
                        loss="4 weighted L1 (M, T, A, V)")
        elif which == "mult+bert":
            from MMSA.trains.singleTask.MULT import MULT as Trainer

            crit = Trainer(args).criterion
            bert = model.Model.text_model
            opt = torch.optim.Adam(model.parameters(), lr=args.learning_rate)

            def fb(i: int):
                opt.zero_grad()
                loss = crit(model(text, audio, vision)["M"], labels)
                loss.backward()
                if args.grad_clip != -1.0:
                    torch.nn.utils.clip_grad_value_(
                        [p for p in model.parameters() if p.requires_grad], args.grad_clip)
                return loss

            info.update(optimizer=f"Adam (lr {args.learning_rate}, all params)",
                        clip=f"value {args.grad_clip}", loss="L1")
        else:
            raise SystemExit(f"unknown MMSA model {which!r}")
        info["accum"] = accum
    model.train()
    import MMSA

    info.update(params=_nparams(model), params_encoder=_nparams(bert),
                mmsa=getattr(MMSA, "__version__", MMSA_VERSION))
    return fb, opt.step, info


BUILDERS = {"msakit": _build_msakit, "bert": _build_bert, "lnln": _build_lnln,
            "hme": _build_hme, "mmsa": _build_mmsa}


def worker(spec: dict, work: Path, out: Path) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    if spec["threads"] > 0:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    fb, upd, info = BUILDERS[spec["impl"]](spec, work)
    if spec.get("precision") == "bf16-mixed":  # forward, loss and backward; not the update
        plain = fb

        def fb(i: int):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return plain(i)

    timed = time_steps(fb, upd, spec["warmup"], spec["steps"])
    import transformers

    res = {
        **info,
        "torch": torch.__version__,
        "transformers": info.get("transformers", transformers.__version__),
        "threads": torch.get_num_threads(),
        **timed,
        "trainer_batch_s": timed["mean_fb_s"] + timed["mean_update_s"] / info.get("accum", 1),
    }
    out.write_text(json.dumps(res))


# ============================================================================ driver side
def make_bert_dir(dest: Path) -> Path:
    """bert-base-uncased-shaped BertModel (random weights, seed 0) + the uncased BERT vocab
    of the packaged MiniLM, saved with save_pretrained."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    from msakit.features.text import packaged_minilm_path

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    BertModel(BertConfig()).save_pretrained(dest)
    mini = packaged_minilm_path()
    AutoTokenizer.from_pretrained(mini).save_pretrained(dest)
    if not (dest / "vocab.txt").exists():
        shutil.copy(mini / "vocab.txt", dest / "vocab.txt")
    return dest


def make_data(work: Path, bert_dir: Path, warmup: int, steps: int) -> dict:
    """32 random mosi-text train sentences, their MMSA text_bert layout, random audio/vision
    and labels; plus ``warmup + steps`` batches of a length-bucketed msakit epoch: the first
    ``warmup`` in the epoch's order, then ``steps`` batches at evenly spaced quantiles of the
    epoch's batch lengths, so that a few timed steps estimate the mean step of the epoch."""
    import numpy as np
    from transformers import AutoTokenizer

    import msakit

    train = msakit.load_dataset("mosi-text").splits["train"]
    texts_all = [str(t) for t in train.raw_text]
    rng = np.random.default_rng(0)
    pick = rng.choice(len(texts_all), BATCH, replace=False)
    texts = [texts_all[i] for i in pick]
    tok = AutoTokenizer.from_pretrained(bert_dir)
    enc = tok(texts, padding="max_length", truncation=True, max_length=MAX_LEN,
              return_token_type_ids=True, return_tensors="np")
    text_bert = np.stack([enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]],
                         axis=1).astype(np.float32)
    x = {m: rng.standard_normal((BATCH, L, D)).astype(np.float32) for m, (L, D) in SHAPES.items()}
    y = rng.uniform(-3, 3, BATCH).astype(np.float32)
    np.savez(work / "data.npz", text_bert=text_bert, y=y, **x)
    # a length-bucketed epoch as msakit's engine samples it (seed 0, epoch 0)
    lens = tok(texts_all, truncation=True, max_length=MAX_LEN, return_length=True)["length"]
    lens = np.asarray(lens)
    try:
        from msakit.train.engine import _IndexSampler

        epoch = list(_IndexSampler(len(texts_all), BATCH, True, 0, None, lens))
        how = "msakit.train.engine._IndexSampler (shuffle, bucket by length, seed 0, epoch 0)"
    except ImportError:  # the sampler moved: sort by length, shuffle the batches
        order = np.argsort(lens, kind="stable")
        epoch = [order[i : i + BATCH].tolist() for i in range(0, len(order), BATCH)]
        epoch = [epoch[i] for i in np.random.default_rng(0).permutation(len(epoch))]
        how = "sorted by length, batches shuffled (fallback)"
    full = [b for b in epoch if len(b) == BATCH]
    by_len = sorted(full, key=lambda b: int(lens[b].max()))
    timed = [by_len[min(len(by_len) - 1, int((i + 0.5) * len(by_len) / steps))]
             for i in range(steps)]
    chosen = full[:warmup] + timed
    bucketed = [[texts_all[i] for i in b] for b in chosen]
    meta = {
        "bert_dir": str(bert_dir),
        "texts": texts,
        "bucketed": bucketed,
        "stats": {
            "batch_longest": int(enc["attention_mask"].sum(1).max()),
            "batch_mean_len": float(enc["attention_mask"].sum(1).mean()),
            "epoch_mean_longest": float(np.mean([lens[b].max() for b in epoch])),
            "timed_bucketed_longest": [int(lens[b].max()) for b in timed],
            "train_mean_len": float(lens.mean()),
            "bucketing": how,
        },
    }
    (work / "texts.json").write_text(json.dumps(meta))
    return meta


def registered_models(wanted: list[str]) -> list[str]:
    """``wanted`` without the models this msakit does not register (all of them if the
    registry cannot be read)."""
    try:
        from msakit.models.base import MODELS
    except Exception:  # noqa: BLE001  (an msakit that does not import: rows will say why)
        return wanted
    return [m for m in wanted if m in MODELS]


def all_rows(variants: dict[str, list[str]], models: list[str] = MSAKIT_MODELS,
             modes: list[str] = MODES) -> list[dict]:
    rows = []
    for m in models:
        tags = [("", [])] + [(f"/{t}", s) for t, s in variants.get(m, [])]
        if m == "hme":  # also on the word-aligned 50-step data HME's README trains on
            tags += [(f"{t}/aligned{MAX_LEN}", s) for t, s in tags]
        for tag, sets in tags:
            for mode in modes:
                row = {"key": f"msakit:{m}{tag}@{mode}", "impl": "msakit", "model": m,
                       "mode": mode, "sets": sets, "side": "msakit"}
                if tag.endswith(f"/aligned{MAX_LEN}"):
                    row["seq"] = MAX_LEN
                rows.append(row)
    for mode in modes:
        rows.append({"key": f"bert-only@{mode}", "impl": "bert", "mode": mode, "side": "floor"})
    rows += [
        {"key": "ref:lnln", "impl": "lnln", "venv": "lnln", "src": "lnln", "side": "ref"},
        {"key": "ref:hme", "impl": "hme", "venv": "hme", "src": "hme", "side": "ref"},
        {"key": f"ref:hme/aligned{MAX_LEN}", "impl": "hme", "venv": "hme", "src": "hme",
         "side": "ref", "seq": MAX_LEN},
        {"key": "mmsa:misa", "impl": "mmsa", "model": "misa", "venv": "mmsa", "side": "ref"},
        {"key": "mmsa:self_mm", "impl": "mmsa", "model": "self_mm", "venv": "mmsa", "side": "ref"},
        {"key": "mmsa:mult+bert", "impl": "mmsa", "model": "mult+bert", "venv": "mmsa",
         "side": "ref"},
        {"key": "mmsa:almt", "impl": "mmsa", "model": "almt", "venv": "mmsa", "src": "mmsa",
         "side": "ref"},
    ]
    return rows


def with_precisions(rows: list[dict], precisions: list[str]) -> list[dict]:
    """Each row once per precision: fp32 as it is, bf16-mixed as ``KEY+bf16``."""
    out = []
    for p in precisions:
        out += [r if p == "32" else {**r, "key": r["key"] + BF16, "precision": p} for r in rows]
    return out


def select(rows: list[dict], only: list[str]) -> list[dict]:
    if not only:
        return rows
    pats = [p.strip() for o in only for p in o.split(",") if p.strip()]
    return [r for r in rows if any(fnmatch.fnmatchcase(r["key"], p) for p in pats)]


def run_worker(py: Path, row: dict, args, work: Path, tmp: Path) -> dict:
    spec = {k: v for k, v in row.items() if k not in ("venv", "side", "key")}
    spec.update(threads=args.threads, warmup=args.warmup,
                steps=args.ref_steps if row["side"] == "ref" and args.ref_steps else args.steps,
                tmp=str(tmp))
    fd, name = tempfile.mkstemp(dir=tmp, prefix="res-", suffix=".json")
    os.close(fd)
    out = Path(name)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", MSAKIT_CACHE=str(tmp / "msakit-cache"),
               PYTHONDONTWRITEBYTECODE="1")
    if args.threads > 0:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
    cmd = [str(py), os.path.abspath(__file__), "--worker", json.dumps(spec),
           "--work", str(work), "--worker-out", str(out)]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp))
    if r.returncode != 0:
        return worker_error(r, 3000)
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t0
    return res


def _fmt(v, spec=".2f"):
    return "n/a" if v is None else format(v, spec)


def table(res: dict) -> str:
    rows = ["| row | params (encoder + rest) | text len | step (s) | min (s) | fwd+bwd (s) "
            "| update (s) | trainer/batch (s) | CPU (s) | peak RSS (MiB) | step mem (MiB) |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, r in res["runs"].items():
        if "error" in r:
            last = (r["error"].strip().splitlines() or ["?"])[-1][:90].replace("|", "/")
            rows.append(f"| {key} | failed: {last} |" + " |" * 9)
            continue
        lens = r.get("text_lens") or []
        tl = str(lens[0]) if len(set(lens)) == 1 else f"{sum(lens) / len(lens):.1f} (mean)"
        rest = r["params"] - r["params_encoder"]
        acc = r.get("accum", 1)
        tb = f"{r['trainer_batch_s']:.2f}" + (f" (1/{acc})" if acc > 1 else "")
        rows.append(
            f"| {key} | {r['params_encoder'] / 1e6:.1f}M + {rest / 1e6:.2f}M | {tl} "
            f"| {r['mean_step_s']:.2f} | {r['min_step_s']:.2f} | {r['mean_fb_s']:.2f} "
            f"| {r['mean_update_s']:.2f} | {tb} | {r['mean_cpu_s']:.2f} "
            f"| {r['peak_rss_mb']:,.0f} | {_fmt(r['step_mem_mb'], ',.0f')} |")
    return "\n".join(rows)


def speedups(res: dict) -> dict:
    """Reference mean step / msakit mean step, for every (msakit row, reference) pair, wall
    and CPU; and the bare BERT step's share of each msakit row (same mode)."""
    runs = {k: r for k, r in res["runs"].items() if "error" not in r}
    refs = [k + b for b in ("", BF16) for k in REFERENCES if k + b in runs]
    out = {}
    for k, r in runs.items():
        if not k.startswith("msakit:"):
            continue
        mode = k.rsplit("@", 1)[1]
        floor = runs.get(f"bert-only@{mode}")
        same = [ref for ref in refs  # same data shapes and precision only
                if _aligned(ref) == _aligned(k) and _bf16(ref) == _bf16(k)]
        out[k] = {
            "vs": {ref: {"wall": runs[ref]["mean_step_s"] / r["mean_step_s"],
                         "cpu": runs[ref]["mean_cpu_s"] / r["mean_cpu_s"]} for ref in same},
            "bert_share": None if floor is None else floor["mean_step_s"] / r["mean_step_s"],
        }
    return out


def speedup_table(res: dict) -> str:
    sp = res.get("speedups") or speedups(res)
    refs = [k + b for b in ("", BF16) for k in REFERENCES
            if k + b in res["runs"] and "error" not in res["runs"][k + b]]
    if not sp or not refs:
        return ""
    lines = ["| msakit row | " + " | ".join(refs) + " | bare BERT step / this step |",
             "|---|" + "---|" * (len(refs) + 1)]
    for k, v in sp.items():
        cells = []
        for ref in refs:
            s = v["vs"].get(ref)
            mark = "**" if counterpart(k) == ref else ""
            cells.append("" if s is None else f"{mark}{s['wall']:.1f}x{mark} ({s['cpu']:.1f}x)")
        share = "" if v["bert_share"] is None else f"{v['bert_share']:.0%}"
        lines.append(f"| {k} | " + " | ".join(cells) + f" | {share} |")
    return "\n".join(lines)


def markdown(res: dict) -> str:
    m = res["machine"]
    load = res.get("loadavg", {})
    st = res["text_stats"]
    threads = sorted({r["threads"] for r in res["runs"].values() if "threads" in r})
    refs = []
    for key in REFERENCES:
        if key not in res["runs"] and key + BF16 not in res["runs"]:
            continue
        src = res["sources"].get(REPO_OF.get(key) or "", {})
        origin = f"github {src['repo']} @ {src['commit'][:12]}" if src else ""
        if key.startswith("mmsa:"):
            origin = f"PyPI MMSA=={MMSA_VERSION}" + (f" + {origin}" if origin else "")
        env = res.get("venvs", {}).get(VENV_OF[key], {})
        envs = ", ".join(f"{k} {v}" for k, v in env.items())
        patch = PATCHES.get(key.split("/")[0], "")
        if key.startswith("ref:hme"):
            patch += ("; --alignment align: audio and vision 50 steps (the word-aligned data "
                      "of its README)" if _aligned(key) else
                      "; --alignment unalign: audio 375 and vision 500 steps")
        refs.append(f"- {key}: {origin}; venv: {envs}; {patch}")
    provisional = ("\n**Provisional: measured on a shared, loaded machine with few steps; not "
                   "for BENCHMARKS.md.**\n" if res.get("provisional") else "")
    return "\n".join([
        "## Training step with a fine-tuned bert-base encoder: msakit vs the reference code",
        provisional,
        f"- Command: `{res['command']}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB RAM, Python "
        f"{m['python']}, torch {res['torch']} (CPU, torch threads: "
        f"{'/'.join(map(str, threads))})",
        f"- Date: {res['date']}; steps: {res['warmup']} warm-up + {res['steps']} timed "
        f"({res.get('ref_steps') or res['steps']} for the references)",
        f"- Load average (1/5/15 min) before: {load.get('before')}, after: {load.get('after')}",
        "- Workload: batch 32, audio 375x5 and vision 500x20 (unaligned MOSI shapes, all steps "
        "observed, random features), 32 random mosi-text train sentences; encoder "
        "BertModel(BertConfig()) (bert-base-uncased shape, random weights) loaded from the same "
        "local folder on both sides, fine-tuned. References read MMSA's text_bert layout "
        "(padded to 50 tokens). msakit: `pad50` = ids padded to 50 (like for like), "
        f"`trimmed` = the batch trimmed to its longest sentence ({st['batch_longest']} tokens; "
        f"mean {st['batch_mean_len']:.1f}), `bucketed` = batches of msakit's length-bucketed "
        f"training epoch at evenly spaced quantiles of its batch lengths (longest per timed "
        f"batch {st['timed_bucketed_longest']}; over the whole epoch the mean longest is "
        f"{st['epoch_mean_longest']:.1f} tokens)."
        + (f" Rows marked /aligned{MAX_LEN} cut audio and vision to 50 steps (the word-aligned "
           "MOSI shapes HME's README trains on) and are compared with each other only."
           if any(_aligned(k) for k in res["runs"]) else ""),
        "- Step = zero grads, forward, the method's loss, backward, the trainer's clipping, one "
        "optimizer update (each trainer's optimizer). `trainer/batch` = forward-backward + "
        "update / N for trainers that accumulate N batches per update (MMSA). Each row in its "
        "own subprocess; step mem = peak RSS minus the RSS before the first step."
        + (" Rows `+bf16`: forward, loss and backward under torch.autocast(bfloat16) on both "
           "sides (fp32 weights and update; the references' wrapper is ours)."
           if any(_bf16(k) for k in res["runs"]) else ""),
        "",
        table(res),
        "",
        "Speed-up (reference step / msakit step, wall; CPU time in brackets; bold: the same "
        "method):",
        "",
        speedup_table(res),
        "",
        "References:",
        *refs,
        "",
    ])


def parse_kv(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for it in items:
        k, sep, v = it.partition("=")
        if not sep:
            raise SystemExit(f"{what} {it!r}: expected NAME=VALUE")
        out[k.strip()] = v.strip()
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the JSON results here")
    ap.add_argument("--markdown", action="store_true", help="also print a BENCHMARKS.md section")
    ap.add_argument("--render", type=Path, help="print the markdown of a saved result and exit")
    ap.add_argument("--list", action="store_true", help="print the row keys and exit")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per row (default 1)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per row")
    ap.add_argument("--ref-steps", type=int, default=None,
                    help="timed steps for the reference rows (default: --steps)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before them")
    ap.add_argument("--only", action="append", default=[], metavar="PATTERNS",
                    help="comma-separated glob patterns of row keys, e.g. "
                         "'ref:*,msakit:lnln@pad50' (see --list)")
    ap.add_argument("--models", default=",".join(MSAKIT_MODELS),
                    help="msakit models to time, comma-separated (default: %(default)s, those "
                         "registered)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="msakit text modes, comma-separated (default: %(default)s)")
    ap.add_argument("--variant", action="append", default=[], metavar="MODEL:K=V[,K=V]",
                    help="also time an msakit model with these overrides (rows "
                         "msakit:MODEL/vN@MODE); lnln and hme get /ref rows sized like "
                         "their reference")
    ap.add_argument("--venv-root", type=Path, default=None,
                    help="where the reference venvs live (default: user cache dir)")
    ap.add_argument("--git-dir", action="append", default=[], metavar="REF=PATH",
                    help=f"git dir of a reference ({', '.join(REPOS)}); default: "
                         "$MSAKIT_BENCH_MIRROR or /work/.mirror/OWNER+NAME/repo, else a clone")
    ap.add_argument("--commit", action="append", default=[], metavar="REF=COMMIT",
                    help="another commit than the pinned one")
    ap.add_argument("--precision", default="32",
                    help="comma-separated: 32 and/or bf16-mixed (rows KEY+bf16 under bf16 "
                         "autocast, both sides); default %(default)s")
    ap.add_argument("--provisional", action="store_true",
                    help="mark the markdown as provisional (loaded machine / dev run)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        worker(json.loads(args.worker), args.work, args.worker_out)
        return
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not set(modes) <= set(MODES):
        raise SystemExit(f"--modes {args.modes!r}: expected some of {', '.join(MODES)}")
    if args.models == ",".join(MSAKIT_MODELS):
        models = registered_models(models)
    variants: dict[str, list[tuple[str, list[str]]]] = {
        m: [("ref", s.split(","))] for m, s in REF_SIZED.items()}
    for i, v in enumerate(args.variant, 1):
        model, sep, sets = v.partition(":")
        kv = [s.strip() for s in sets.split(",") if s.strip()]
        if not sep or model not in models or not kv or any("=" not in s for s in kv):
            raise SystemExit(f"--variant {v!r}: expected MODEL:K=V[,K=V] with MODEL in "
                             f"{', '.join(models)}")
        variants.setdefault(model, []).append((f"v{i}", kv))
    precisions = parse_precisions(args.precision)
    every = with_precisions(all_rows(variants, models, modes), precisions)
    rows = select(every, args.only)
    if args.list:
        print("\n".join(r["key"] for r in every))
        return
    if not rows:
        raise SystemExit("--only matches no row (see --list)")
    if args.steps < 1 or args.warmup < 0 or (args.ref_steps is not None and args.ref_steps < 1):
        raise SystemExit("--steps must be >= 1 and --warmup >= 0")

    import torch

    git_dirs = parse_kv(args.git_dir, "--git-dir")
    commits = parse_kv(args.commit, "--commit")
    root = args.venv_root or cache_root()
    res = {
        "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "torch": torch.__version__,
        "batch": BATCH,
        "steps": args.steps,
        "ref_steps": args.ref_steps,
        "warmup": args.warmup,
        "provisional": args.provisional,
        "loadavg": {"before": [round(v, 2) for v in os.getloadavg()]},
        "sources": {},
        "venvs": {},
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="msakit-bench-refs-") as tmpdir:
        tmp = Path(tmpdir)
        print("building the bert-base-shaped encoder folder and the batch ...", flush=True)
        bert_dir = make_bert_dir(tmp / "bert-base-uncased-random")
        meta = make_data(tmp, bert_dir, args.warmup, args.steps)
        res["text_stats"] = meta["stats"]
        pys: dict[str, Path] = {}
        srcs: dict[str, Path] = {}
        for row in rows:
            key = row["key"]
            try:
                if row.get("venv") and row["venv"] not in pys:
                    pys[row["venv"]] = ensure_venv(row["venv"], root)
                    res["venvs"][row["venv"]] = venv_versions(pys[row["venv"]])
                if row.get("src") and row["src"] not in srcs:
                    paths = ("src/MMSA",) if row["src"] == "mmsa" else ()
                    srcs[row["src"]], commit = fetch_source(
                        row["src"], tmp / "src" / row["src"], git_dirs, commits, paths)
                    res["sources"][row["src"]] = {"repo": REPOS[row["src"]][0], "commit": commit}
            except (SystemExit, subprocess.CalledProcessError) as e:
                res["runs"][key] = {"error": f"setup failed: {e}", "side": row["side"]}
                print(f"{key}: setup FAILED: {e}", flush=True)
                continue
            if row.get("src"):
                row = {**row, "src": str(srcs[row["src"]])}
            py = pys.get(row.get("venv"), Path(sys.executable))
            r = run_worker(py, row, args, tmp, tmp)
            r.update(side=row["side"], venv_kind=row.get("venv"),
                     src_kind=REPO_OF.get(key.removesuffix(BF16)))
            res["runs"][key] = r
            if "error" in r:
                print(f"{key}: FAILED ({(r['error'].strip().splitlines() or ['?'])[-1][:120]})",
                      flush=True)
            else:
                print(f"{key}: {r['params'] / 1e6:.1f}M params, {r['mean_step_s']:.2f} s/step "
                      f"({r['mean_cpu_s']:.2f} CPU s), text len {r['text_lens'][0]}, "
                      f"peak RSS {r['peak_rss_mb']:,.0f} MiB", flush=True)
    res["loadavg"]["after"] = [round(v, 2) for v in os.getloadavg()]
    res["speedups"] = speedups(res)
    print()
    print(table(res))
    st = speedup_table(res)
    if st:
        print()
        print(st)
    if args.markdown:
        print()
        print(markdown(res))
    if args.out:
        from msakit.fileio import write_json

        write_json(args.out, res)
    errors = [k for k, r in res["runs"].items() if "error" in r]
    if errors:
        for k in errors:
            print(f"\n{k} failed:\n{res['runs'][k]['error']}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
