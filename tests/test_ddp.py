"""Data parallel training (Lightning DDP, gloo on the loopback interface): sharding of the
global batches, equivalence with one process, resume after a kill, both launchers."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from msakit.errors import ConfigError
from msakit.train.engine import TrainConfig, _IndexSampler, config_diff

# one small run, three ways: 240 training rows in global batches of 33 (seven of 33 and one
# of 9), so rank shares are unequal (17/16 and 5/4) and the loss weighting is exercised;
# dropout off, since dropout draws cannot match between 1 and 2 processes
RUN = ["--model", "late_fusion", "--dataset", "synthetic-tiny", "--seeds", "7", "--epochs", "3",
       "--set", "dropout=0", "--set", "batch_size=33", "--threads", "1"]


def _bin(name: str) -> str:
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else (shutil.which(name) or name)


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MASTER_ADDR": "127.0.0.1"}


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("n,bs", [(240, 33), (10, 4), (7, 7), (5, 8)])
def test_rank_shares_make_up_the_single_process_batches(world, n, bs):
    """Per batch, the ranks' shares in rank order are the one-process batch, and the loss
    weights world * mine / total average to the batch mean; a rank without rows gets one
    row at weight 0."""
    one = list(_IndexSampler(n, bs, True, 3, lambda: 2))
    samplers = [_IndexSampler(n, bs, True, 3, lambda: 2, rank=r, world=world)
                for r in range(world)]
    per_rank = [list(s) for s in samplers]
    assert all(len(p) == len(one) == len(s) for p, s in zip(per_rank, samplers, strict=True))
    for i, batch in enumerate(one):
        shares = [s.shares[i] for s in samplers]
        assert sum(m for m, _ in shares) == len(batch) and {t for _, t in shares} == {len(batch)}
        real = [per_rank[r][i] for r in range(world) if shares[r][0] > 0]
        assert sum(real, []) == batch
        # each rank's loss is a mean over its rows; DDP averages the scaled losses' gradients
        per_sample = np.random.default_rng(i).normal(size=n)
        ddp = np.mean([world * m / t * (per_sample[per_rank[r][i]].mean() if m else 0.0)
                       for r, (m, t) in enumerate(shares)])
        assert ddp == pytest.approx(per_sample[batch].mean(), rel=1e-12, abs=1e-12)
        for r, (m, _) in enumerate(shares):
            if m == 0:
                assert len(per_rank[r][i]) == 1  # a padding row, weight 0


def test_ddp_options_are_checked_and_old_configs_still_match():
    for bad in ({"devices": 0}, {"num_nodes": "2"}, {"strategy": "horovod"}):
        with pytest.raises(ConfigError, match=f"--{next(iter(bad)).replace('_', '-')}"):
            TrainConfig(**bad)
    # a run folder written before these options existed holds their defaults
    old = {"train": {"epochs": 3}}
    assert config_diff(old, {"train": {"epochs": 3, "devices": 1, "num_nodes": 1,
                                       "strategy": "auto"}}) == []
    assert config_diff(old, {"train": {"epochs": 3, "devices": 2}}) == [
        "train.devices: 1 -> 2"]


KILL_SCRIPT = textwrap.dedent("""
    # Lightning's launcher starts rank 1 by running this same script again; every rank kills
    # itself when epoch 2 starts (after last.ckpt of epoch 1 was written)
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    import msakit
    from msakit.models.late_fusion import LateFusion
    from msakit.train.engine import TrainConfig

    def boom(self, epoch, engine):
        if epoch == 2:
            os.kill(os.getpid(), signal.SIGKILL)

    LateFusion.on_train_epoch_start = boom
    msakit.train("late_fusion", "synthetic-tiny", sys.argv[1], seeds=[7], epochs=3,
                 overrides={"dropout": 0.0, "batch_size": 33},
                 train_config=TrainConfig(devices=2, strategy="ddp"))
""")


def _wait_group(pgid: int, seconds: float = 30.0) -> None:
    """Wait until every process of the group we started has gone (a rank that lost its
    peer ends with a gloo error), then make sure."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "seed_7" / "model.pt", weights_only=True)


@pytest.mark.slow
def test_ddp_two_processes_match_one_and_resume_after_a_kill(tmp_path):
    import msakit

    # 1. one process, in this one
    single = tmp_path / "single"
    msakit.train("late_fusion", "synthetic-tiny", single, seeds=[7], epochs=3,
                 overrides={"dropout": 0.0, "batch_size": 33})
    # 2. two processes started by Lightning's own launcher (it re-runs `msakit train`)
    ddp = tmp_path / "ddp"
    p = subprocess.run([_bin("msakit"), "train", *RUN, "--devices", "2", "--strategy", "ddp",
                        "--out", str(ddp)], env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("wrote ") == 1  # rank 1 prints nothing
    # 3. the same, killed at the start of epoch 2 on every rank, resumed under torchrun
    killed = tmp_path / "killed"
    script = tmp_path / "kill_at_epoch_2.py"
    script.write_text(KILL_SCRIPT)
    k = subprocess.Popen([sys.executable, str(script), str(killed)], env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    _, err = k.communicate(timeout=300)
    _wait_group(k.pid)
    assert k.returncode == -signal.SIGKILL, err[-3000:]
    run = killed / "seed_7"
    assert torch.load(run / "ckpt" / "last.ckpt", weights_only=True)["epoch"] == 1
    assert not (run / "metrics.json").exists()
    r = subprocess.run([_bin("torchrun"), "--standalone", "--nproc_per_node=2", "--no-python",
                        _bin("msakit"), "train", *RUN, "--devices", "2", "--strategy", "ddp",
                        "--out", str(killed)], env=_env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

    # rank 0 alone wrote; the lock files are released
    for out in (ddp, killed):
        assert sorted(x.name for x in (out / "seed_7" / "ckpt").iterdir()) == [
            "best.ckpt", "last.ckpt"]
    # resumed == uninterrupted, both DDP: the same weights and metrics to the bit (same shares,
    # same reduction order, the same (seed, epoch) draws after the restart)
    a, b = _weights(ddp), _weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma = json.loads((ddp / "seed_7" / "metrics.json").read_text())
    assert ma == json.loads((killed / "seed_7" / "metrics.json").read_text())
    rows = (killed / "seed_7" / "logs" / "metrics.csv").read_text()
    assert rows == (ddp / "seed_7" / "logs" / "metrics.csv").read_text()

    # DDP == one process up to float reduction order. A 2-rank gradient is the average of two
    # half-batch means instead of one mean: about 1e-7 relative per step. Adam divides by
    # sqrt(v), so a parameter whose true gradient is exactly 0 - the key bias of attention,
    # to which softmax is invariant - gets float noise scaled up to steps of lr size: it may
    # differ up to epochs * steps * lr (3 * 8 * 1e-3) and changes no output. Everything else
    # must agree far inside what one different step would move it (lr = 1e-3).
    s = _weights(single)
    for k in s:
        if not s[k].is_floating_point():
            assert torch.equal(s[k], a[k]), k
            continue
        diff = (s[k] - a[k]).abs()
        if k.endswith("attn.in_proj.bias"):
            d = diff.numel() // 3
            diff = torch.cat([diff[:d], diff[2 * d:]])  # query and value biases
        assert float(diff.max()) < 1e-4, k
    ms = json.loads((single / "seed_7" / "metrics.json").read_text())
    assert ms["_epochs_trained"] == ma["_epochs_trained"]
    for split in ("valid", "test"):
        for m, v in ms[split].items():
            assert ma[split][m] == pytest.approx(v, abs=1e-5), (split, m)
