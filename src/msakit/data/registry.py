"""Dataset catalog entries: a name, how to load it, and which files it needs.

Readers register themselves here; :func:`load_dataset` takes a catalog name or a file path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from msakit.data.dataset import MSADataset
from msakit.errors import DataError, UnknownNameError
from msakit.registry import Registry


@dataclass
class DatasetEntry:
    """``loader(root: Path, **kw) -> MSADataset``; ``files`` maps relative paths (under the data
    root) to their SHA-256 (None when not pinned); ``source`` says where to download them."""

    name: str
    loader: Callable[..., MSADataset]
    description: str
    files: dict[str, str | None] = field(default_factory=dict)
    source: str = ""
    modalities: tuple[str, ...] = ("text", "audio", "vision")
    synthetic: bool = False


DATASETS: Registry[DatasetEntry] = Registry("dataset")
# path loaders: (predicate(path) -> bool, loader(path, **kw) -> MSADataset)
PATH_LOADERS: list[tuple[Callable[[Path], bool], Callable[..., MSADataset]]] = []
# spec prefixes: "join:" -> loader(spec, **kw) -> MSADataset (e.g. join:mosi-text,mosei-text)
PREFIX_LOADERS: dict[str, Callable[..., MSADataset]] = {}


def register_dataset(entry: DatasetEntry) -> DatasetEntry:
    return DATASETS.register(entry.name, entry)


def register_path_loader(pred: Callable[[Path], bool], loader: Callable[..., MSADataset]) -> None:
    PATH_LOADERS.append((pred, loader))


def register_prefix_loader(prefix: str, loader: Callable[..., MSADataset]) -> None:
    PREFIX_LOADERS[prefix] = loader


def shared_data_candidates() -> list[Path]:
    """The folders searched for real data, in order: $MSAKIT_DATA, ../shared/data beside the
    working directory or the source checkout, then the user cache dir."""
    from platformdirs import user_cache_dir

    out: list[Path] = []
    if os.environ.get("MSAKIT_DATA"):
        out.append(Path(os.environ["MSAKIT_DATA"]).expanduser())
    here = Path(__file__).resolve()
    for base in (Path.cwd(), *here.parents):
        cand = base.parent / "shared" / "data"
        if cand.is_dir() and cand not in out:
            out.append(cand)
            break
    out.append(Path(user_cache_dir("msakit")) / "data")
    return out


def data_root(entry: DatasetEntry | None = None) -> Path:
    """First candidate root holding all of ``entry``'s files (or the first candidate)."""
    cands = shared_data_candidates()
    if entry is not None:
        for c in cands:
            if all((c / f).exists() for f in entry.files):
                return c
    for c in cands:
        if c.is_dir():
            return c
    return cands[-1]


def load_dataset(name_or_path: str | os.PathLike, **kw) -> MSADataset:
    """Load a catalog dataset by name (``msakit datasets`` lists them) or a file by path."""
    import msakit.data  # noqa: F401  (registers readers)

    key = str(name_or_path)
    for prefix, loader in PREFIX_LOADERS.items():
        if key.startswith(prefix):
            return loader(key, **kw)
    if key in DATASETS:
        entry = DATASETS.get(key)
        return entry.loader(**kw) if entry.synthetic else entry.loader(data_root(entry), **kw)
    p = Path(key).expanduser()
    if p.exists():
        for pred, loader in PATH_LOADERS:
            if pred(p):
                return loader(p, **kw)
        raise DataError(
            f"--dataset {key!r}: no reader recognises this path; expected an MMSA pickle "
            f"(*.pkl), a folder of train/valid/test .npz or .h5 arrays, an MFN HDF5 folder "
            f"(y_train.h5, ...), a CMU-MultimodalSDK folder of .csd files, or a label.csv"
        )
    raise UnknownNameError(
        f"--dataset {key!r} is neither a catalog name nor an existing path (nor "
        f"join:A,B of them); catalog: {', '.join(DATASETS.names())}"
    )
