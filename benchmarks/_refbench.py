"""What the benchmarks that run a reference implementation beside msakit share (one subprocess
per implementation, each in its own virtual environment): memory probes for the worker side,
the venv's interpreter, a worker's failure as a result row, and the machine's description.
Standard library only: the workers import it inside the references' venvs."""

from __future__ import annotations

import os
import platform
import resource
import sys
from pathlib import Path


def rss_mb() -> float | None:
    """Current resident set size in MiB (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def peak_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def worker_error(r, keep: int) -> dict:
    """A failed worker (``subprocess.CompletedProcess``) as a result row: the tail of its
    output, and the signal when it was killed (e.g. by the out-of-memory killer)."""
    err = (r.stderr or r.stdout)[-keep:]
    if r.returncode < 0:
        err += f"\nkilled by signal {-r.returncode}"
    return {"error": err, "returncode": r.returncode}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    mem = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem,
            "python": platform.python_version(), "os": platform.platform()}
