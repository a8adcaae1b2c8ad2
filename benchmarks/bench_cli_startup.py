"""Start-up time of quick CLI commands, before and after (one run, same machine).

Checks out an earlier revision into a temporary git worktree and times ``msakit models``,
``msakit --help`` and ``msakit datasets`` from both source trees, alternating, N times each;
reports the median wall time.

    python benchmarks/bench_cli_startup.py [--before ff06233] [--repeat 7] [--markdown]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = (["models"], ["--help"], ["datasets"])


def timed(src: Path, args: list[str]) -> float:
    env = {**os.environ, "PYTHONPATH": str(src)}
    code = (f"import sys, msakit; assert msakit.__file__.startswith({str(src)!r}), msakit.__file__\n"
            f"sys.argv = ['msakit', *{args!r}]\nfrom msakit.cli import main\nmain()")
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode not in (0,):
        raise SystemExit(f"{src}: msakit {' '.join(args)} failed: {r.stderr[-500:]}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", default="ff06233", help="revision to compare against")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--markdown", action="store_true")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), a.before],
                       check=True, capture_output=True)
        try:
            res = {}
            for cmd in COMMANDS:
                t_old, t_new = [], []
                for _ in range(a.repeat):  # alternate so load changes hit both alike
                    t_old.append(timed(old / "src", cmd))
                    t_new.append(timed(ROOT / "src", cmd))
                res[" ".join(cmd)] = (statistics.median(t_old), statistics.median(t_new))
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                           capture_output=True)
    load = os.getloadavg()[0]
    print(f"| command | before ({a.before}) | after | ratio |")
    print("|---|--:|--:|--:|")
    for cmd, (b, n) in res.items():
        print(f"| `msakit {cmd}` | {b:.2f} s | {n:.2f} s | {b / n:.1f}x |")
    print(f"\nmedian of {a.repeat} runs each, alternating; {platform.machine()}, "
          f"{os.cpu_count()} cores, load average {load:.1f}, {date.today().isoformat()}")


if __name__ == "__main__":
    main()
