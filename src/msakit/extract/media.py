"""Decoding with PyAV (FFmpeg's libraries): the audio track as mono float32 at a fixed rate,
and video frames sampled at a fixed frame rate. A file FFmpeg cannot open or decode raises
:class:`ClipError` with the reason, which the dataset writer lists per clip."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msakit.errors import DataError, first_line


class ClipError(DataError):
    """One clip cannot be extracted (corrupt file, unreadable codec, no streams)."""


@dataclass
class Frames:
    """images: RGB uint8 (H, W, 3) frames; times: (T,) their presentation times in seconds;
    steps: (T,) grid indices ``floor(time * fps)``; n_steps: grid steps over the video."""

    images: list[np.ndarray]
    times: np.ndarray
    steps: np.ndarray
    n_steps: int


def _open(path: Path):
    import av

    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise ClipError(f"{path}: FFmpeg cannot open it ({first_line(e)})") from None


def probe(path: str | Path) -> dict:
    """``{"duration_s", "has_audio", "has_video"}`` from the container's streams."""
    path = Path(path)
    with _open(path) as c:
        dur = [float(s.duration * s.time_base) for s in c.streams
               if s.type in ("audio", "video") and s.duration is not None and s.time_base]
        if c.duration is not None:
            dur.append(c.duration / 1_000_000)
        return {"duration_s": max(dur) if dur else 0.0,
                "has_audio": bool(c.streams.audio), "has_video": bool(c.streams.video)}


def decode_audio(path: str | Path, rate: int) -> np.ndarray | None:
    """The first audio stream as (S,) float32 mono at ``rate`` Hz; None without one."""
    import av

    path = Path(path)
    with _open(path) as c:
        if not c.streams.audio:
            return None
        res = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks = []
        try:
            for frame in c.decode(c.streams.audio[0]):
                chunks += [f.to_ndarray().reshape(-1) for f in res.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in res.resample(None)]
        except (av.error.FFmpegError, ValueError) as e:
            raise ClipError(f"{path}: audio stream does not decode ({first_line(e)})") from None
    if not chunks:
        return np.zeros(0, np.float32)
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


def decode_frames(path: str | Path, fps: float, max_side: int) -> Frames | None:
    """Frames of the first video stream at ``fps`` (the first frame at or after each grid time
    ``k / fps``), scaled so the longer side is at most ``max_side``; None without video."""
    import av

    path = Path(path)
    images, times, steps = [], [], []
    with _open(path) as c:
        if not c.streams.video:
            return None
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        start = float(vs.start_time * vs.time_base) if vs.start_time is not None else 0.0
        nxt, last = 0, 0.0
        try:
            for fr in c.decode(vs):
                if fr.pts is None:
                    continue
                t = max(0.0, float(fr.pts * fr.time_base) - start)
                last = max(last, t)
                if t * fps + 1e-6 < nxt:
                    continue
                k = int(np.floor(t * fps + 1e-6))
                w, h = fr.width, fr.height
                s = min(1.0, max_side / max(w, h))
                img = fr.to_ndarray(format="rgb24", width=max(2, round(w * s)),
                                    height=max(2, round(h * s)))
                images.append(img)
                times.append(t)
                steps.append(k)
                nxt = k + 1
        except (av.error.FFmpegError, ValueError) as e:
            raise ClipError(f"{path}: video stream does not decode ({first_line(e)})") from None
    if not images:
        raise ClipError(f"{path}: the video stream holds no decodable frame")
    dur = float(vs.duration * vs.time_base) if vs.duration is not None else last + 1 / fps
    n_steps = max(int(np.ceil(dur * fps - 0.5)), steps[-1] + 1)  # no sliver step
    return Frames(images, np.asarray(times, np.float64), np.asarray(steps, np.int64), n_steps)
