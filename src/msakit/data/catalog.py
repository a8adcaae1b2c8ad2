"""The dataset catalog: which files each dataset needs, their pinned SHA-256, where to get them.

Real data is never shipped with msakit. A dataset's files are looked for, with their relative
paths, under each root of :func:`msakit.data.registry.shared_data_candidates` ($MSAKIT_DATA,
a ``shared/data`` folder beside the checkout, then the user cache dir). Loaders call
:func:`require_files` first: absent files raise :class:`MissingDataError` saying what to
download, from where and where to put it; a file whose SHA-256 differs from the pinned one
raises :class:`ChecksumError` naming it. :func:`describe_all` is what ``msakit datasets`` prints.

Source modules pin their files with :data:`SHA256` and register a cheap summary
(dims and split sizes, computed without loading features) with :func:`register_summary`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from msakit.data import registry
from msakit.data.registry import DatasetEntry
from msakit.errors import DataError, MissingDataError

# SHA-256 of the public files msakit knows, relative to a data root (computed from the
# unchanged copies in shared/data; see its README for where each comes from).
SHA256: dict[str, str] = {
    "cmu-mosi/CMU_MOSI_Opinion_Labels.csd": "aef5f4617cdb067cc7606bb798eb6452c3de45f0f21cb3427be33c4d8c7fe852",
    "cmu-mosi/standard_folds.json": "ca4fcdbb91353aa90289da64796713362b040507b8845155c091b45cf2641265",
    "mosi-bclstm/transcripts.csv": "e7689e6d70720addd2a6b316419d245a68839c32b014ff426c406063ee777466",
    "mosi-bclstm/text_train.csv": "73770b6302ad0f7a51f4eddcae6788efde4d0b6802e09f78249d5b538d1c1d67",
    "mosi-bclstm/text_test.csv": "f3b735070bf07ceff7a6ef6c8f4c32757e988de484e35bd6d38b2aecef851a59",
    "mosi-bclstm/audio/audio_train0.csv": "5435398a54664e7b00304587dc59ae84a438852be033c2a2fba779588624a2a1",
    "mosi-bclstm/audio/audio_test0.csv": "ddd17eeefd3d951d51d4e2ef8a0d132652d8161e1886f71eb7262b7a14bffff6",
    "mosi-bclstm/text/text_train0.csv": "cc327045db6cc361a08b4037b97bb24de4ddb5efb381468c4835cc4a60674668",
    "mosi-bclstm/text/text_test0.csv": "a343e22272919d1384c2075dbcdd5fef5aa9f9366b0552a83f7c3147b64b047a",
    "mosi-bclstm/video/video_train0.csv": "b6efc0413132d627efd06f67f1706830e775e90af9a75696f535c48dbc73f12f",
    "mosi-bclstm/video/video_test0.csv": "cab836253d81100f59d533fa2ff65cd53c486be3ec9fd82203c5e25a7a77265f",
    "mosi-text/label.csv": "74c52aba8884cca3f77962310c41f31d3d6250c4e4b50fd77fd4efe4eb75a521",
    "mosei-text/label.csv": "74a195945e28c1bbc45b6d279a99655d163f33d2c28b0c723ddba87bfbb97bfa",
    "mfn-mmmo/audio_train.h5": "4c37e59d75bf1fe17baf6d607e4e7eef228b9b16a145f64c9624d2fc8fcb1666",
    "mfn-mmmo/audio_valid.h5": "37b39911ee143d712e36d1fcba5b41400d2b40bef9de3da419de7344486eb8e9",
    "mfn-mmmo/audio_test.h5": "1d701dc193b3e4404e35b97165fd33af19aff50d193a744488ec4c87ea0d6c44",
    "mfn-mmmo/video_train.h5": "2b7d7d442c1ef7aae0c06d19a845baeb5f8685ee844900f30d6cce643da42452",
    "mfn-mmmo/video_valid.h5": "43a44a63e369bca2fc86c54fa42d9b3b30c03657b8f7287bdae60341f4767d8c",
    "mfn-mmmo/video_test.h5": "d0bfeb4a0ca249ac766b9c426146e4765b783463112e78665231a82c7b02f176",
    "mfn-mmmo/y_train.h5": "872872ba80f2076a2f5287ace2e3cb72dff7abaa01e1906073c1d50a15a84d6e",
    "mfn-mmmo/y_valid.h5": "e164e98d53b01e558af6eb232fdc0ca8660f8bd3e76469ca12bef124688a4c8f",
    "mfn-mmmo/y_test.h5": "17a83a344f15fc751bf10a052ade48d0944959052b30f33bc2c5216a31ea59ee",
}

# name -> summary(root: Path | None) -> {"dims": {m: D}, "sizes": {split: N}}; must be cheap.
SUMMARIES: dict[str, Callable[[Path | None], dict]] = {}


class ChecksumError(DataError):
    """A dataset file exists but its SHA-256 differs from the pinned one."""


def pinned(*files: str) -> dict[str, str | None]:
    """``{file: pinned sha256 or None}`` for a DatasetEntry's ``files``."""
    return {f: SHA256.get(f) for f in files}


def register_summary(name: str, fn: Callable[[Path | None], dict]) -> None:
    """Register a cheap ``fn(root) -> {"dims": ..., "sizes": ...}`` for ``msakit datasets``."""
    SUMMARIES[name] = fn


_HASHED: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file (remembered per path, size and mtime within a process)."""
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHED:
        h = hashlib.sha256()
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASHED[key] = h.hexdigest()
    return _HASHED[key]


def download_root() -> Path:
    """Where downloaded files should go: $MSAKIT_DATA, else the user cache dir."""
    if os.environ.get("MSAKIT_DATA"):
        return Path(os.environ["MSAKIT_DATA"]).expanduser()
    return registry.shared_data_candidates()[-1]


def how_to_get(entry: DatasetEntry, missing: list[str] | None = None) -> str:
    """A sentence saying what to download, from where and where to put it."""
    missing = list(entry.files) if missing is None else missing
    searched = ", ".join(str(c) for c in registry.shared_data_candidates())
    return (
        f"dataset {entry.name!r}: missing {', '.join(missing)}. Download "
        f"{'them' if len(missing) > 1 else 'it'} from {entry.source or '(no public source known)'} "
        f"and put {'them' if len(missing) > 1 else 'it'} under {download_root()} with these "
        f"relative paths (or set MSAKIT_DATA to a folder that holds them). Searched: {searched}"
    )


def file_status(entry: DatasetEntry, root: Path, verify: bool = True) -> str:
    """"ok", "missing: a, b" or "checksum mismatch: f" for ``entry``'s files under ``root``."""
    missing = [f for f in entry.files if not (root / f).is_file()]
    if missing:
        return "missing: " + ", ".join(missing)
    if verify:
        for f, sha in entry.files.items():
            if sha is not None and sha256_file(root / f) != sha:
                return f"checksum mismatch: {f}"
        return "ok"
    return "ok (not verified)"


def require_files(entry: DatasetEntry | str, root: str | os.PathLike, verify: bool = True) -> Path:
    """Check that ``entry``'s files are under ``root`` (and match their SHA-256); return root.

    Raises MissingDataError (what to download, from where, where to put it) or ChecksumError.
    """
    if isinstance(entry, str):
        entry = registry.DATASETS.get(entry)
    root = Path(root)
    missing = [f for f in entry.files if not (root / f).is_file()]
    if missing:
        extra = "" if root in registry.shared_data_candidates() else f", {root}"
        raise MissingDataError(how_to_get(entry, missing) + extra)
    if verify:
        for f, sha in entry.files.items():
            if sha is not None and (got := sha256_file(root / f)) != sha:
                raise ChecksumError(
                    f"dataset {entry.name!r}: checksum mismatch for {root / f}: expected SHA-256 "
                    f"{sha}, got {got}; the file is corrupt or a different version; download it "
                    f"again from {entry.source}"
                )
    return root


def describe(entry: DatasetEntry, verify: bool = True) -> dict:
    """One catalog row: name, modalities, dims, sizes, status, where."""
    row: dict = {
        "name": entry.name,
        "description": entry.description,
        "modalities": tuple(entry.modalities),
        "dims": {},
        "sizes": {},
        "source": entry.source,
    }
    summary = SUMMARIES.get(entry.name)
    if entry.synthetic:
        row["status"], row["where"] = "built-in", "generated on the fly (seeded)"
        root = None
    else:
        root = registry.data_root(entry)
        row["status"] = file_status(entry, root, verify)
        if row["status"].startswith("missing"):
            row["where"] = f"download from {entry.source or '?'}; put under {download_root()}"
        else:
            row["where"] = str(root)
    if summary is not None:
        try:
            s = summary(root)
        except Exception as e:  # a listing must not die on one broken or absent dataset
            if not row["status"].startswith("missing"):
                row["status"] += f" (summary failed: {e})"
        else:
            row["dims"], row["sizes"] = dict(s.get("dims", {})), dict(s.get("sizes", {}))
    return row


def describe_all(verify: bool = True) -> list[dict]:
    """Every registered dataset as a dict with keys name, modalities (tuple), dims, sizes
    (split -> N), status ("ok", "built-in", "missing: <files>", "checksum mismatch: <file>")
    and where (the folder found, or what to download from where and where to put it)."""
    import msakit.data  # noqa: F401  (registers every source)

    return [describe(e, verify) for _, e in registry.DATASETS.items()]
