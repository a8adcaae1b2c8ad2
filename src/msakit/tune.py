"""Hyper-parameter search with Optuna on a shared study (``msakit tune``).

Any number of workers, on one machine (SQLite, the default) or on many (``postgresql://``),
run the same command and join one study; together they run ``--trials`` trials in all.

- Sampler: TPE (Bergstra et al., NeurIPS 2011; Optuna's ``TPESampler`` with ``constant_liar``
  for parallel workers), seeded per trial with (sampler seed, trial number), so two workers
  never draw from the same random stream. Pruner: Optuna's ``MedianPruner`` with its defaults
  (5 startup trials, no warm-up epochs) on the validation selection metric reported after every
  epoch; ``prune=False`` turns it off.
- Objective: the trial's **validation** score of the selection metric (MAE for regression,
  accuracy for classes) of the checkpoint selected on validation. The test split is never
  read by the search (unlike MMSA's tuning mode, which scores on test).
- Every trial trains with the same seed (``seed``), so trials differ only in their parameters;
  trial ``n`` trains into ``OUT/trials/<n>/`` (:func:`msakit.train.api.fit_planned`: the
  model's stages, if it has any, then the scored fit).
- Claiming: "count the study's trials, then create one" runs under a lock shared by every
  worker (an flock beside the SQLite file; a PostgreSQL advisory lock), so the study ends with
  exactly ``trials`` trials whatever the number of workers (ours; Optuna's own trial limit
  callback can overshoot with concurrent workers).
- Resuming: rerunning the command continues the study in its storage. A worker killed
  mid-trial leaves the trial RUNNING; its heartbeat stops, and after ``grace`` seconds the next
  worker that claims a trial marks it FAIL and retries its parameters once, in the same folder
  (the training resumes from the killed run's ``last.ckpt``). Failed-and-retried trials do not
  count towards ``trials``; a trial that fails by itself (e.g. diverged) does.
- Output (atomic writes): ``OUT/best.json`` (the best trial in the format
  ``msakit train --config`` reads) and ``OUT/trials.csv`` (number, state, value, params).

Search spaces are YAML files, one per model under ``msakit/spaces/`` (each range cites where it
was searched, or says "ours"); see :func:`load_space`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import lightning as L

from msakit.errors import ConfigError, MsakitError, RunError, first_line
from msakit.fileio import check_out_dir, read_json, write_csv, write_json

SPACES_DIR = Path(__file__).parent / "spaces"
PARAM_KEYS = ("type", "low", "high", "log", "step", "choices", "source")
TYPES = ("float", "int", "categorical", "group")
# TrainConfig fields a space may search (the others are fixed by the command or display-only)
TRAIN_KEYS = ("corrupt", "min_epochs")
DEFAULT_HEARTBEAT = 60  # seconds between a running trial's heartbeats (ours)


@dataclass
class Param:
    """One searched parameter. ``group``: each choice is a mapping that sets several fields
    together (e.g. MMSA's ``hidden_dims`` triples, MulT's (d, heads) pairs)."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: list = field(default_factory=list)
    source: str = ""

    def labels(self) -> list[str]:
        """A group's choices as the strings Optuna stores (``k=v,k=v``)."""
        return [",".join(f"{k}={v}" for k, v in c.items()) for c in self.choices]

    def suggest(self, trial) -> dict[str, Any]:
        """Sample this parameter in ``trial``: ``{field: value}``."""
        if self.type == "float":
            return {self.name: trial.suggest_float(self.name, self.low, self.high, log=self.log,
                                                   step=self.step)}
        if self.type == "int":
            return {self.name: trial.suggest_int(self.name, self.low, self.high, log=self.log,
                                                 step=self.step or 1)}
        if self.type == "categorical":
            return {self.name: trial.suggest_categorical(self.name, self.choices)}
        label = trial.suggest_categorical(self.name, self.labels())
        return dict(self.choices[self.labels().index(label)])

    def expand(self, value: Any) -> dict[str, Any]:
        """A stored Optuna value of this parameter as ``{field: value}``."""
        if self.type == "group":
            return dict(self.choices[self.labels().index(value)])
        return {self.name: value}


@dataclass
class Space:
    path: Path
    model: str
    params: list[Param]

    def fields(self) -> set[str]:
        return {k for p in self.params for k in (p.choices[0] if p.type == "group" else [p.name])}

    def as_dict(self) -> dict:
        return {"model": self.model, "params": [asdict(p) for p in self.params]}

    def digest(self) -> str:
        """Identifies the space (ranges and choices, not the source notes)."""
        d = [{k: v for k, v in asdict(p).items() if k != "source"} for p in self.params]
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def space_path(model: str) -> Path:
    """The packaged search space of a registered model."""
    return SPACES_DIR / f"{model}.yaml"


def load_space(path: str | os.PathLike, model: str, fixed: dict | None = None) -> Space:
    """Read and check a search-space YAML file::

        model: late_fusion            # optional; must match the tuned model
        params:
          lr: {type: float, low: 1.0e-4, high: 5.0e-3, log: true, source: "MMSA config_tune.json"}
          d: {type: categorical, choices: [32, 64, 128], source: ours}
          dims: {type: group, choices: [{text_hidden: 128, audio_hidden: 16}, ...]}

    Every name (a group's keys) must be a field of the model's config or one of
    :data:`TRAIN_KEYS`; every bound and choice must be a valid value of it (with ``fixed``
    overrides applied). Errors name the file and the key."""
    import yaml

    from msakit.models.base import MODELS, make_config

    path = Path(path)
    try:
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--space {path}: not found") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"--space {path}: not a readable YAML file "
                          f"({first_line(e)})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("params"), dict) or not obj["params"]:
        raise ConfigError(f"--space {path}: expected a mapping with a non-empty 'params' mapping")
    bad = [k for k in obj if k not in ("model", "params", "source")]
    if bad:
        raise ConfigError(f"--space {path}: unknown top-level key(s) {bad}; expected model, "
                          f"params, source")
    if obj.get("model") not in (None, model):
        raise ConfigError(f"--space {path}: written for model {obj['model']!r}, not {model!r}")
    import msakit.models  # noqa: F401  (registers the built-in models)

    model_fields = {f.name for f in fields(MODELS.get(model).config_cls)}
    fixed = dict(fixed or {})
    params: list[Param] = []
    seen: set[str] = set()
    for name, spec in obj["params"].items():
        where = f"--space {path}: params.{name}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping (type, low, high, ...)")
        bad = [k for k in spec if k not in PARAM_KEYS]
        if bad:
            raise ConfigError(f"{where}: unknown key(s) {bad}; expected {', '.join(PARAM_KEYS)}")
        p = _param(str(name), spec, where)
        names = list(p.choices[0]) if p.type == "group" else [p.name]
        for n in names:
            if n not in model_fields and n not in TRAIN_KEYS:
                raise ConfigError(f"{where}: {n!r} is not a field of model {model!r}'s config "
                                  f"nor a training option ({', '.join(TRAIN_KEYS)})")
            if n in seen or n in fixed:
                raise ConfigError(f"{where}: {n!r} is searched twice, or also fixed by --set")
            seen.add(n)
        for value in _values(p):
            _check_value(model, fixed, value, where, make_config)
        params.append(p)
    return Space(path, model, params)


def _param(name: str, spec: dict, where: str) -> Param:
    typ = spec.get("type")
    if typ not in TYPES:
        raise ConfigError(f"{where}: type={typ!r}: expected one of {', '.join(TYPES)}")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log={log!r}: expected true or false")
    src = str(spec.get("source", ""))
    if typ in ("categorical", "group"):
        ch = spec.get("choices")
        if not isinstance(ch, list) or not ch:
            raise ConfigError(f"{where}: choices: expected a non-empty list")
        if any(k in spec for k in ("low", "high", "step")) or log:
            raise ConfigError(f"{where}: a {typ} parameter takes choices, not low/high/step/log")
        if typ == "categorical":
            if not all(c is None or isinstance(c, (bool, int, float, str)) for c in ch):
                raise ConfigError(f"{where}: choices: expected numbers, strings, booleans or "
                                  f"null (use type: group for several fields at once)")
        else:
            if not all(isinstance(c, dict) and c for c in ch) or any(
                    set(c) != set(ch[0]) for c in ch):
                raise ConfigError(f"{where}: choices: expected mappings with the same keys")
        if len(set(map(repr, ch))) != len(ch):
            raise ConfigError(f"{where}: choices: a value is listed twice")
        return Param(name, typ, choices=list(ch), source=src)
    if "choices" in spec:
        raise ConfigError(f"{where}: a {typ} parameter takes low/high, not choices")
    conv = float if typ == "float" else int
    try:
        low, high = conv(spec["low"]), conv(spec["high"])
        step = None if spec.get("step") is None else conv(spec["step"])
    except KeyError as e:
        raise ConfigError(f"{where}: missing {e.args[0]}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: low/high/step: expected {typ} numbers") from None
    if typ == "int" and any(isinstance(spec.get(k), float) and not float(spec[k]).is_integer()
                            for k in ("low", "high", "step")):
        raise ConfigError(f"{where}: low/high/step: expected integers")
    if not low < high:
        raise ConfigError(f"{where}: expected low < high, got {low} and {high}")
    if log and low <= 0:
        raise ConfigError(f"{where}: log=true needs low > 0, got {low}")
    if log and step is not None:
        raise ConfigError(f"{where}: step and log=true cannot be combined")
    if step is not None and step <= 0:
        raise ConfigError(f"{where}: step={step}: expected > 0")
    return Param(name, typ, low, high, log, step, source=src)


def _values(p: Param) -> list[dict[str, Any]]:
    if p.type in ("float", "int"):
        return [{p.name: p.low}, {p.name: p.high}]
    if p.type == "group":
        return [dict(c) for c in p.choices]
    return [{p.name: c} for c in p.choices]


def _check_value(model: str, fixed: dict, value: dict, where: str, make_config) -> None:
    model_part = {k: v for k, v in value.items() if k not in TRAIN_KEYS}
    train_part = {k: v for k, v in value.items() if k in TRAIN_KEYS}
    try:
        make_config(model, **{**fixed, **model_part})
        if train_part:
            from msakit.train.engine import TrainConfig

            TrainConfig(**train_part)
    except ConfigError as e:
        raise ConfigError(f"{where}: {value}: {e}") from None


# ---------------------------------------------------------------------------- storage

def storage_url(storage: str | None, out: Path) -> str:
    """``--storage``: a file path or ``sqlite:///`` URL (default ``OUT/study.db``), or a
    ``postgresql://`` URL."""
    if storage in (None, ""):
        return f"sqlite:///{(out / 'study.db').resolve()}"
    if "://" not in storage:
        return f"sqlite:///{Path(storage).resolve()}"
    scheme, rest = storage.split("://", 1)
    if scheme == "sqlite":
        if not rest.startswith("/") or rest.strip("/") in ("", ":memory:"):
            raise ConfigError(f"--storage {storage}: expected sqlite:///PATH (a file the "
                              f"workers share)")
        return storage
    if scheme.startswith("postgresql+"):
        return storage
    if scheme in ("postgresql", "postgres"):
        # SQLAlchemy 2.1 reads a bare postgresql:// with psycopg 3; the tune extra installs
        # psycopg2 (a binary wheel), used unless psycopg 3 is there
        import importlib.util

        driver = "" if importlib.util.find_spec("psycopg") else "+psycopg2"
        return f"postgresql{driver}://{rest}"
    raise ConfigError(f"--storage {redact(storage)}: expected a SQLite file (path or "
                      f"sqlite:///PATH) or a postgresql:// URL")


def redact(url: str) -> str:
    """The URL without its password."""
    head, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    cred, at, host = rest.rpartition("@")
    user = cred.split(":", 1)[0]
    return f"{head}://{user}:***@{host}" if ":" in cred else url


@contextlib.contextmanager
def _claim_lock(url: str, study: str) -> Iterator[None]:
    """Serialises "count the trials, then create one" between every worker of a study: an
    flock beside a SQLite file (one machine), a PostgreSQL advisory lock (many machines)."""
    if url.startswith("sqlite"):
        import fcntl

        db = url.split(":///", 1)[1]
        fd = os.open(f"{db}.{_key(study)}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
        return
    import sqlalchemy as sa

    engine = None
    try:
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        conn = engine.connect()
    except (sa.exc.SQLAlchemyError, ImportError) as e:
        if engine is not None:
            engine.dispose()
        raise ConfigError(f"--storage {redact(url)}: cannot connect ({first_line(e)})") from None
    try:
        with conn:
            key = int(_key(study), 16) - 2**63
            conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


def _key(study: str) -> str:
    return hashlib.sha256(f"msakit-tune:{study}".encode()).hexdigest()[:16]


def open_storage(url: str, heartbeat: int, grace: int | None):
    import optuna
    import sqlalchemy as sa
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        Path(url.split(":///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"timeout": 60}}  # wait for the other workers' writes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        try:
            return RDBStorage(
                url, engine_kwargs=kwargs, heartbeat_interval=heartbeat,
                grace_period=grace or 2 * heartbeat,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        except (sa.exc.SQLAlchemyError, ImportError, ValueError) as e:
            raise ConfigError(f"--storage {redact(url)}: cannot open ({first_line(e)})") from None


class _Heartbeat:
    """Records a running trial's heartbeat every ``interval`` seconds (a daemon thread)."""

    def __init__(self, storage, trial_id: int, interval: int) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while True:
            with contextlib.suppress(Exception):  # a missed beat only risks a retry
                self.storage.record_heartbeat(self.trial_id)
            if self.stop.wait(self.interval):
                return

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join()


class PruningCallback(L.Callback):
    """Reports the validation selection metric to Optuna after every validation epoch and
    stops a trial the pruner rejects (raises ``optuna.TrialPruned``)."""

    def __init__(self, trial, monitor: str) -> None:
        self.trial, self.monitor = trial, monitor

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.monitor not in trainer.callback_metrics:
            return
        import math

        import optuna

        value = float(trainer.callback_metrics[self.monitor])
        epoch = int(trainer.current_epoch)
        if not math.isfinite(value):
            raise optuna.TrialPruned(f"epoch {epoch}: {self.monitor} is not finite")
        self.trial.report(value, epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"epoch {epoch}: {self.monitor}={value:.4f}")


# ---------------------------------------------------------------------------- search

def _budget_count(trials) -> int:
    """Trials that count towards ``--trials``: all but the heartbeat-failed ones that were
    retried (their retry counts instead)."""
    from optuna.trial import TrialState

    retried = {t.system_attrs["retry_history"][-1] for t in trials
               if t.system_attrs.get("retry_history")}
    return sum(1 for t in trials if not (t.state == TrialState.FAIL and t.number in retried))


def _sampler(seed: int, number: int):
    import optuna

    mixed = int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "little")
    return optuna.samplers.TPESampler(seed=mixed, constant_liar=True)


def tune(
    model: str,
    dataset: Any,
    space: str | os.PathLike | None,
    out: str | os.PathLike,
    trials: int,
    storage: str | None = None,
    study: str | None = None,
    seed: int = 1111,
    sampler_seed: int = 0,
    epochs: int | None = None,
    patience: int | None = None,
    corrupt: str | None = None,
    overrides: dict | None = None,
    metric: str = "auto",
    domain: str | None = None,
    prune: bool = True,
    heartbeat: int = DEFAULT_HEARTBEAT,
    grace: int | None = None,
    verbose: bool = False,
    log: Callable[[str], None] = lambda msg: None,
    precision: str | None = None,
) -> dict:
    """Join (or create) study ``study`` in ``storage`` and run trials until the study holds
    ``trials`` of them; write ``OUT/best.json`` and ``OUT/trials.csv``. Returns the study's
    summary (``best``: the best trial's number, value and config, or None; ``states``).
    ``domain="A,B->C"``: every trial trains on the source domains and is scored on their
    validation rows (``TrainConfig.domain``); the target's rows are never read.
    ``precision``: every trial's (``TrainConfig.precision``), also in ``best.json``."""
    import optuna

    from msakit.data.dataset import MSADataset
    from msakit.data.registry import load_dataset
    from msakit.models.base import make_config
    from msakit.train.engine import TrainConfig, select_metric, with_train_defaults

    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"--trials {trials!r}: expected an integer >= 1")
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int) or heartbeat < 1:
        raise ConfigError(f"--heartbeat {heartbeat!r}: expected whole seconds >= 1")
    if grace is not None and grace <= heartbeat:
        raise ConfigError(f"--grace {grace}: expected more seconds than --heartbeat {heartbeat}")
    out = check_out_dir(out)
    fixed = dict(overrides or {})
    fixed_cfg = make_config(model, **fixed)  # checks the fixed settings
    if space is None and not space_path(model).exists():
        raise ConfigError(f"model {model!r} has no packaged search space ({space_path(model).name});"
                          f" pass --space FILE")
    sp = load_space(space or space_path(model), model, fixed)
    base = TrainConfig(**{k: v for k, v in (("epochs", epochs), ("patience", patience),
                                            ("corrupt", corrupt), ("select", metric),
                                            ("domain", domain), ("precision", precision))
                          if v is not None})
    ds = dataset if isinstance(dataset, MSADataset) else load_dataset(dataset)
    metric_name, mode = select_metric(base, ds.task)
    direction = "minimize" if mode == "min" else "maximize"
    study_name = study or f"{model}-{ds.name}"
    url = storage_url(storage, out)
    out.mkdir(parents=True, exist_ok=True)
    identity = {
        "model": model, "dataset": ds.name, "dataset_hash": ds.content_hash(),
        "space": sp.digest(), "seed": seed, "sampler_seed": sampler_seed,
        "train": {k: getattr(base, k)
                  for k in ("epochs", "patience", "corrupt", "select", "domain", "precision")},
        "set": {k: getattr(fixed_cfg, k) for k in fixed},
        "metric": f"val/{metric_name}", "direction": direction, "prune": prune,
    }
    identity = json.loads(json.dumps(identity))  # as the storage returns it
    _check_out_study(out, study_name, url)
    pruner = optuna.pruners.MedianPruner() if prune else optuna.pruners.NopPruner()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    with _claim_lock(url, study_name), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # under the lock: two workers creating Optuna's tables at once collide on PostgreSQL
        rdb = open_storage(url, heartbeat, grace)
        st = optuna.create_study(storage=rdb, study_name=study_name, direction=direction,
                                 load_if_exists=True, pruner=pruner,
                                 sampler=_sampler(sampler_seed, 0))
        have = st.user_attrs.get("msakit")
        if have is None:
            st.set_user_attr("msakit", identity)
        elif (old := with_train_defaults(have)) != (new := with_train_defaults(identity)):
            diff = [k for k in new if old.get(k) != new[k]]
            raise RunError(
                f"study {study_name!r} in {redact(url)} was created by another search "
                f"(different {', '.join(diff)}); use the same options to join it, or another "
                f"--study")
        if st.direction.name.lower() != direction:
            raise RunError(f"study {study_name!r}: direction {st.direction.name.lower()}, "
                           f"expected {direction}")
    params_by_name = {p.name: p for p in sp.params}

    while True:
        with _claim_lock(url, study_name), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            # we run the heartbeat ourselves (ask/tell, so that trials are claimed under a lock)
            warnings.filterwarnings("ignore", "Heartbeat of storage", UserWarning)
            optuna.storages.fail_stale_trials(st)
            now = st.get_trials(deepcopy=False)
            waiting = any(t.state == optuna.trial.TrialState.WAITING for t in now)
            if not waiting and _budget_count(now) >= trials:  # a waiting one is in the budget
                break
            trial = st.ask()
        st.sampler = _sampler(sampler_seed, trial.number)
        retry_of = rdb.get_trial(trial._trial_id).system_attrs.get("failed_trial")
        folder = trial.number if retry_of is None else int(retry_of)
        run_dir = out / "trials" / str(folder)
        state, value, error = _run_trial(
            trial, sp, rdb, heartbeat, run_dir, model, ds, seed, base, fixed, metric_name,
            verbose, log)
        try:
            if rdb.get_trial(trial._trial_id).state != optuna.trial.TrialState.RUNNING:
                raise optuna.exceptions.UpdateFinishedTrialError
            if state == "complete":
                st.tell(trial, value, skip_if_finished=True)
            elif state == "pruned":
                st.tell(trial, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
            else:
                trial.set_user_attr("error", error)
                st.tell(trial, state=optuna.trial.TrialState.FAIL, skip_if_finished=True)
        except optuna.exceptions.UpdateFinishedTrialError:  # our heartbeats came too late
            state, error = "dropped", "another worker marked it failed (heartbeats too late)"
        log(f"trial {trial.number}{f' (retry of {retry_of})' if retry_of is not None else ''}: "
            f"{state}{f' val/{metric_name}={value:.4f}' if value is not None else ''}"
            f"{f' ({error})' if error else ''}")
        write_outputs(st, out, params_by_name, identity)
    return write_outputs(st, out, params_by_name, identity)


def _run_trial(trial, sp, rdb, heartbeat, run_dir, model, ds, seed, base, fixed, metric_name,
               verbose, log) -> tuple[str, float | None, str]:
    import dataclasses

    import optuna

    from msakit.train.api import StageContext, fit_planned, stage_plan
    from msakit.train.engine import resolved_config

    with _Heartbeat(rdb, trial._trial_id, heartbeat):
        try:
            sampled: dict[str, Any] = {}
            for p in sp.params:
                sampled.update(p.suggest(trial))
            train_part = {k: sampled.pop(k) for k in list(sampled) if k in TRAIN_KEYS}
            tcfg = dataclasses.replace(base, **train_part)  # validated by __post_init__
            ov = {**fixed, **sampled}
            log(f"trial {trial.number}: {', '.join(f'{k}={v}' for k, v in {**ov, **train_part}.items())}"
                f" -> {run_dir}")
            # a model fitted in stages (MMSLF: teacher, then student) runs them as msakit.train
            # does; the earlier stages in the trial's folder, pruning on the last one only
            plan = stage_plan(model, ov, StageContext(
                ds, lambda o: resolved_config(model, ds, seed, tcfg, o)))
            res = fit_planned(model, ds, seed, run_dir, tcfg, ov, plan, verbose,
                              [PruningCallback(trial, f"val/{metric_name}")])
            return "complete", float(res.metrics["valid"][metric_name]), ""
        except optuna.TrialPruned:
            last = trial.storage.get_trial(trial._trial_id).last_step
            return "pruned", None, f"pruned after epoch {last}" if last is not None else ""
        except MsakitError as e:  # an invalid combination, a diverged run: the search goes on
            return "fail", None, " ".join(str(e).split())[:300]


def _check_out_study(out: Path, study: str, url: str) -> None:
    """One OUT folder serves one study (trial folders are named by trial number)."""
    marker = out / "study.json"
    want = {"study": study, "storage": redact(url)}
    if marker.exists():
        have = read_json(marker)
        if have != want:
            raise RunError(f"--out {out} holds trials of study {have.get('study')!r} in "
                           f"{have.get('storage')}; use another --out")
    else:
        write_json(marker, want)


def write_outputs(st, out: Path, params: dict[str, Param], identity: dict) -> dict:
    """``OUT/trials.csv`` and (once a trial completed) ``OUT/best.json``, atomically."""
    from optuna.trial import TrialState

    all_trials = st.get_trials(deepcopy=False)
    names = list(params)
    rows = [["number", "state", "value", "epochs_reported", "retry_of", "duration_s", *names,
             "error"]]
    for t in sorted(all_trials, key=lambda t: t.number):
        dur = t.duration.total_seconds() if t.duration is not None else None
        rows.append([t.number, t.state.name.lower(),
                     "" if t.value is None else repr(float(t.value)),
                     len(t.intermediate_values), t.system_attrs.get("failed_trial", ""),
                     "" if dur is None else f"{dur:.1f}",
                     *[t.params.get(n, "") for n in names], t.user_attrs.get("error", "")])
    write_csv(out / "trials.csv", rows)
    states: dict[str, int] = {}
    for t in all_trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    done = [t for t in all_trials if t.state == TrialState.COMPLETE]
    summary: dict[str, Any] = {"study": st.study_name, "states": states, "best": None}
    if done:
        best = st.best_trial
        sets = dict(identity["set"])
        train = {k: v for k, v in identity["train"].items() if v is not None}
        for n, v in best.params.items():
            for k, val in params[n].expand(v).items():
                (train if k in TRAIN_KEYS else sets)[k] = val
        cfg = {
            "model": identity["model"],
            "dataset": identity["dataset"],
            "set": sets,
            "train": train,
            "tune": {"study": st.study_name, "trial": best.number, "value": best.value,
                     "metric": identity["metric"], "direction": identity["direction"],
                     "seed": identity["seed"], "params": best.params,
                     "trials": states, "selected_on": "validation split only"},
        }
        write_json(out / "best.json", cfg)
        summary["best"] = {"number": best.number, "value": best.value, "config": cfg}
    return summary
