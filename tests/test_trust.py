"""Trustworthy runs (issue 7): kill-and-resume reproduces, one config per run folder, safe
checkpoints, one writer, summaries over every finished seed, runs remember their data, and
bad options end in one line with exit code 2."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import msakit
from msakit.errors import ConfigError, RunError
from msakit.train.engine import TrainConfig, fit_seed

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def write_npz_dataset(root: Path, seed: int = 0, n=(60, 20, 20)) -> Path:
    """A small plain-array dataset folder (the documented own-data layout)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for split, k in zip(("train", "valid", "test"), n, strict=True):
        t = rng.normal(size=(k, 6, 5)).astype("f4")
        a = rng.normal(size=(k, 4, 3)).astype("f4")
        y = np.clip(np.tanh(t[:, :, 0].mean(1)) * 3, -3, 3).astype("f4")
        np.savez(root / f"{split}.npz", text=t, audio=a, labels=y,
                 ids=np.array([f"{split}{i}" for i in range(k)]))
    return root


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "msakit.cli", *args], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=600)


TRAIN_SCRIPT = textwrap.dedent("""
    import sys, torch
    torch.set_num_threads(1)
    from msakit.train import train
    train("late_fusion", "synthetic-tiny", sys.argv[1], seeds=[1111], epochs=25,
          corrupt="frames:random", overrides={"dropout": 0.2},
          train_config=__import__("msakit.train.engine", fromlist=["x"]).TrainConfig(patience=30))
""")


def test_sigkill_and_resume_reproduces_an_uninterrupted_run(tmp_path):
    """A real SIGKILL mid-training, then the same command: metrics.json is byte-identical and
    the weights equal those of an uninterrupted run; the CSV log keeps the earlier rows."""
    script = tmp_path / "train.py"
    script.write_text(TRAIN_SCRIPT)
    full, killed = tmp_path / "full", tmp_path / "killed"
    subprocess.run([sys.executable, str(script), str(full)], check=True, env=ENV, timeout=600)
    proc = subprocess.Popen([sys.executable, str(script), str(killed)], env=ENV)
    last = killed / "seed_1111" / "ckpt" / "last.ckpt"
    log = killed / "seed_1111" / "logs" / "metrics.csv"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if last.exists() and log.exists() and log.read_text().count("\n") >= 5:  # >= 2 epochs
            break
        time.sleep(0.01)
    assert proc.poll() is None, "training finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "seed_1111" / "metrics.json").exists()
    rows_before = log.read_text().splitlines()[1:]
    subprocess.run([sys.executable, str(script), str(killed)], check=True, env=ENV, timeout=600)
    a, b = full / "seed_1111", killed / "seed_1111"
    assert (a / "metrics.json").read_bytes() == (b / "metrics.json").read_bytes()
    wa = torch.load(a / "model.pt", weights_only=True)
    wb = torch.load(b / "model.pt", weights_only=True)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    rows_after = (b / "logs" / "metrics.csv").read_text().splitlines()[1:]
    kept = [r for r in rows_before if r]
    assert len(rows_after) > len(kept)
    # the rows written before the kill are still there, values included, and the whole log
    # reads as the uninterrupted run's
    assert all(r in rows_after for r in kept)
    assert rows_after == (a / "logs" / "metrics.csv").read_text().splitlines()[1:]


def test_resume_with_another_config_is_refused(toy_dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    fit_seed("late_fusion", toy_dataset, 1, run, TrainConfig(epochs=1))
    (run / "metrics.json").unlink()  # an unfinished run
    before = (run / "config.json").read_text()
    with pytest.raises(RunError, match=r"lr: 0\.001 -> 0\.05"):
        fit_seed("late_fusion", toy_dataset, 1, run, TrainConfig(epochs=1), {"lr": "0.05"})
    assert (run / "config.json").read_text() == before  # nothing rewritten
    with pytest.raises(RunError, match="train.epochs: 1 -> 3"):
        fit_seed("late_fusion", toy_dataset, 1, run, TrainConfig(epochs=3))


def test_tampered_or_garbage_checkpoint_is_one_clear_error(toy_dataset, tmp_path):
    run = tmp_path / "run"
    fit_seed("late_fusion", toy_dataset, 1, run, TrainConfig(epochs=1))
    (run / "metrics.json").unlink()

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"x": Payload()}, run / "ckpt" / "last.ckpt")
    with pytest.raises(RunError) as e:
        fit_seed("late_fusion", toy_dataset, 1, run, TrainConfig(epochs=1))
    assert "last.ckpt" in str(e.value) and "weights_only=False" not in str(e.value)
    assert not (tmp_path / "pwned").exists()
    (run / "ckpt" / "last.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(RunError, match="last.ckpt: not a loadable"):
        fit_seed("late_fusion", toy_dataset, 1, run, TrainConfig(epochs=1))


def test_weights_only_holds_when_torch_is_told_otherwise(toy_dataset, tmp_path):
    """TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD makes torch's *default* unsafe; we always pass True."""
    run = tmp_path / "run"
    fit_seed("late_fusion", toy_dataset, 1, run, TrainConfig(epochs=1))

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    torch.save({"x": Payload()}, run / "model.pt")
    code = (f"from msakit.train.engine import load_run_model\n"
            f"load_run_model({str(run)!r})\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**ENV, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}, timeout=300)
    assert r.returncode != 0 and "RunError" in r.stderr
    assert not (tmp_path / "pwned").exists()


def test_second_writer_gets_a_clear_error(toy_dataset, tmp_path):
    from msakit.train.engine import RunLock

    with RunLock(tmp_path):
        r = subprocess.run(
            [sys.executable, "-c", f"from msakit.train.engine import RunLock\n"
                                   f"RunLock(__import__('pathlib').Path({str(tmp_path)!r})).__enter__()"],
            capture_output=True, text=True, env=ENV, timeout=120)
        assert r.returncode != 0 and f"pid {os.getpid()}" in r.stderr
    # released: the same process can take it again
    with RunLock(tmp_path):
        pass


def test_a_process_arriving_while_seeds_are_claimed_waits_and_trains(tmp_path):
    """Processes of a job array start together, so one reaches the run folder while another
    holds its lock to claim seeds: it waits for that lock (a seed's own lock refuses at once),
    then trains its seed. The test holds the folder lock until `msakit train` has opened the
    lock file (seen in /proc), then releases it."""
    from msakit.train.engine import RunLock

    lock = tmp_path / ".msakit.lock"
    with RunLock(tmp_path):
        p = subprocess.Popen(
            [sys.executable, "-m", "msakit.cli", "train", "--model", "late_fusion", "--dataset",
             "synthetic-tiny", "--epochs", "1", "--seeds", "2", "--out", str(tmp_path)],
            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def has_lock_open() -> bool:  # its fds come and go while we look: skip vanished ones
            fds = f"/proc/{p.pid}/fd"
            try:
                names = os.listdir(fds)
            except OSError:
                return False
            for n in names:
                try:
                    if os.readlink(f"{fds}/{n}") == str(lock):
                        return True
                except OSError:
                    continue
            return False

        t = time.time()
        while p.poll() is None and time.time() - t < 300 and not has_lock_open():
            time.sleep(0.02)
        time.sleep(0.5)  # it is trying for the lock now; an old msakit would have left
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    assert (tmp_path / "seed_2" / "metrics.json").exists()
    assert json.loads((tmp_path / "summary.json").read_text())["_meta"]["seeds"] == [2]


SEEDS_SCRIPT = textwrap.dedent("""
    import pathlib, sys, time, torch
    torch.set_num_threads(1)
    from msakit.train import train
    out, seeds, wait_for = sys.argv[1], [int(s) for s in sys.argv[2].split(",")], sys.argv[3:]

    def barrier(i, seed):  # train only once the other process has claimed its seed too
        t = time.time()
        while wait_for and not pathlib.Path(wait_for[0]).exists():
            if time.time() - t > 300:
                sys.exit("the other process never claimed its seed")
            time.sleep(0.05)

    train("late_fusion", "synthetic-tiny", out, seeds=seeds, epochs=10, corrupt="frames:random",
          overrides={"dropout": 0.2}, on_seed_start=barrier)
""")


def test_seeds_train_side_by_side_into_one_folder_as_they_would_one_after_another(tmp_path):
    """Two processes train seeds 1111 and 1112 into one --out at the same time (a job array;
    each starts training only once the other has claimed its seed, which a lock held for the
    whole run would forbid): both finish, each seed's metrics are the bytes of the same seeds
    trained one after the other by one process, and the summary covers both."""
    script = tmp_path / "train.py"
    script.write_text(SEEDS_SCRIPT)
    out, serial = tmp_path / "shared", tmp_path / "serial"
    procs = [subprocess.Popen([sys.executable, str(script), str(out), str(seed),
                               str(out / f"seed_{other}" / "config.json")], env=ENV,
                              stderr=subprocess.PIPE, text=True)
             for seed, other in ((1111, 1112), (1112, 1111))]
    errs = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    subprocess.run([sys.executable, str(script), str(serial), "1111,1112"], env=ENV, check=True,
                   timeout=600)
    for seed in (1111, 1112):
        assert ((out / f"seed_{seed}" / "metrics.json").read_bytes()
                == (serial / f"seed_{seed}" / "metrics.json").read_bytes())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["_meta"]["seeds"] == [1111, 1112] and summary["test"]["mae"]["n"] == 2
    assert summary == json.loads((serial / "summary.json").read_text())


def test_a_seed_being_trained_or_another_config_is_refused_in_one_line(tmp_path):
    """While a process trains seed 1 of a run folder (its lock held here), `msakit train` for
    the same seed, or for another seed with another config, ends in one line with exit 2 and
    trains nothing."""
    from msakit.train.engine import RunLock

    args = ["train", "--model", "late_fusion", "--dataset", "synthetic-tiny", "--epochs", "1",
            "--out", str(tmp_path)]
    assert cli(*args, "--seeds", "1").returncode == 0
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with RunLock(tmp_path / "seed_1"):
        same = cli(*args, "--seeds", "1")
        other = cli(*args, "--seeds", "2", "--set", "d=32")
    assert same.returncode == 2 and "seed_1" in same.stderr and "another msakit process" in same.stderr
    assert other.returncode == 2 and "another config" in other.stderr
    assert "Traceback" not in same.stderr + other.stderr
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_summary_covers_every_finished_seed_and_refuses_duplicates(toy_dataset, tmp_path):
    msakit.train("late_fusion", toy_dataset, tmp_path, seeds=[1], epochs=1)
    s = msakit.train("late_fusion", toy_dataset, tmp_path, seeds=[2], epochs=1)
    assert s["_meta"]["seeds"] == [1, 2] and s["test"]["mae"]["n"] == 2
    with pytest.raises(ConfigError, match="more than once"):
        msakit.train("late_fusion", toy_dataset, tmp_path / "d", seeds=[1, 1], epochs=1)
    with pytest.raises(RunError, match="another config"):
        msakit.train("late_fusion", toy_dataset, tmp_path, seeds=[3], epochs=1, overrides={"d": 32})


def test_effective_corruption_and_file_modes_are_recorded(toy_dataset, tmp_path):
    old = os.umask(0o022)
    try:
        s = msakit.train("cyin", toy_dataset, tmp_path, seeds=[1], epochs=1,
                         overrides={"d": 16, "latent": 8, "cra_hidden": 16})
    finally:
        os.umask(old)
    cfg = json.loads((tmp_path / "seed_1" / "config.json").read_text())
    assert cfg["train"]["corrupt"] == "modality:0.3" == s["_meta"]["corrupt"]
    for f in ("config.json", "metrics.json", "model.pt"):
        assert (tmp_path / "seed_1" / f).stat().st_mode & 0o777 == 0o644, f
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644
    from msakit.evaluate.tables import collect_results

    df = collect_results([tmp_path], split="test", group_by=["corrupt"])
    assert "modality:0.3" in set(df["corrupt"])


def test_a_run_refuses_data_whose_content_changed(tmp_path):
    data = write_npz_dataset(tmp_path / "data")
    r = cli("train", "--model", "late_fusion", "--dataset", str(data), "--out",
            str(tmp_path / "run"), "--seeds", "1", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    assert cli("eval", "--run", str(tmp_path / "run")).returncode == 0
    z = dict(np.load(data / "test.npz"))
    z["labels"] = z["labels"][::-1].copy()  # same range, other content
    np.savez(data / "test.npz", **z)
    r = cli("eval", "--run", str(tmp_path / "run"))
    assert r.returncode == 2 and "changed since this run was trained" in r.stderr
    assert "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_time_budget_stops_at_an_epoch_boundary_and_is_recorded(toy_dataset, tmp_path):
    r = fit_seed("late_fusion", toy_dataset, 1, tmp_path, TrainConfig(epochs=50, max_time_s=1e-3))
    assert r.metrics["_stopped_by"] == {"max_time_s": 1.0}
    assert r.metrics["_epochs_trained"]["epochs"] == 1.0  # one whole epoch, then stop


def test_non_finite_validation_is_never_selected(toy_dataset, tmp_path):
    from msakit.models.base import MODELS

    spec = MODELS.get("late_fusion")
    orig = spec.cls.forward

    def bad_forward(self, batch):  # NaN predictions from the 2nd epoch on
        out = orig(self, batch)
        if self.training is False and getattr(self, "_epochs_seen", 0) >= 1:
            out.pred = out.pred * float("nan")
        return out

    def on_epoch(self, epoch, engine):
        self._epochs_seen = epoch

    spec.cls.forward, spec.cls.on_train_epoch_start = bad_forward, on_epoch
    try:
        fit_seed("late_fusion", toy_dataset, 1, tmp_path, TrainConfig(epochs=4, patience=10))
    except (RunError, ValueError):  # the final test evaluation also sees NaN here
        pass
    finally:
        spec.cls.forward = orig
        del spec.cls.on_train_epoch_start
    ckpt = torch.load(tmp_path / "ckpt" / "best.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0  # the only finite validation epoch


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--set", "d=-4"], "d=-4: expected an integer >= 1"),
        (["--set", "batch_size=0"], "batch_size=0"),
        (["--set", "loss=nosuch"], "loss='nosuch': expected one of l1, mse"),
        (["--set", "dropout=2"], "dropout=2.0: expected a probability"),
        (["--set", "nosuch=1"], "has no config field"),
        (["--epochs", "0"], "--epochs 0"),
        (["--epochs", "-3"], "--epochs -3"),
        (["--seeds", "1", "1"], "more than once"),
        (["--dataset", "nosuch-[/x]"], "nosuch-[/x]"),
        (["--precision", "fp16"], "--precision 'fp16': expected one of 32, bf16-mixed"),
    ],
)
def test_bad_options_end_in_one_line_and_exit_2(tmp_path, args, needle, capsys):
    from msakit.cli import main

    base = {"--model": "late_fusion", "--dataset": "synthetic-tiny", "--out": str(tmp_path / "o"),
            "--epochs": "1", "--seeds": "1"}
    for i in range(0, len(args), 2):
        base.pop(args[i], None)
    flat = [x for k, v in base.items() for x in (k, v)]
    with pytest.raises(SystemExit) as e:
        main(["train", *flat, *args])
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert needle in err and err.startswith("error: ") and err.strip().count("\n") == 0


def test_a_bad_option_in_a_real_process_prints_no_traceback(tmp_path):
    r = cli("train", "--model", "late_fusion", "--dataset", "synthetic-tiny", "--out",
            str(tmp_path / "o"), "--set", "dropout=2")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    from msakit.cli import main

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "late_fusion", "--dataset", "synthetic-tiny", "--out", str(f),
              "--seeds", "1", "--epochs", "1"])
    assert e.value.code == 2 and "exists and is not a folder" in capsys.readouterr().err


def test_programming_errors_keep_their_traceback(monkeypatch, capsys):
    from msakit import cli as cli_mod

    def boom():
        raise ZeroDivisionError("bug")

    monkeypatch.setattr(cli_mod, "app", lambda **kw: boom())
    with pytest.raises(ZeroDivisionError):
        cli_mod.main(["models"])


def test_config_values_are_typed_wherever_they_come_from():
    from msakit.models.base import make_config

    a = make_config("mult", lr="2e-3", heads="5", d="40", positions="false")
    b = make_config("mult", lr=0.002, heads=5, d=40, positions=False)
    assert a == b and isinstance(a.lr, float) and a.positions is False
    assert make_config("lnln", default_corrupt="none").default_corrupt is None
    assert make_config("lnln", default_corrupt="subset:la").default_corrupt == "subset:la"
    # protocols are checked where they run (models don't import msakit.corrupt): before any
    # training, with the field named
    from msakit.train.engine import TrainConfig, resolved_config

    with pytest.raises(ConfigError, match="default_corrupt='nosuch:1'.*nosuch"):
        resolved_config("lnln", msakit.load_dataset("synthetic-tiny"), 1, TrainConfig(),
                        {"default_corrupt": "nosuch:1"})
    with pytest.raises(ConfigError):
        make_config("mult", lr="fast")
    with pytest.raises(ConfigError):
        make_config("mult", heads=2.5)


def test_seed_lists_as_people_type_them():
    from msakit.cli import expand_list_options

    assert expand_list_options(["train", "--seeds", "1", "2", "3", "--epochs", "2"]) == [
        "train", "--seeds", "1", "--seeds", "2", "--seeds", "3", "--epochs", "2"]
    assert expand_list_options(["train", "--seeds=1,2"]) == ["train", "--seeds", "1", "--seeds", "2"]
    assert expand_list_options(["eval", "--run", "a"]) == ["eval", "--run", "a"]


def test_engine_module_is_importable_beside_the_train_function():
    import msakit.train.engine as engine

    assert callable(msakit.train) and engine.fit_seed is msakit.train.fit_seed


def test_models_listing_without_torch_matches_the_registry():
    from msakit.models import MODELS
    from msakit.registry import scan_models

    assert scan_models() == [(n, s.description) for n, s in MODELS.items()]
    r = subprocess.run([sys.executable, "-c", "import sys; from msakit.cli import main\n"
                        "try:\n    main(['models'])\nexcept SystemExit: pass\n"
                        "print('torch' in sys.modules)"],
                       capture_output=True, text=True, env=ENV, timeout=120)
    assert r.stdout.strip().endswith("False"), r.stdout


def _cli_error(capsys, *args) -> str:
    from msakit.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    err = capsys.readouterr().err
    assert e.value.code == 2, err
    assert err.startswith("error: ") and err.strip().count("\n") == 0, err
    return err


def test_broken_run_files_and_late_options_are_one_line_errors(tmp_path, capsys):
    msakit.train("late_fusion", "synthetic-tiny", tmp_path / "run", seeds=[1], epochs=1)
    cfg = tmp_path / "run" / "seed_1" / "config.json"
    good = cfg.read_text()
    cfg.write_text("{x")
    for cmd in (["eval", "--run"], ["results"], ["robustness", "--protocol", "frames", "--out",
                                                 str(tmp_path / "o"), "--run"]):
        assert "config.json: not a readable JSON file" in _cli_error(capsys, *cmd, str(tmp_path / "run"))
    cfg.write_text(good.replace('"dims": {', '"dims_gone": {'))
    assert "config.json: not an msakit run config" in _cli_error(capsys, "eval", "--run", str(tmp_path / "run"))
    cfg.write_text(good.replace('"overrides": {}', '"overrides": {"d": "abc"}'))
    err = _cli_error(capsys, "eval", "--run", str(tmp_path / "run"))
    assert "config.json" in err and "d='abc'" in err
    cfg.write_text(good)
    (tmp_path / "file").write_text("x")
    run = str(tmp_path / "run")
    assert "--batch-size 0" in _cli_error(capsys, "robustness", "--run", run, "--protocol", "frames",
                                          "--out", str(tmp_path / "o"), "--batch-size", "0")
    assert "--device 'nosuch'" in _cli_error(capsys, "robustness", "--run", run, "--protocol",
                                             "frames", "--out", str(tmp_path / "o"), "--device", "nosuch")
    assert "exists and is not a folder" in _cli_error(
        capsys, "robustness", "--run", run, "--protocol", "frames", "--out", str(tmp_path / "file"))
    assert "unknown protocol" in _cli_error(capsys, "robustness", "--run", run, "--protocol",
                                            "nosuch", "--out", str(tmp_path / "o"))


def test_a_bad_corruption_is_refused_before_the_run_folder_is_touched(tmp_path, capsys):
    out = tmp_path / "t"
    err = _cli_error(capsys, "train", "--model", "late_fusion", "--dataset", "synthetic-tiny",
                     "--seeds", "1", "--epochs", "1", "--corrupt", "nosuch:1", "--out", str(out))
    assert "--corrupt 'nosuch:1'" in err and not (out / "seed_1").exists()
    with pytest.raises(ConfigError, match="select"):
        TrainConfig(select="nosuch")
    with pytest.raises(ConfigError, match="accelerator"):
        TrainConfig(accelerator="nosuch")


def test_eval_averages_exactly_the_seeds_in_summary(tmp_path):
    from msakit.evaluate.runs import evaluate_runs

    msakit.train("late_fusion", "synthetic-tiny", tmp_path, seeds=[1, 2], epochs=1)
    (tmp_path / "seed_2" / "metrics.json").unlink()  # e.g. killed during the final evaluation
    s = msakit.train("late_fusion", "synthetic-tiny", tmp_path, seeds=[1], epochs=1)
    assert s["_meta"]["seeds"] == [1]
    assert evaluate_runs(tmp_path)["test"]["mae"]["n"] == 1
