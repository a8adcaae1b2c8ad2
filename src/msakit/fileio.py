"""Atomic file writes: a temporary file beside the target, then a rename, so a reader never
sees half a file and a crash leaves the old one. Files get the process umask's permissions
(``mkstemp`` alone would make them 0600)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def atomic_path(path: str | os.PathLike) -> tuple[Path, str]:
    """(final path, temporary path beside it with the usual umask permissions)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return path, tmp


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write a text file atomically."""
    path, tmp = atomic_path(path)
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(path: str | os.PathLike, rows: Any) -> None:
    """A pandas DataFrame (10 significant digits, ``\\n`` line ends) or a list of rows (the
    first the header) as a CSV file, atomically."""
    if isinstance(rows, list):
        import csv
        import io

        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        text = buf.getvalue()
    else:
        text = rows.to_csv(index=False, float_format="%.10g", lineterminator="\n")
    write_text(path, text)


def write_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """``numpy.savez`` atomically (no pickles: plain arrays only)."""
    import numpy as np

    path, tmp = atomic_path(path)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (numpy scalars and tuples allowed)."""
    write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def check_out_dir(out: str | os.PathLike) -> Path:
    """``--out``: a folder or a path that does not exist yet (ConfigError otherwise)."""
    from msakit.errors import ConfigError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    return out


def read_json(path: str | os.PathLike, expect: type = dict) -> Any:
    """A run file (config.json, metrics.json, summary.json, ...): a missing, unreadable or
    malformed one raises an msakit error naming it."""
    from msakit.errors import MissingDataError, RunError, first_line

    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MissingDataError(f"{path}: not found") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise RunError(f"{path}: not a readable JSON file ({first_line(e, 120)})") from None
    if not isinstance(obj, expect):
        raise RunError(f"{path}: expected a JSON {expect.__name__}, got {type(obj).__name__}")
    return obj
