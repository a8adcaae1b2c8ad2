"""``prompts:DIR[,DATASET]``: a dataset with the cue texts of ``msakit prompts --out DIR``
attached (MMSLF). Writing prompts is :mod:`msakit.prompts`; reading them back and attaching them
to a dataset is here, in the data layer."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

from msakit.data.registry import register_prefix_loader
from msakit.errors import ConfigError, DataError, MissingDataError
from msakit.fileio import read_json

PROMPTS_FILE = "prompts.jsonl"
MANIFEST_FILE = "manifest.json"
PREFIX = "prompts:"



def read_prompts(dir: str | os.PathLike) -> tuple[dict, list[dict], str]:
    """(manifest, rows, SHA-256 of prompts.jsonl) of a ``msakit prompts`` folder."""
    d = Path(dir)
    if not d.is_dir():
        raise MissingDataError(f"--prompts {d}: not a folder (expected the --out of msakit "
                               f"prompts)")
    manifest = read_json(d / MANIFEST_FILE)
    path = d / PROMPTS_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise MissingDataError(f"{path}: not found (expected the --out of msakit prompts)") from None
    rows = []
    for n, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
            if not (isinstance(r, dict) and isinstance(r.get("id"), str)
                    and isinstance(r.get("text"), str) and r.get("status") in ("ok", "failed")):
                raise ValueError
        except ValueError:
            raise DataError(f"{path}: line {n} is not a prompt record (expected JSON with id, "
                            f"split, text, status ok/failed)") from None
        rows.append(r)
    return manifest, rows, hashlib.sha256(raw).hexdigest()


def attach_prompts(ds, dir: str | os.PathLike, read: tuple | None = None):
    """A copy of ``ds`` whose splits carry the cue texts of ``dir`` (``SplitData.prompt_text``,
    matched by sample id). Refuses when a training sample has no successful prompt; valid/test
    samples without one get "" (the student never reads prompts). The copy is named
    ``prompts:DIR`` (DIR resolved; ``prompts:DIR,NAME`` when ``ds`` is not the dataset the
    prompts were written for), which :func:`msakit.load_dataset` loads back, and its content hash also
    covers prompts.jsonl, so a run's config.json records which prompts it used. ``read``:
    what :func:`read_prompts` already returned for ``dir`` (not read again)."""
    from msakit.data.dataset import MSADataset

    manifest, rows, sha = read or read_prompts(dir)
    path = Path(dir) / PROMPTS_FILE
    ok = {r["id"]: r["text"] for r in rows if r["status"] == "ok"}
    splits = {}
    for name, sd in ds.splits.items():
        if name == "train":
            missing = [i for i in sd.ids if i not in ok]
            if missing:
                raise DataError(
                    f"{path}: training sample {missing[0]!r} has no successful prompt "
                    f"({len(missing)} of {len(sd.ids)} missing); rerun msakit prompts for "
                    f"dataset {ds.name!r}")
        splits[name] = replace(sd, prompt_text=[ok.get(i, "") for i in sd.ids],
                               prompt_ids=None, prompt_ids_mask=None)
    where = Path(dir).resolve()  # a name load_dataset resolves again (msakit eval), anywhere
    name = (f"{PREFIX}{where}" if manifest.get("dataset_name") == ds.name
            else f"{PREFIX}{where},{ds.name}")
    info = {**ds.info, "prompts": {
        "dir": str(where), "sha256": sha, "provider": manifest.get("provider"),
        "model": manifest.get("model"), "template_version": manifest.get("template_version"),
        "base_dataset": ds.name, "base_hash": ds.content_hash()}}
    out = MSADataset(name=name, splits=splits, label_scale=ds.label_scale, oracle=ds.oracle,
                     info=info, label_range=ds.label_range, classes=ds.classes,
                     standardized=ds.standardized)
    return out  # its content hash covers the attached prompt texts (MSADataset.content_hash)


def load_prompted(spec: str, **kw):
    """``load_dataset("prompts:DIR[,DATASET]")``: DATASET (default: the one the prompts were
    written for, from DIR/manifest.json) with DIR's prompts attached."""
    from msakit.data.registry import load_dataset

    body = spec[len(PREFIX):] if spec.startswith(PREFIX) else spec
    dir, _, base = body.partition(",")
    if not dir:
        raise ConfigError(f"--dataset {spec!r}: expected prompts:DIR[,DATASET]")
    read = read_prompts(dir)
    if not base:
        base = read[0].get("dataset")
        if not isinstance(base, str) or not base:
            raise DataError(f"{Path(dir) / MANIFEST_FILE}: no 'dataset' entry; name it: "
                            f"prompts:{dir},DATASET")
    return attach_prompts(load_dataset(base, **kw), dir, read)


register_prefix_loader(PREFIX, load_prompted)
