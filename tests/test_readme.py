"""The README's commands and code blocks run as written (epoch counts cut to 1, in a fresh
working folder), and the main job (`msakit demo`) runs and shows what it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
HAS_DATA = any(
    (p / "mosi-bclstm").is_dir()
    for p in (ROOT.parent / "shared" / "data", Path(os.environ.get("MSAKIT_DATA", "/nonexistent")))
)


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def tiny(code: str) -> str:
    """Cut every epoch count to 1: the commands are the README's, only shorter."""
    return re.sub(r"(--epochs[ =]|epochs=)\d+", r"\g<1>1", code)


def run_shell(cmd: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.realdata
@pytest.mark.skipif(not HAS_DATA, reason="../shared/data (mosi-bclstm, mfn-mmmo) not found")
def test_readme_command_line_runs_as_written(tmp_path):
    cli_block = next(b for b in blocks("bash") if "msakit train" in b)
    for line in cli_block.strip().splitlines():
        r = run_shell(tiny(line), tmp_path)
        assert r.returncode == 0, f"{line}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        assert "Traceback" not in r.stderr
    assert (tmp_path / "runs" / "cyin" / "summary.json").exists()
    assert (tmp_path / "sweeps" / "cyin" / "robustness.png").exists()
    assert (tmp_path / "matrix" / "matrix.md").exists()


def test_readme_python_blocks_run_as_written(tmp_path):
    """They need no real data (synthetic benchmark, a dataset the example writes itself)."""
    pys = blocks("python")
    assert len(pys) >= 2
    for code in pys:
        script = tmp_path / "block.py"
        script.write_text(tiny(code))
        r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=ENV,
                           capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"{code}\n{r.stderr[-3000:]}"


def test_readme_names_the_two_commands():
    shells = [b.strip() for b in blocks("bash")]
    assert 'python -m pip install "torch==2.13.0" -e ".[all]" && msakit demo' in shells
    assert "python -m pytest -q" in shells
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python -m pytest -q" in ci and '"torch==2.13.0" -e ".[all]"' in ci


@pytest.mark.slow
def test_main_job_runs_quietly_and_ends_with_the_oracle_and_a_figure(tmp_path):
    """`msakit demo` as the README writes it (after the install, which CI has just done)."""
    r = run_shell("msakit demo", tmp_path, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout
    assert "oracle (Bayes-optimal" in out
    fig = re.search(r"robustness figure: (\S+)", out)
    assert fig and (tmp_path / fig.group(1)).exists()
    assert (tmp_path / fig.group(1)).stat().st_size > 10_000
    for noise in ("GPU available", "litlogger", "LOCAL_RANK", "Trainer(", "TPU available"):
        assert noise not in out + r.stderr, noise
