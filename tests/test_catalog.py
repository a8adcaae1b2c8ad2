"""The dataset catalog: pinned checksums, status per dataset, and the errors for absent or
corrupt files (on temporary folders, never on the real data)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import pytest

import msakit.data  # noqa: F401  (registers every source)
from msakit.data import catalog, registry
from msakit.data.batch import SplitData
from msakit.data.dataset import MSADataset
from msakit.data.registry import DATASETS, DatasetEntry, load_dataset

REAL = ("mosi-bclstm", "mosi-text", "mosei-text")


@pytest.fixture()
def only_root(tmp_path, monkeypatch):
    """Make tmp_path/data the only data root (no shared/data, no user cache)."""
    root = tmp_path / "data"
    root.mkdir()
    monkeypatch.setenv("MSAKIT_DATA", str(root))
    monkeypatch.setattr(registry, "shared_data_candidates", lambda: [root])
    return root


def _tiny_dataset(name: str) -> MSADataset:
    def sd(s):
        return SplitData(x={"text": np.ones((2, 1, 3), np.float32)},
                         lengths={"text": np.ones(2, np.int64)}, y=[0.5, -0.5],
                         ids=[f"{s}-a", f"{s}-b"])

    return MSADataset(name, {s: sd(s) for s in ("train", "valid", "test")})


@pytest.fixture()
def toy_entry(monkeypatch):
    """A registered file dataset 'toy-files' with one pinned file, removed after the test."""
    content = b"hello msakit\n"

    def loader(root: Path, verify: bool = True, **kw):
        catalog.require_files("toy-files", root, verify)
        return _tiny_dataset("toy-files")

    entry = DatasetEntry(
        name="toy-files", loader=loader, description="toy",
        files={"toy/a.txt": hashlib.sha256(content).hexdigest(), "toy/b.txt": None},
        source="https://example.org/toy", modalities=("text",),
    )
    monkeypatch.setitem(DATASETS._items, "toy-files", entry)
    return entry, content


def test_real_entries_pin_every_file():
    for name in REAL:
        entry = DATASETS.get(name)
        assert entry.files, name
        for f, sha in entry.files.items():
            assert re.fullmatch(r"[0-9a-f]{64}", sha or ""), (name, f)
        assert "github.com" in entry.source or "MMSA" in entry.source
    assert "cmu-mosi/CMU_MOSI_Opinion_Labels.csd" in DATASETS.get("mosi-bclstm").files


def test_sha256_file(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"abc" * 1000)
    assert catalog.sha256_file(p) == hashlib.sha256(b"abc" * 1000).hexdigest()


def test_describe_all_rows_and_builtin_synthetic(monkeypatch, only_root):
    monkeypatch.setitem(DATASETS._items, "toy-synth", DatasetEntry(
        name="toy-synth", loader=lambda **kw: _tiny_dataset("toy-synth"),
        description="built in", synthetic=True))
    monkeypatch.setitem(catalog.SUMMARIES, "toy-synth",
                        lambda root: {"dims": {"text": 3}, "sizes": {"train": 2}})
    rows = {r["name"]: r for r in catalog.describe_all(verify=True)}
    assert set(rows) == set(DATASETS.names())
    for r in rows.values():
        assert {"name", "modalities", "dims", "sizes", "status", "where"} <= set(r)
        assert isinstance(r["modalities"], tuple)
    assert rows["toy-synth"]["status"] == "built-in"
    assert rows["toy-synth"]["dims"] == {"text": 3}
    r = rows["mosi-bclstm"]
    assert r["status"].startswith("missing: ") and "mosi-bclstm/transcripts.csv" in r["status"]
    assert "declare-lab/multimodal-deep-learning" in r["where"] and str(only_root) in r["where"]
    assert rows["mosi-text"]["modalities"] == ("text",)


def test_absent_files_say_what_where_and_how(only_root):
    with pytest.raises(FileNotFoundError) as e:
        load_dataset("mosi-bclstm")
    msg = str(e.value)
    assert "mosi-bclstm/audio/audio_train0.csv" in msg
    assert "declare-lab/multimodal-deep-learning" in msg
    assert str(only_root) in msg and "MSAKIT_DATA" in msg
    with pytest.raises(FileNotFoundError, match="mosi-text/label.csv"):
        load_dataset("mosi-text")


def test_checksum_mismatch_and_ok(only_root, toy_entry):
    entry, content = toy_entry
    (only_root / "toy").mkdir()
    (only_root / "toy" / "b.txt").write_text("unpinned")
    assert catalog.file_status(entry, only_root) == "missing: toy/a.txt"
    (only_root / "toy" / "a.txt").write_bytes(b"tampered\n")
    assert catalog.file_status(entry, only_root) == "checksum mismatch: toy/a.txt"
    assert catalog.file_status(entry, only_root, verify=False) == "ok (not verified)"
    with pytest.raises(catalog.ChecksumError, match=r"toy/a\.txt.*expected SHA-256"):
        load_dataset("toy-files")
    assert load_dataset("toy-files", verify=False).name == "toy-files"
    (only_root / "toy" / "a.txt").write_bytes(content)
    row = catalog.describe(entry)
    assert row["status"] == "ok" and row["where"] == str(only_root)
    assert load_dataset("toy-files").sizes() == {"train": 2, "valid": 2, "test": 2}


def test_msakit_data_env_is_searched_first(tmp_path, monkeypatch, toy_entry):
    entry, content = toy_entry
    root = tmp_path / "mine"
    (root / "toy").mkdir(parents=True)
    (root / "toy" / "a.txt").write_bytes(content)
    (root / "toy" / "b.txt").write_text("x")
    monkeypatch.setenv("MSAKIT_DATA", str(root))
    assert registry.shared_data_candidates()[0] == root
    assert registry.data_root(entry) == root
    assert catalog.download_root() == root
    assert catalog.describe(entry)["status"] == "ok"


def test_real_dataset_fixture_fails_checksum(tmp_path, monkeypatch):
    """The real loaders verify: a look-alike mosi-bclstm folder is refused by name."""
    from test_readers import bclstm_fixture

    bclstm_fixture(tmp_path, np.random.default_rng(0))
    monkeypatch.setattr(registry, "shared_data_candidates", lambda: [tmp_path])
    with pytest.raises(catalog.ChecksumError, match="CMU_MOSI_Opinion_Labels.csd"):
        load_dataset("mosi-bclstm")
    assert load_dataset("mosi-bclstm", verify=False).sizes()["test"] == 6
    row = catalog.describe(DATASETS.get("mosi-bclstm"))
    assert row["status"].startswith("checksum mismatch: ")
