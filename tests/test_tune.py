"""``msakit tune``: search spaces, workers sharing one study (SQLite and a real PostgreSQL
server), resuming after a killed worker, and retraining the best trial with ``train --config``.

Every trial is tiny (late_fusion on synthetic-tiny, 1-3 epochs). Workers are real
``python -m msakit.cli tune`` processes; the PostgreSQL server is Debian's, started by a fixture
on 127.0.0.1 (skipped, with the reason, where it cannot start)."""

from __future__ import annotations

import contextlib
import csv
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from msakit.errors import ConfigError  # noqa: E402
from msakit.tune import load_space, space_path  # noqa: E402

MODELS = ("lnln", "hme", "cyin", "mult", "late_fusion", "tfn", "lmf", "misa", "self_mm", "almt",
          "dashfusion", "midg", "mmslf")
SPACE = """\
model: late_fusion
params:
  lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true, source: test}
  d: {type: categorical, choices: [16, 32], source: test}
"""


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "PYTHONWARNINGS": "ignore"}


def _tune_cmd(out: Path, space: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "msakit.cli", "tune", "--model", "late_fusion",
            "--dataset", "synthetic-tiny", "--out", str(out), "--space", str(space),
            "--trials", str(trials), "--threads", "1", *extra]


@pytest.fixture
def space_file(tmp_path) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(SPACE)
    return p


def _trials(storage: str, study: str):
    return optuna.load_study(study_name=study, storage=storage).get_trials(deepcopy=False)


def _check_shared_study(storage: str, study: str, n: int, procs: list) -> None:
    """n trials in all, numbers 0..n-1 once each, no two trials with the same parameters, and
    every worker ran at least one of them."""
    ts = _trials(storage, study)
    assert sorted(t.number for t in ts) == list(range(n))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in ts), [t.state for t in ts]
    params = [tuple(sorted(t.params.items())) for t in ts]
    assert len(set(params)) == n, params
    ran = [sum(1 for line in out.splitlines() if " complete val/mae=" in line) for out in procs]
    assert sum(ran) == n and all(r >= 1 for r in ran), ran


def _waiting(url: str, study: str, procs: list) -> int:
    """How many workers wait for the study's claim lock (an flock file they hold open, or a
    PostgreSQL advisory lock not granted yet)."""
    from msakit.tune import _key

    if url.startswith("sqlite"):
        lock = f"{url.split(':///', 1)[1]}.{_key(study)}.lock"
        n = 0
        for p in procs:
            fds = Path(f"/proc/{p.pid}/fd")
            with contextlib.suppress(OSError):
                n += any(os.readlink(f) == lock for f in fds.iterdir())
        return n
    import sqlalchemy as sa

    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as c:
            return int(c.execute(sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            )).scalar())
    finally:
        engine.dispose()


def _run_workers(cmds: list[list[str]], timeout: float = 240, barrier: tuple | None = None
                 ) -> list[str]:
    """Run worker processes to the end. With ``barrier=(url, study)`` the test holds the
    study's claim lock until every worker waits for it, so all of them start claiming trials
    together (otherwise one worker's faster start-up could run the whole study alone)."""
    from msakit.tune import _claim_lock

    with contextlib.ExitStack() as stack:
        if barrier is not None:
            stack.enter_context(_claim_lock(*barrier))
        procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, env=_env()) for c in cmds]
        t0 = time.monotonic()
        while barrier is not None and _waiting(*barrier, procs) < len(procs):
            ended = [p for p in procs if p.poll() is not None]
            assert not ended, f"a worker ended before the barrier: {ended[0].stdout.read()[-2000:]}"
            assert time.monotonic() - t0 < timeout, "workers never reached the claim lock"
            time.sleep(0.1)
    outs = []
    for p in procs:
        out, _ = p.communicate(timeout=timeout)
        assert p.returncode == 0, out[-3000:]
        outs.append(out)
    return outs


# ------------------------------------------------------------------------------ spaces

@pytest.mark.parametrize("model", MODELS)
def test_every_model_has_a_valid_space_with_sources(model):
    sp = load_space(space_path(model), model)
    assert sp.params
    assert all(p.source for p in sp.params), [p.name for p in sp.params if not p.source]


def test_space_refuses_unknown_names_and_keys(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  not_a_field: {type: float, low: 0.1, high: 0.2}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*not_a_field.*not a field"):
        load_space(bad, "late_fusion")
    bad.write_text("params:\n  lr: {type: float, lo: 0.1, high: 0.2}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: params\.lr: unknown key\(s\) \['lo'\]"):
        load_space(bad, "late_fusion")
    bad.write_text("params:\n  dropout: {type: categorical, choices: [0.1, 1.5]}\n")
    with pytest.raises(ConfigError, match=r"params\.dropout.*dropout=1\.5"):
        load_space(bad, "late_fusion")
    bad.write_text("params:\n  lr: {type: float, low: 0.1, high: 0.2}\n")
    with pytest.raises(ConfigError, match="also fixed by --set"):
        load_space(bad, "late_fusion", fixed={"lr": "0.1"})


def test_cli_bad_space_is_one_line_exit_2(tmp_path, capsys):
    from msakit.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  nope: {type: int, low: 1, high: 3}\n")
    with pytest.raises(SystemExit) as e:
        main(_tune_cmd(tmp_path / "out", bad, 2)[3:])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "bad.yaml" in lines[0] and "'nope'" in lines[0], lines
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_storage_urls(tmp_path):
    from msakit.tune import redact, storage_url

    assert storage_url(None, tmp_path) == f"sqlite:///{tmp_path.resolve() / 'study.db'}"
    assert storage_url("s.db", tmp_path) == f"sqlite:///{Path('s.db').resolve()}"
    assert storage_url("postgresql+psycopg2://u@h/db", tmp_path) == "postgresql+psycopg2://u@h/db"
    assert storage_url("postgresql://u@h/db", tmp_path).endswith("://u@h/db")
    for bad in ("mysql://u@h/db", "sqlite://", "sqlite:///:memory:"):
        with pytest.raises(ConfigError, match="--storage"):
            storage_url(bad, tmp_path)
    assert redact("postgresql://me:secret@h:5432/db") == "postgresql://me:***@h:5432/db"
    with pytest.raises(ConfigError, match=r"--storage mysql://me:\*\*\*@h/db"):
        storage_url("mysql://me:secret@h/db", tmp_path)


def test_pruning_callback_reports_each_epoch_and_prunes(tmp_path, toy_dataset):
    from msakit.train.engine import TrainConfig, fit_seed
    from msakit.tune import PruningCallback

    # prunes any trial whose validation MAE exceeds 0 after its first report, i.e. at epoch 0
    st = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=0.0))
    trial = st.ask()
    with pytest.raises(optuna.TrialPruned, match="epoch 0"):
        fit_seed("late_fusion", toy_dataset, 1, tmp_path / "t", TrainConfig(epochs=3),
                 callbacks=[PruningCallback(trial, "val/mae")])
    frozen = st.get_trials()[0]
    assert list(frozen.intermediate_values) == [0] and frozen.intermediate_values[0] > 0
    assert not (tmp_path / "t" / "metrics.json").exists()
    # never pruned: one report per epoch, the last equal to the logged validation MAE
    st = optuna.create_study(pruner=optuna.pruners.NopPruner())
    trial = st.ask()
    res = fit_seed("late_fusion", toy_dataset, 1, tmp_path / "u", TrainConfig(epochs=3, patience=3),
                   callbacks=[PruningCallback(trial, "val/mae")])
    vals = st.get_trials()[0].intermediate_values
    assert sorted(vals) == [0, 1, 2]
    assert res.metrics["valid"]["mae"] == pytest.approx(min(vals.values()), abs=1e-5)


def test_train_config_file_is_checked(tmp_path):
    from msakit.train.configfile import merge_config, read_config_file

    f = tmp_path / "c.json"
    f.write_text(json.dumps({"model": "late_fusion", "set": {"lr": 0.01}, "sett": {}}))
    with pytest.raises(ConfigError, match=r"c\.json: unknown key\(s\) \['sett'\]"):
        read_config_file(f)
    f.write_text(json.dumps({"set": {"lr": 0.01}, "train": {"epochz": 3}}))
    with pytest.raises(ConfigError, match=r"c\.json: train: unknown key\(s\) \['epochz'\]"):
        read_config_file(f)
    f.write_text(json.dumps({"model": "mult", "set": {"lr": 0.01}}))
    with pytest.raises(ConfigError, match="written for model 'mult'"):
        merge_config(read_config_file(f), "late_fusion", {}, {})
    y = tmp_path / "c.yaml"
    y.write_text("set: {lr: 0.01, d: 32}\ntrain: {epochs: 4, corrupt: none}\n")
    ov, tr = merge_config(read_config_file(y), "late_fusion", {"d": "16"},
                          {"epochs": None, "patience": 2})
    assert ov == {"lr": 0.01, "d": "16"}  # the command line wins
    assert tr == {"epochs": 4, "corrupt": "none", "patience": 2}


def test_a_study_serves_one_search(tmp_path, space_file):
    from msakit.errors import RunError
    from msakit.tune import tune

    res = tune("late_fusion", "synthetic-tiny", space_file, tmp_path / "a", 1, epochs=1)
    assert res["states"] == {"complete": 1}
    storage = str(tmp_path / "a" / "study.db")
    # joining the same study with other options is refused, naming what differs
    with pytest.raises(RunError, match="created by another search.*different train"):
        tune("late_fusion", "synthetic-tiny", space_file, tmp_path / "b", 2, epochs=2,
             storage=storage)
    # and one output folder holds the trials of one study
    with pytest.raises(RunError, match="holds trials of study 'late_fusion-synthetic-tiny'"):
        tune("late_fusion", "synthetic-tiny", space_file, tmp_path / "a", 1, epochs=1,
             study="other")
    assert len(_trials(f"sqlite:///{storage}", "late_fusion-synthetic-tiny")) == 1


def test_precision_reaches_every_trial_and_best_json(tmp_path, space_file):
    from msakit.errors import RunError
    from msakit.tune import tune

    res = tune("late_fusion", "synthetic-tiny", space_file, tmp_path / "a", 1, epochs=1,
               precision="bf16-mixed")
    assert res["best"]["config"]["train"]["precision"] == "bf16-mixed"
    cfg = json.loads((tmp_path / "a" / "trials" / "0" / "config.json").read_text())
    assert cfg["train"]["precision"] == "bf16-mixed"
    with pytest.raises(RunError, match="created by another search.*different train"):
        tune("late_fusion", "synthetic-tiny", space_file, tmp_path / "b", 2, epochs=1,
             storage=str(tmp_path / "a" / "study.db"))


# ------------------------------------------------------------------------------ SQLite

@pytest.mark.slow
def test_two_workers_share_one_sqlite_study_and_best_retrains(tmp_path, space_file):
    out = tmp_path / "out"
    storage = f"sqlite:///{out.resolve() / 'study.db'}"
    out.mkdir()
    outs = _run_workers([_tune_cmd(out, space_file, 4, "--epochs", "2")] * 2,
                        barrier=(storage, "late_fusion-synthetic-tiny"))
    _check_shared_study(storage, "late_fusion-synthetic-tiny", 4, outs)

    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [int(r["number"]) for r in rows] == list(range(4))
    best = json.loads((out / "best.json").read_text())
    values = [float(r["value"]) for r in rows]
    assert best["tune"]["value"] == min(values)
    assert best["set"]["lr"] == float(rows[values.index(min(values))]["lr"])

    # the same search again (the Python API the command calls): complete, nothing more runs
    from msakit.tune import tune

    res = tune("late_fusion", "synthetic-tiny", space_file, out, 4, epochs=2)
    assert res["states"] == {"complete": 4} and res["best"]["number"] == best["tune"]["trial"]
    assert len(_trials(storage, "late_fusion-synthetic-tiny")) == 4

    # best.json retrains to the same validation score (same seed, same config)
    from msakit.cli import main

    run = tmp_path / "retrain"
    with pytest.raises(SystemExit) as e:
        main(["train", "--model", "late_fusion", "--dataset", "synthetic-tiny", "--config",
              str(out / "best.json"), "--seeds", "1111", "--out", str(run), "--threads", "1"])
    assert e.value.code in (0, None)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["_meta"]["epochs"] == 2
    assert summary["valid"]["mae"]["mean"] == pytest.approx(best["tune"]["value"], abs=1e-6)


@pytest.mark.slow
def test_killed_worker_trial_is_failed_then_retried_and_resumed(tmp_path, space_file):
    out = tmp_path / "out"
    cmd = _tune_cmd(out, space_file, 1, "--epochs", "5", "--patience", "5", "--no-prune",
                    "--heartbeat", "1", "--grace", "2")
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    ckpt = out / "trials" / "0" / "ckpt" / "last.ckpt"
    t0 = time.monotonic()
    while not ckpt.exists() and p.poll() is None and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    assert ckpt.exists(), "trial 0 never wrote a checkpoint"
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "trials" / "0" / "metrics.json").exists()
    # past the grace period (2 s): SQLite stores heartbeat times to the second, so a beat
    # 2.5 s old can still read as 2 s; 4 s is past it on any rounding
    time.sleep(4)
    # the same search again (the Python API the command calls, in this process)
    from msakit.tune import tune

    tune("late_fusion", "synthetic-tiny", space_file, out, 1, epochs=5, patience=5, prune=False,
         heartbeat=1, grace=2)

    storage = f"sqlite:///{out / 'study.db'}"
    ts = sorted(_trials(storage, "late_fusion-synthetic-tiny"), key=lambda t: t.number)
    S = optuna.trial.TrialState
    assert [t.state for t in ts] == [S.FAIL, S.COMPLETE]  # the retry replaced the killed one
    assert ts[1].system_attrs["failed_trial"] == 0 and ts[1].params == ts[0].params
    # resumed from the killed run's last.ckpt: the retry reported no epoch 0
    assert ts[1].intermediate_values and min(ts[1].intermediate_values) >= 1
    # the retry resumed in trial 0's folder; its score equals an uninterrupted run's
    metrics = json.loads((out / "trials" / "0" / "metrics.json").read_text())
    assert metrics["valid"]["mae"] == pytest.approx(ts[1].value, abs=0)
    from msakit.data.registry import load_dataset
    from msakit.train.engine import TrainConfig, fit_seed

    ref = fit_seed("late_fusion", load_dataset("synthetic-tiny"), 1111, tmp_path / "ref",
                   TrainConfig(epochs=5, patience=5), dict(ts[0].params))
    assert ref.metrics["valid"]["mae"] == pytest.approx(ts[1].value, abs=1e-6)
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [r["state"] for r in rows] == ["fail", "complete"]
    assert rows[1]["retry_of"] == "0"


# ------------------------------------------------------------------------------ PostgreSQL

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """A throw-away PostgreSQL server (Debian's binaries) on 127.0.0.1 and a free port;
    run as the ``postgres`` user when the tests run as root (initdb refuses root)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or [shutil.which("initdb")]
    if not found or not found[-1]:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl) not found; apt-get install postgresql")
    bindir = Path(found[-1]).parent
    as_user: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="msakit-pg-"))
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(tmp, ignore_errors=True)
            pytest.skip("running as root and there is no 'postgres' user to run initdb as")
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = tmp / "data", _free_port()

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *args], capture_output=True, text=True, timeout=120)

    r = run(str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
            "-E", "UTF8", "--no-sync")
    if r.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"initdb failed: {(r.stderr or r.stdout).strip()[-300:]}")
    opts = f"-p {port} -k {tmp} -c listen_addresses=127.0.0.1 -c fsync=off"
    r = run(str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(tmp / "log"),
            "-w", "-t", "60", "start")
    if r.returncode != 0:
        log = (tmp / "log").read_text()[-300:] if (tmp / "log").exists() else ""
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"pg_ctl start failed: {(r.stderr or r.stdout).strip()[-300:]} {log}")
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_postgresql_study(tmp_path, space_file, postgres_url):
    # two "machines": each worker has its own output folder, the study lives in PostgreSQL
    from msakit.tune import storage_url

    url = storage_url(postgres_url, tmp_path)
    cmds = [_tune_cmd(tmp_path / f"worker{i}", space_file, 4, "--epochs", "2", "--storage",
                      postgres_url, "--study", "pg-study") for i in range(2)]
    outs = _run_workers(cmds, barrier=(url, "pg-study"))
    _check_shared_study(url, "pg-study", 4, outs)
    for i in range(2):  # each worker's table is the whole study
        rows = list(csv.DictReader(open(tmp_path / f"worker{i}" / "trials.csv")))
        assert len(rows) == 4


def test_domain_search_scores_the_sources_validation_rows_only(tmp_path, space_file):
    """`tune --domain 'A,B->C'`: every trial trains on the sources and is scored on their
    validation rows; best.json carries the split, so the retrained run is a domain run too."""
    from msakit.corrupt import parse_domain
    from msakit.data.sources.synthetic import make_synthetic_domains
    from msakit.tune import tune

    ds = make_synthetic_domains(seed=3, n=(40, 12, 20))
    split = "studio,phone->webcam"
    res = tune("late_fusion", ds, space_file, tmp_path / "out", 2, epochs=1, domain=split)
    assert res["states"] == {"complete": 2}
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["train"]["domain"] == split
    for n in (0, 1):
        trial = tmp_path / "out" / "trials" / str(n)
        assert json.loads((trial / "config.json").read_text())["train"]["domain"] == split
        metrics = json.loads((trial / "metrics.json").read_text())
        assert "test_source" in metrics  # a domain run: target test and sources' test
    # the value a trial reports is its validation score on the sources' validation rows
    src_valid = parse_domain(split).view(ds).splits["valid"]
    assert len(src_valid) == 24 and set(ds.info["domains"]) >= {"studio", "phone", "webcam"}
    v = json.loads((tmp_path / "out" / "trials" / str(best["tune"]["trial"]) /
                    "metrics.json").read_text())["valid"]["mae"]
    assert best["tune"]["value"] == pytest.approx(v, abs=1e-6)


def test_a_model_fitted_in_stages_runs_them_in_each_trial(tmp_path):
    """MMSLF in a search: each trial fits the teacher in its folder, then the student (as
    msakit.train does), and is scored on the student's validation score."""
    from test_mmslf import SMALL, with_prompts

    from msakit.data.registry import load_dataset
    from msakit.tune import tune

    space = tmp_path / "s.yaml"
    space.write_text("model: mmslf\nparams:\n  gamma: {type: float, low: 0.1, high: 1.0, "
                     "source: test}\n")
    ds = with_prompts(load_dataset("synthetic-tiny"))
    res = tune("mmslf", ds, space, tmp_path / "out", 1, epochs=1, overrides=SMALL)
    assert res["states"] == {"complete": 1}
    trial = tmp_path / "out" / "trials" / "0"
    assert (trial / "teacher" / "metrics.json").exists()
    cfg = json.loads((trial / "config.json").read_text())["model_config"]
    assert cfg["stage"] == "student" and cfg["teacher_config_hash"]
    best = json.loads((tmp_path / "out" / "best.json").read_text())
    assert best["tune"]["value"] == pytest.approx(
        json.loads((trial / "metrics.json").read_text())["valid"]["mae"], abs=1e-6)
    assert "teacher_config" not in best["set"]  # retraining runs the stages again
