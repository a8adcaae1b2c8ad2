"""Raw video -> features -> a dataset (``msakit extract``), with pip-installable parts that
work offline: PyAV/FFmpeg decoding, faster-whisper ASR with word timestamps, openSMILE
eGeMAPSv02 LLDs, MediaPipe FaceLandmarker blendshapes and head pose, and msakit's text
encoder. Silence, frames without a face and absent streams are missing steps, never zeros.

    settings = ExtractSettings()
    clip = extract_video("clip.mp4", settings)          # ClipFeatures
    split = clips_to_split([clip])                      # SplitData, one row per clip
    extract_dataset("Raw/", "out/", labels="label.csv") # then msakit.load_dataset("out/")

Heavy libraries load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ExtractSettings": "msakit.extract.settings",
    "ClipFeatures": "msakit.extract.pipeline",
    "extract_video": "msakit.extract.pipeline",
    "ClipError": "msakit.extract.media",
    "clips_to_split": "msakit.extract.dataset",
    "extract_dataset": "msakit.extract.dataset",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'msakit.extract' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
