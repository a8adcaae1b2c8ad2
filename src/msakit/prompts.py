"""Per-sample cue texts for MMSLF: ``msakit prompts`` and :func:`attach_prompts`.

MMSLF (NeurIPS 2025; reference code LOGO-CUHKSZ/MMSLF, ``preprocess/Generate_Prompt.py``)
asks a multimodal LLM (GPT-4o-mini in the paper) for "visual cues" and "language cues" of each
sample from three frames and the transcript; for training samples the request also holds the
label. A teacher reads these cues, a student learns from the teacher and needs none.

Providers (registry :data:`PROVIDERS`, the CLI's ``--provider``):

- ``openai``: any server speaking the OpenAI chat-completions API (OpenAI, vLLM, llama.cpp
  server, Ollama), see :class:`OpenAIProvider`.
- ``offline``: deterministic rules, no network, no LLM (:class:`OfflineProvider`).

:func:`generate_prompts` writes ``OUT/prompts.jsonl`` (one ``{id, split, text, status, reason,
source}`` per sample) and ``OUT/manifest.json`` (provider, model, template version, counts, the
dataset and the file's SHA-256), both atomically. Answers are cached in SQLite (default
``OUT/cache.sqlite``) under a key hashing provider, model, :data:`TEMPLATE_VERSION` and the
request content (the request text, which holds the transcript and, for training samples only,
the label, plus the images' SHA-256), so a rerun sends nothing already answered and a killed
run resumes; samples whose request text is identical share one request. Failed samples are
not cached: a rerun asks again.

The label goes into a request for ``train`` samples only, never ``valid``/``test``: this
happens in one place, :func:`samples_from`. Our choices (not the paper's): the template's
wording, the observed-modality line for datasets without transcripts or frames, temperature 0,
at most 3 frames (the paper's count) sampled uniformly from ``--frames DIR/<id>/``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import re
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# reading a prompts folder back is the data layer's; attach_prompts is public here too
from msakit.data.sources.prompts import (  # noqa: F401
    MANIFEST_FILE,
    PREFIX,
    PROMPTS_FILE,
    attach_prompts,
    load_prompted,
    read_prompts,
)
from msakit.errors import ConfigError, DataError, MissingDataError, RunError
from msakit.fileio import write_json, write_text
from msakit.registry import Registry

TEMPLATE_VERSION = "mmslf-cues-v1"
CACHE_FILE = "cache.sqlite"
N_FRAMES = 3
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")

PROVIDERS: Registry[Callable[..., Provider]] = Registry("prompt provider")


class PromptFailure(Exception):
    """One sample's answer is unusable (the reason is the message); the run goes on."""


# ---------------------------------------------------------------------------------------------
# samples and the request template


@dataclass(frozen=True)
class Sample:
    """What a provider may read about one sample. ``label`` is None outside ``train``."""

    id: str
    split: str
    transcript: str | None
    observed: str
    label: str | None = None
    images: tuple[bytes, ...] = field(default=(), repr=False)

    def request_text(self) -> str:
        """The user message of :data:`TEMPLATE_VERSION` (our wording, after the paper's)."""
        lines = [
            "### Background ###",
            "You are a multimodal sentiment analysis expert. Write short, concrete hints that "
            "help a small model find the sentiment cues of this video clip.",
            "",
            "### Sample ###",
            f"Frames: {len(self.images)} attached." if self.images else "Frames: none.",
            f"Transcript: {self.transcript}" if self.transcript else "Transcript: none.",
            f"Observed modalities: {self.observed}",
        ]
        if self.label is not None:  # training samples only (samples_from)
            lines.append(f"Annotated sentiment (training sample): {self.label}")
        lines += [
            "",
            "### Answer format ###",
            "1. Visual cues: facial expressions in the frames (smiles, frowns, eye movements).",
            "2. Language cues: emotionally charged words and phrases in the transcript.",
        ]
        return "\n".join(lines)

    def image_hashes(self) -> list[str]:
        return [hashlib.sha256(b).hexdigest() for b in self.images]

    def key(self, provider: str, model: str) -> str:
        """The cache key: provider, model, template version and the request content."""
        blob = json.dumps([provider, model, TEMPLATE_VERSION, self.request_text(),
                           self.image_hashes()])
        return hashlib.sha256(blob.encode()).hexdigest()


def label_text(ds, y: float) -> str:
    """A training label as the request states it: class name, or value, range and polarity."""
    if ds.classes is not None:
        return f"class {ds.classes[int(round(y))]!r}"
    lo, hi = ds.label_range
    mid = (lo + hi) / 2
    pol = "neutral" if abs(y - mid) < 1e-6 else ("positive" if y > mid else "negative")
    return f"{y:+.2f} on [{lo:g}, {hi:g}] ({pol})"


def _observed(sd, i: int) -> str:
    parts = []
    for m in sd.modalities:
        if not sd.present[m][i]:
            parts.append(f"{m} absent")
        else:
            parts.append(f"{m} {int(sd.observed(m, [i]).sum())}/{sd.x[m].shape[1]} steps")
    return ", ".join(parts)


def load_frames(frames_dir: str | os.PathLike | None, sid: str) -> tuple[bytes, ...]:
    """Up to :data:`N_FRAMES` images of sample ``sid`` from ``frames_dir/<sid>/`` (sorted by
    name, sampled uniformly as the reference does); () when the folder has none."""
    if frames_dir is None:
        return ()
    d = Path(frames_dir) / sid
    if not d.is_dir():
        return ()
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        return ()
    idx = np.unique(np.linspace(0, len(files) - 1, min(N_FRAMES, len(files))).astype(int))
    return tuple(files[i].read_bytes() for i in idx)


def samples_from(ds, frames_dir: str | os.PathLike | None = None) -> list[Sample]:
    """Every sample of ``ds`` (train, valid, test order). The label is given for ``train``
    samples only: this is the one place that decides it."""
    if frames_dir is not None and not Path(frames_dir).is_dir():
        raise MissingDataError(f"--frames {frames_dir}: not a folder (expected FRAMES/<id>/*.jpg)")
    out = []
    for split in ("train", "valid", "test"):
        sd = ds.splits[split]
        for i, sid in enumerate(sd.ids):
            out.append(Sample(
                id=sid, split=split,
                transcript=(sd.raw_text[i].strip() or None) if sd.raw_text is not None else None,
                observed=_observed(sd, i),
                label=label_text(ds, float(sd.y[i])) if split == "train" else None,
                images=load_frames(frames_dir, sid),
            ))
    return out


# ---------------------------------------------------------------------------------------------
# providers


class Provider:
    """Turns a :class:`Sample` into cue text; raises :class:`PromptFailure` for that sample."""

    name = "?"
    model = "?"
    cached = True  # answers go through the on-disk cache
    concurrency = 1

    def answer(self, sample: Sample) -> str:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop retrying and sending (the run is being interrupted)."""

    def describe(self) -> dict:
        return {"provider": self.name, "model": self.model}


_POSITIVE = frozenset(
    "good great love loved like liked enjoy enjoyed best amazing awesome excellent fun funny "
    "happy beautiful wonderful nice perfect fantastic favorite brilliant recommend cool "
    "interesting glad impressive".split())
_NEGATIVE = frozenset(
    "bad worst hate hated boring awful terrible horrible stupid waste disappointed "
    "disappointing poor annoying sad dull mess ridiculous weak wrong ugly lame worse "
    "predictable".split())
_NEGATORS = frozenset("not no never dont didnt doesnt isnt wasnt cant wont nothing".split())


@PROVIDERS.register("offline")
class OfflineProvider(Provider):
    """NOT an LLM: deterministic cue text from what the sample itself holds, so MMSLF runs with
    no network. Language cues: the transcript's words found in a small built-in list of
    positive/negative words (ours), with a preceding negation noted; visual cues: which
    modalities are observed and how many frames exist (frames are not looked at). For training
    samples the cue also states the label, as the LLM is told it; valid/test cues never do."""

    name = "offline"
    model = "rules-v1"
    cached = False

    def answer(self, sample: Sample) -> str:
        visual = (f"{len(sample.images)} frames exist (not inspected offline); "
                  if sample.images else "no frames; ")
        visual += f"observed: {sample.observed}."
        if sample.transcript:
            words = re.findall(r"[a-z']+", sample.transcript.lower())
            words = [w.replace("'", "") for w in words]
            hits = []
            for j, w in enumerate(words):
                pol = "positive" if w in _POSITIVE else "negative" if w in _NEGATIVE else None
                if pol:
                    negated = j > 0 and words[j - 1] in _NEGATORS
                    hits.append(f"'{words[j - 1]} {w}' (negated {pol})" if negated
                                else f"'{w}' ({pol})")
            lang = (f"emotionally charged words: {', '.join(hits)}" if hits
                    else "no strongly charged words")
            lang += f"; transcript of {len(words)} words."
        else:
            lang = "no transcript."
        text = f"Visual cues: {visual}\nLanguage cues: {lang}"
        if sample.label is not None:
            text += f"\nAnnotated sentiment: {sample.label}."
        return text


class _Fatal(Exception):
    """A failure every request would share (authentication, wrong URL): the run stops."""


class RateLimiter:
    """Request starts spaced at least ``60 / rpm`` seconds apart (0: no limit)."""

    def __init__(self, rpm: float = 0) -> None:
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self, cancel: threading.Event | None = None) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            (cancel or threading.Event()).wait(start - now)


@PROVIDERS.register("openai")
class OpenAIProvider(Provider):
    """A client of the OpenAI chat-completions API (``POST {base_url}/chat/completions``):
    OpenAI, vLLM, llama.cpp server, Ollama (``http://localhost:11434/v1``) and the like.

    The API key is read from the environment variable ``api_key_env`` (sent as a Bearer token
    when set; required for api.openai.com). A sample with frames is sent as text plus
    ``image_url`` parts (base64 data URLs); one without as plain text. ``concurrency`` requests
    run at once, starts are limited to ``rpm`` per minute (0: no limit). 429, 5xx, timeouts
    and dropped connections are retried up to ``max_retries`` times with exponential backoff
    (``backoff`` * 2^attempt seconds, jittered, at most 60; a 429's ``Retry-After`` wins). A
    malformed or empty answer fails that sample with the reason; 401/403/404 stop the run
    (every request would fail the same way). Defaults ours, model as in the paper."""

    name = "openai"

    def __init__(self, model: str = "gpt-4o-mini", base_url: str = "https://api.openai.com/v1",
                 api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8, rpm: float = 0,
                 timeout: float = 60.0, max_retries: int = 5, backoff: float = 1.0,
                 max_tokens: int = 512) -> None:
        for opt, v, lo in (("--concurrency", concurrency, 1), ("--max-retries", max_retries, 0)):
            if not isinstance(v, int) or v < lo:
                raise ConfigError(f"{opt} {v!r}: expected an integer >= {lo}")
        for opt, v in (("--rpm", rpm), ("--timeout", timeout), ("backoff", backoff)):
            if not isinstance(v, (int, float)) or not np.isfinite(v) or v < 0:
                raise ConfigError(f"{opt} {v!r}: expected a number >= 0")
        if timeout <= 0:
            raise ConfigError(f"--timeout {timeout!r}: expected seconds > 0")
        if not re.match(r"^https?://[^/\s]+", base_url or ""):
            raise ConfigError(f"--base-url {base_url!r}: expected http(s)://host[:port]/path, "
                              f"e.g. http://127.0.0.1:8000/v1")
        if not model:
            raise ConfigError("--model: expected a model name the server knows")
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/chat/completions"
        self.api_key_env = api_key_env
        self.api_key = os.environ.get(api_key_env) or None
        if self.api_key is None and "api.openai.com" in self.base_url:
            raise ConfigError(f"--api-key-env {api_key_env}: the environment variable is not "
                              f"set; api.openai.com needs an API key")
        self.concurrency, self.timeout, self.max_retries = concurrency, float(timeout), max_retries
        self.backoff, self.max_tokens = float(backoff), max_tokens
        self.limiter = RateLimiter(rpm)
        self.rpm = rpm
        self.requests = 0  # HTTP requests sent (retries included)
        self._count_lock = threading.Lock()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        self._cancel.set()

    def describe(self) -> dict:
        return {"provider": self.name, "model": self.model, "base_url": self.base_url,
                "api_key_env": self.api_key_env, "concurrency": self.concurrency,
                "rpm": self.rpm, "timeout": self.timeout, "max_retries": self.max_retries}

    def body(self, sample: Sample) -> dict:
        text = sample.request_text()
        if sample.images:
            content: str | list = [{"type": "text", "text": text}] + [
                {"type": "image_url", "image_url": {
                    "url": f"data:{_mime(b)};base64,{base64.b64encode(b).decode()}"}}
                for b in sample.images]
        else:
            content = text
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "temperature": 0, "max_tokens": self.max_tokens}

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(max(float(retry_after), 0.0), 120.0)
            except ValueError:
                pass  # an HTTP date: fall back to our backoff
        return min(self.backoff * 2 ** attempt, 60.0) * (0.5 + random.random() / 2)

    def answer(self, sample: Sample) -> str:
        data = json.dumps(self.body(sample)).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last, retry_after = "", None
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._cancel.wait(self._delay(attempt - 1, retry_after))
            self.limiter.wait(self._cancel)
            if self._cancel.is_set():
                raise _Fatal("interrupted")
            retry_after = None
            with self._count_lock:
                self.requests += 1
            req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as e:
                said = " ".join(e.read()[:200].decode("utf-8", "replace").split())
                e.close()
                said = f": {said}" if said else ""
                if e.code in (401, 403, 404):
                    raise _Fatal(f"{self.url}: HTTP {e.code} {e.reason}{said} (check --base-url, "
                                 f"--model and the key in ${self.api_key_env})") from None
                if e.code == 429 or e.code >= 500:
                    last = f"HTTP {e.code}"
                    retry_after = e.headers.get("Retry-After") if e.code == 429 else None
                    continue
                raise PromptFailure(f"HTTP {e.code} {e.reason}{said}") from None
            except (TimeoutError, urllib.error.URLError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                if isinstance(reason, TimeoutError) or isinstance(e, TimeoutError):
                    last = f"timed out after {self.timeout:g} s"
                elif isinstance(reason, ConnectionRefusedError):
                    last = "refused"
                else:
                    last = f"connection failed ({reason})"
                continue
            return _parse_answer(raw)
        if last == "refused":  # no server there: every sample would wait through its retries
            raise _Fatal(f"{self.url}: connection refused after {self.max_retries + 1} "
                         f"attempt(s); is the server running (--base-url)?")
        raise PromptFailure(f"{last} after {self.max_retries + 1} attempt(s)")


def _mime(b: bytes) -> str:
    if b[:8] == b"\x89PNG\r\n\x1a\n":
        return "image/png"
    if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def _parse_answer(raw: bytes) -> str:
    """The assistant text of a chat-completions response, or PromptFailure saying why not."""
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise PromptFailure(f"malformed answer: not JSON ({raw[:60]!r})") from None
    try:
        content = obj["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise PromptFailure("malformed answer: no choices[0].message.content") from None
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str) or not content.strip():
        raise PromptFailure("empty answer")
    return content.strip()


def make_provider(name: str, **options) -> Provider:
    """A provider by registry name; ``options`` go to its constructor."""
    from msakit.errors import UnknownNameError

    try:
        cls = PROVIDERS.get(name)
    except UnknownNameError as e:
        raise ConfigError(f"--provider {name!r}: {e}") from None
    return cls(**options)


# ---------------------------------------------------------------------------------------------
# the cache


class PromptCache:
    """Answers on disk (SQLite, one row per key, committed as each answer arrives); safe to
    share between threads and between processes."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS cues (key TEXT PRIMARY KEY, "
                             "provider TEXT, model TEXT, template TEXT, text TEXT, "
                             "created REAL)")
            self._db.commit()
        except sqlite3.DatabaseError as e:
            raise DataError(f"--cache {self.path}: not a usable SQLite prompt cache ({e})") from None

    def get_many(self, keys: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        with self._lock:
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                q = f"SELECT key, text FROM cues WHERE key IN ({','.join('?' * len(chunk))})"
                out.update(self._db.execute(q, chunk).fetchall())
        return out

    def put(self, key: str, provider: Provider, text: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO cues VALUES (?, ?, ?, ?, ?, ?)",
                             (key, provider.name, provider.model, TEMPLATE_VERSION, text,
                              time.time()))
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


# ---------------------------------------------------------------------------------------------
# the command


def generate_prompts(
    dataset, out: str | os.PathLike, provider: str | Provider = "offline", *,
    cache: str | os.PathLike | None = None, frames: str | os.PathLike | None = None,
    progress: bool = False, **provider_options,
) -> dict:
    """Write one cue text per sample of ``dataset`` (an MSADataset or a name/path) to
    ``out/prompts.jsonl`` and ``out/manifest.json``; returns the manifest. ``provider``: a
    registry name (with ``provider_options``) or a :class:`Provider`. ``cache``: the SQLite
    answer cache (default ``out/cache.sqlite``). ``frames``: a folder of ``<id>/*.jpg``."""
    from msakit.data.dataset import MSADataset
    from msakit.data.registry import load_dataset
    from msakit.fileio import check_out_dir

    out = check_out_dir(out)
    prov = provider if isinstance(provider, Provider) else make_provider(provider,
                                                                        **provider_options)
    spec = dataset.name if isinstance(dataset, MSADataset) else str(dataset)
    if Path(spec).exists():  # a path: recorded resolved, so load_prompted finds it from anywhere
        spec = str(Path(spec).resolve())
    ds = dataset if isinstance(dataset, MSADataset) else load_dataset(dataset)
    samples = samples_from(ds, frames)
    keys = [s.key(prov.name, prov.model) for s in samples]
    first: dict[str, Sample] = {}
    for k, s in zip(keys, samples, strict=True):
        first.setdefault(k, s)
    out.mkdir(parents=True, exist_ok=True)
    store = PromptCache(cache if cache is not None else out / CACHE_FILE) if prov.cached else None
    results: dict[str, tuple[str, str, str]] = {}  # key -> (status, text or reason, source)
    try:
        hits = store.get_many(list(first)) if store else {}
        for k, text in hits.items():
            results[k] = ("ok", text, "cache")
        todo = [k for k in first if k not in results]
        _run(prov, store, [(k, first[k]) for k in todo], results, progress)
    finally:
        if store:
            store.close()
    rows, seen = [], set()
    for k, s in zip(keys, samples, strict=True):
        status, val, source = results[k]
        if k in seen and source == "request":  # identical requests were sent once
            source = "shared"
        seen.add(k)
        rows.append({"id": s.id, "split": s.split, "text": val if status == "ok" else "",
                     "status": status, "reason": "" if status == "ok" else val,
                     "source": source})
    text = "".join(json.dumps(r) + "\n" for r in rows)
    write_text(out / PROMPTS_FILE, text)
    counts = {"samples": len(rows), "ok": sum(r["status"] == "ok" for r in rows),
              "failed": sum(r["status"] == "failed" for r in rows),
              "from_cache": sum(r["source"] == "cache" for r in rows),
              "requested": sum(r["source"] == "request" for r in rows),
              "shared": sum(r["source"] == "shared" for r in rows),
              "offline": sum(r["source"] == "offline" for r in rows)}
    manifest = {
        **prov.describe(), "template_version": TEMPLATE_VERSION, "dataset": spec,
        "dataset_name": ds.name, "dataset_hash": ds.content_hash(),
        "frames": None if frames is None else str(frames),
        "counts": counts, "http_requests": getattr(prov, "requests", 0),
        "file": PROMPTS_FILE, "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "label_in_request": "train only",
    }
    write_json(out / MANIFEST_FILE, manifest)
    return manifest


def _run(prov: Provider, store: PromptCache | None, todo: list[tuple[str, Sample]],
         results: dict, progress: bool) -> None:
    from tqdm import tqdm

    source = "request" if prov.cached else "offline"
    bar = tqdm(total=len(todo), desc=f"prompts ({prov.name})", unit="sample",
               disable=not progress or not todo, dynamic_ncols=True)

    stop = threading.Event()  # set by a fatal answer: the queued samples are not sent
    fatal: list[str] = []

    def one(k: str, s: Sample) -> tuple[str, str, str]:
        if stop.is_set():
            raise _Fatal("stopped")
        try:
            text = prov.answer(s)
        except PromptFailure as e:
            return "failed", str(e), source
        except _Fatal as e:
            fatal.append(str(e))
            stop.set()
            raise
        if store:
            store.put(k, prov, text)
        return "ok", text, source

    try:
        if prov.concurrency <= 1:
            for k, s in todo:
                results[k] = one(k, s)
                bar.update()
            return
        pool = ThreadPoolExecutor(max_workers=prov.concurrency)
        try:
            futs = {pool.submit(one, k, s): k for k, s in todo}
            for f in as_completed(futs):
                results[futs[f]] = f.result()
                bar.update()
        except BaseException:  # Ctrl-C or a fatal answer: send nothing more
            stop.set()
            prov.cancel()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    except _Fatal as e:
        raise RunError(fatal[0] if fatal else str(e)) from None
    finally:
        bar.close()
