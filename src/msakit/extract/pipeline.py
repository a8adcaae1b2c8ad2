"""One clip, start to end: decode -> transcript and word times -> audio LLDs -> face features
-> token features -> word alignment, each stage timed (:class:`ClipFeatures`).

Unaligned features keep each modality's own rate (audio 10 ms, vision ``vision_fps``, text
tokens) and hold only observed steps, in time order, with their start times;
:meth:`ClipFeatures.on_grid` puts them back on the full time grid with a mask (what a dataset
stores, so a silent stretch or a frame without a face is a gap of missing steps in place). Word-aligned
features average the observed audio and vision steps whose intervals overlap each word's
interval (MMSA's ``aligned_50`` convention, Zadeh et al. 2018's P2FA-style alignment), and the
word's own tokens for text; a word with no observed step of a modality is missing there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from msakit.data.catalog import sha256_file
from msakit.extract import stages
from msakit.extract.media import ClipError, decode_audio, decode_frames, probe
from msakit.extract.settings import ExtractSettings
from msakit.fileio import write_npz

MODALITIES = ("text", "audio", "vision")
STAGES = ("load", "decode", "asr", "audio", "vision", "text", "align")


@dataclass
class ClipFeatures:
    """Features of one clip.

    x[m]: (L_m, D_m) float32 observed steps only (text: encoder tokens incl. [CLS]/[SEP]);
    times[m]: (L_m,) start time of each step in seconds (text: NaN); grid[m]: steps of the full
    grid, observed or not (so ``1 - L_m / grid[m]`` is the missing share). aligned[m]: (W, D_m)
    per-word features with aligned_mask[m] (W,) True where observed. words: (word, start_s,
    end_s); word_timing: "asr", "prefix", "prefix+interpolated" or "even" (no audio).
    present[m]: the modality has at least one observed step. absent[m]: why it has none.
    timings: wall seconds per stage (``load``: models, first clip of a process only);
    cpu_timings: process CPU seconds per stage. text_ids: (L_t,) token ids of the transcript.
    """

    id: str
    source: str
    sha256: str
    duration_s: float
    transcript: str
    words: list[tuple[str, float, float]]
    word_timing: str
    x: dict[str, np.ndarray]
    times: dict[str, np.ndarray]
    grid: dict[str, int]
    aligned: dict[str, np.ndarray]
    aligned_mask: dict[str, np.ndarray]
    text_ids: np.ndarray
    text_unk_id: int | None
    timings: dict[str, float]
    settings: dict
    cpu_timings: dict[str, float] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)
    absent: dict[str, str] = field(default_factory=dict)

    @property
    def present(self) -> dict[str, bool]:
        return {m: len(self.x[m]) > 0 for m in MODALITIES}

    @property
    def lengths(self) -> dict[str, int]:
        return {m: int(len(self.x[m])) for m in MODALITIES}

    @property
    def dims(self) -> dict[str, int]:
        return {m: int(self.x[m].shape[1]) for m in MODALITIES}

    def on_grid(self, m: str) -> tuple[np.ndarray, np.ndarray]:
        """(grid[m], D) features and (grid[m],) mask: each observed step at its place on the
        modality's time grid (audio: 10 ms hops, vision: ``vision_fps``; text tokens have no
        gaps), missing steps zero and False."""
        x = self.x[m]
        if m == "text":
            return x, np.ones(len(x), bool)
        rate = 1.0 / stages.AUDIO_HOP_S if m == "audio" else float(self.settings["vision_fps"])
        at = np.clip(np.round(self.times[m] * rate).astype(np.int64), 0, max(self.grid[m] - 1, 0))
        full = np.zeros((self.grid[m], x.shape[1]), np.float32)
        mask = np.zeros(self.grid[m], bool)
        full[at], mask[at] = x, True
        return full, mask

    def meta(self) -> dict:
        """Everything but the arrays, JSON-able."""
        return {"id": self.id, "source": self.source, "sha256": self.sha256,
                "duration_s": self.duration_s, "transcript": self.transcript,
                "words": [list(w) for w in self.words], "word_timing": self.word_timing,
                "grid": self.grid, "text_unk_id": self.text_unk_id, "timings": self.timings,
                "cpu_timings": self.cpu_timings, "settings": self.settings,
                "names": self.names, "absent": self.absent,
                "present": self.present, "lengths": self.lengths}

    def save(self, path: str | Path) -> None:
        """One ``.npz`` (no pickles), written atomically: a finished clip."""
        arrs = {"meta": np.array(json.dumps(self.meta())), "text_ids": self.text_ids}
        for m in MODALITIES:
            arrs |= {f"x_{m}": self.x[m], f"times_{m}": self.times[m],
                     f"aligned_{m}": self.aligned[m], f"aligned_mask_{m}": self.aligned_mask[m]}
        write_npz(path, **arrs)

    @classmethod
    def load(cls, path: str | Path) -> ClipFeatures:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arr = {k: z[k] for k in z.files if k != "meta"}
        return cls(
            id=meta["id"], source=meta["source"], sha256=meta["sha256"],
            duration_s=meta["duration_s"], transcript=meta["transcript"],
            words=[tuple(w) for w in meta["words"]], word_timing=meta["word_timing"],
            x={m: arr[f"x_{m}"] for m in MODALITIES},
            times={m: arr[f"times_{m}"] for m in MODALITIES}, grid=meta["grid"],
            aligned={m: arr[f"aligned_{m}"] for m in MODALITIES},
            aligned_mask={m: arr[f"aligned_mask_{m}"] for m in MODALITIES},
            text_ids=arr["text_ids"], text_unk_id=meta["text_unk_id"], timings=meta["timings"],
            cpu_timings=meta.get("cpu_timings", {}), settings=meta["settings"],
            names=meta["names"], absent=meta["absent"])


def _trim_to_sound(words, sound: np.ndarray, hop: float) -> list[tuple[str, float, float]]:
    """Each word's interval cut to the non-silent audio steps inside it (Whisper's first word
    of a segment often starts at the segment start, over leading silence); a word with no
    sound inside its interval keeps it."""
    out = []
    for w, a, b in words:
        t = sound[(sound >= a - 1e-9) & (sound < b)]
        out.append((w, max(a, float(t[0])), min(b, float(t[-1]) + hop)) if len(t) else (w, a, b))
    return out


def _align(words, times: np.ndarray, x: np.ndarray, mask: np.ndarray, width: float
           ) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the observed steps ``[t, t + width)`` overlapping each word's interval."""
    out = np.zeros((len(words), x.shape[1]), np.float32)
    ok = np.zeros(len(words), bool)
    for i, (_, a, b) in enumerate(words):
        b = max(b, a + 1e-6)
        sel = mask & (times < b) & (times + width > a)
        if sel.any():
            out[i] = x[sel].mean(0)
            ok[i] = True
    return out, ok


def extract_video(path: str | Path, settings: ExtractSettings | None = None,
                  transcript: str | None = None, clip_id: str | None = None) -> ClipFeatures:
    """Features of one video (or audio) file. ``transcript``: the known words (a label
    file's ``text``); None (or ``settings.text_source == "asr"``) transcribes with Whisper.
    Raises :class:`~msakit.extract.media.ClipError` for a file FFmpeg cannot read."""
    s = settings or ExtractSettings()
    path = Path(path)
    if not path.is_file():
        raise ClipError(f"{path}: no such file")
    timings = dict.fromkeys(STAGES, 0.0)
    cpu = dict.fromkeys(STAGES, 0.0)
    absent: dict[str, str] = {}
    clock: list[float] = []

    def tick(stage: str | None = None) -> None:  # wall and process CPU seconds per stage
        now = (time.perf_counter(), time.process_time())
        if stage is not None:
            timings[stage], cpu[stage] = now[0] - clock[0], now[1] - clock[1]
        clock[:] = now

    tick()
    stages.load_models(s)  # once per process; timed apart from the work
    tick("load")
    info = probe(path)
    if not (info["has_audio"] or info["has_video"]):
        raise ClipError(f"{path}: no audio or video stream")
    audio = decode_audio(path, s.sample_rate) if info["has_audio"] else None
    frames = decode_frames(path, s.vision_fps, s.max_side) if info["has_video"] else None
    dur = max(info["duration_s"], 0.0 if audio is None else len(audio) / s.sample_rate)
    tick("decode")

    if audio is not None:
        xa, ma, ta, names_a = stages.audio_lld(audio, s)
        if not ma.any():
            absent["audio"] = "silent"
    else:
        xa, ma, ta, names_a = np.zeros((0, 25), np.float32), np.zeros(0, bool), np.zeros(0), []
    tick("audio")

    given = transcript if (transcript and transcript.strip() and s.text_source == "auto") else None
    if audio is not None:
        text, words, how = stages.transcribe(audio, s, given)
    else:
        absent["audio"] = "no audio stream"
        text = given or ""
        ws = text.split()
        step = dur / max(len(ws), 1)
        words, how = [(w, i * step, (i + 1) * step) for i, w in enumerate(ws)], "even"
    tick("asr")
    words = _trim_to_sound(words, ta[ma], stages.AUDIO_HOP_S)

    if frames is not None:
        xv, mv, tv, names_v = stages.face_features(frames, s)
        if not mv.any():
            absent["vision"] = "no face detected"
    else:
        xv, mv, tv, names_v = (np.zeros((0, 52 + len(stages.VISION_POSE)), np.float32),
                               np.zeros(0, bool), np.zeros(0), [])
        absent["vision"] = "no video stream"
    tick("vision")

    wlist = [w for w, _, _ in words]
    xt, ids, per_word, wmask, unk = stages.encode_words(wlist, s)
    if not wlist:
        absent["text"] = "no words (empty transcript, no speech recognised)"
    tick("text")

    al_a, am_a = _align(words, ta, xa, ma, stages.AUDIO_HOP_S)
    al_v, am_v = _align(words, tv, xv, mv, 1.0 / s.vision_fps)
    tick("align")
    return ClipFeatures(
        id=clip_id or path.stem, source=str(path), sha256=sha256_file(path), duration_s=dur,
        transcript=text, words=words, word_timing=how,
        x={"text": xt, "audio": xa[ma], "vision": xv[mv]},
        times={"text": np.full(len(xt), np.nan), "audio": ta[ma], "vision": tv[mv]},
        grid={"text": len(xt), "audio": len(ma), "vision": len(mv)},
        aligned={"text": per_word, "audio": al_a, "vision": al_v},
        aligned_mask={"text": wmask, "audio": am_a, "vision": am_v},
        text_ids=ids, text_unk_id=unk, timings={k: round(v, 4) for k, v in timings.items()},
        cpu_timings={k: round(v, 4) for k, v in cpu.items()},
        settings=s.to_dict(), names={"audio": names_a, "vision": names_v}, absent=absent)
