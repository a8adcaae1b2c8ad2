"""What the server checks in an uploaded file before anything decodes it for real.

1. The container's magic bytes: ISO-BMFF / QuickTime (``ftyp`` at offset 4, or an old
   QuickTime ``moov``/``mdat``/``wide``/``free`` atom), Matroska / WebM (EBML header
   ``1A 45 DF A3``) or AVI (``RIFF....AVI ``). Anything else, a renamed text file included, is
   refused as not a video (HTTP 415).
2. PyAV (FFmpeg) opens it, finds an audio or video stream and demuxes every packet; a stream
   whose packets end well before its declared duration (a cut-off upload of a file whose
   index comes first), or a file FFmpeg cannot parse, is refused as unreadable (HTTP 422).
"""

from __future__ import annotations

import os
from pathlib import Path

from msakit.errors import DataError


class NotAVideo(DataError):
    """The upload is not a video container msakit reads (HTTP 415)."""


class BrokenVideo(DataError):
    """The upload looks like a video but FFmpeg cannot read all of it (HTTP 422)."""


QUICKTIME_ATOMS = (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip")
CONTAINERS = "MP4/MOV, WebM/MKV or AVI"


def container_kind(head: bytes) -> str | None:
    """'mp4', 'mkv' or 'avi' from a file's first bytes (at least 12), else None."""
    if len(head) >= 8 and head[4:8] in QUICKTIME_ATOMS:
        return "mp4"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "mkv"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    return None


def check_video(path: str | os.PathLike, name: str | None = None,
                truncation_tolerance_s: float = 0.25) -> str:
    """The container kind of ``path`` after the checks of the module doc; NotAVideo or
    BrokenVideo (one line naming ``name``) otherwise. ``truncation_tolerance_s``: how far a
    stream's last packet may end before its declared duration (ours)."""
    import av

    path = Path(path)
    name = name or path.name
    with open(path, "rb") as f:
        head = f.read(12)
    kind = container_kind(head)
    if kind is None:
        raise NotAVideo(f"{name}: not a video file (expected {CONTAINERS}; its first bytes "
                        f"are {head[:8]!r})")
    try:
        with av.open(str(path)) as c:
            streams = [s for s in c.streams if s.type in ("video", "audio")]
            if not streams:
                raise BrokenVideo(f"{name}: the {kind} container has no audio or video stream")
            end: dict[int, float] = {}
            for p in c.demux(*streams):
                if p.pts is not None and p.stream.time_base is not None:
                    t = float((p.pts + (p.duration or 0)) * p.stream.time_base)
                    end[p.stream.index] = max(end.get(p.stream.index, 0.0), t)
            for s in streams:
                if s.duration is None or s.time_base is None:
                    continue
                declared = float(s.duration * s.time_base)
                got = end.get(s.index, 0.0)
                if got < declared - truncation_tolerance_s:
                    raise BrokenVideo(
                        f"{name}: truncated: its {s.type} stream ends at {got:.2f} s of a "
                        f"declared {declared:.2f} s")
    except av.FFmpegError as e:
        raise BrokenVideo(f"{name}: FFmpeg cannot read this {kind} file ({e.strerror or e}); "
                          f"truncated or damaged?") from None
    return kind
