"""``msakit prompts`` (MMSLF cue texts): providers, cache, resume, retries, label hygiene, and
the dataset carrying the prompts into training.

The openai provider talks to a real HTTP server on 127.0.0.1 that the test starts: a small
OpenAI-compatible stub answering ``POST /v1/chat/completions`` (no real LLM can run here), with
scripted failures (429 with Retry-After, 500, a slow answer, malformed JSON, empty content)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from msakit.data.batch import SplitData
from msakit.data.dataset import MSADataset
from msakit.errors import ConfigError, DataError, RunError
from msakit.prompts import (
    CACHE_FILE,
    MANIFEST_FILE,
    PROMPTS_FILE,
    OfflineProvider,
    attach_prompts,
    generate_prompts,
    samples_from,
)

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT / "src")}
LABEL_MARK = "Annotated sentiment"


# ---------------------------------------------------------------------------------------------
# the loopback stub


class Stub:
    """State of the stub server: every request's body, scripted failures per marker (a
    substring of the request text), answers counted per request text, an optional block
    after N answers (to kill a client mid-run)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.bodies: list[dict] = []
        self.answered: Counter[str] = Counter()  # request text -> 200 answers with content
        self.script: dict[str, list[str]] = {}
        self.default = "ok"
        self.block_after: int | None = None
        self.blocked = 0
        self.release = threading.Event()
        self.drop = False
        self.in_flight = 0
        self.max_in_flight = 0
        self.delay = 0.0
        self.starts: list[float] = []

    @property
    def n(self) -> int:
        return len(self.bodies)

    def texts(self) -> list[str]:
        return [_text_of(b) for b in self.bodies]


def _text_of(body: dict) -> str:
    c = body["messages"][0]["content"]
    return c if isinstance(c, str) else c[0]["text"]


def _handler(stub: Stub):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:
            pass

        def _send(self, code: int, payload: bytes, headers: dict | None = None) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)
            except OSError:  # the client gave up (timeout, killed)
                pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = _text_of(body)
            with stub.lock:
                stub.bodies.append(body)
                stub.starts.append(time.monotonic())
                stub.in_flight += 1
                stub.max_in_flight = max(stub.max_in_flight, stub.in_flight)
                action = stub.default
                for mark, acts in stub.script.items():
                    if mark in text and acts:
                        action = acts.pop(0)
                        break
                block = (stub.block_after is not None
                         and sum(stub.answered.values()) >= stub.block_after)
                if block:
                    stub.blocked += 1
            try:
                if self.path != "/v1/chat/completions":
                    return self._send(404, b'{"error": "not found"}')
                if block:
                    stub.release.wait(30)
                    if stub.drop:
                        self.close_connection = True
                        return None
                if stub.delay:
                    time.sleep(stub.delay)
                if action == "429":
                    return self._send(429, b'{"error": "rate"}', {"Retry-After": "0"})
                if action == "500":
                    return self._send(500, b'{"error": "boom"}')
                if action == "401":
                    return self._send(401, b'{"error": "key"}')
                if action == "slow":
                    time.sleep(1.0)
                if action == "malformed":
                    return self._send(200, b'{"choices": [')
                content = "" if action == "empty" else f"Visual cues: calm.\nLanguage cues: {hash(text) % 997}"
                payload = json.dumps({"choices": [{"message": {"role": "assistant",
                                                               "content": content}}]}).encode()
                with stub.lock:
                    if content:
                        stub.answered[text] += 1
                return self._send(200, payload)
            finally:
                with stub.lock:
                    stub.in_flight -= 1

    return H


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # the listen backlog; the default 5 resets bursts of connections


@pytest.fixture
def stub():
    st = Stub()
    server = _Server(("127.0.0.1", 0), _handler(st))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    st.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield st
    st.release.set()
    server.shutdown()
    server.server_close()


# ---------------------------------------------------------------------------------------------
# a small dataset with transcripts and distinct labels


def text_dataset(n=(8, 4, 4)) -> MSADataset:
    rng = np.random.default_rng(0)
    splits = {}
    for k, (split, m) in enumerate(zip(("train", "valid", "test"), n, strict=True)):
        ids = [f"{split}-{i}" for i in range(m)]
        y = np.round(-2.5 + 0.37 * np.arange(m) + 0.011 * k, 2)
        lens = np.full(m, 3)
        splits[split] = SplitData(
            x={"text": rng.normal(size=(m, 3, 2)).astype("f4")}, lengths={"text": lens}, y=y,
            ids=ids, raw_text=[f"SAMPLE<{s}> the movie was not good but the music was great"
                               for s in ids])
    return MSADataset("text-toy", splits)


def rows_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / PROMPTS_FILE).read_text().splitlines()]


def oai(stub, **kw) -> dict:
    return {"base_url": stub.url, "model": "stub-model", "backoff": 0.01, **kw}


# ---------------------------------------------------------------------------------------------
# the openai provider against the stub


def test_cache_second_run_sends_nothing(stub, tmp_path):
    ds = text_dataset()
    m1 = generate_prompts(ds, tmp_path / "p", "openai", **oai(stub, concurrency=3))
    n = sum(len(sd) for sd in ds.splits.values())
    assert stub.n == n and m1["counts"] == {**m1["counts"], "ok": n, "requested": n,
                                            "from_cache": 0, "failed": 0}
    first = rows_of(tmp_path / "p")
    m2 = generate_prompts(ds, tmp_path / "p", "openai", **oai(stub, concurrency=3))
    assert stub.n == n, "the second run sent requests"
    assert m2["counts"]["from_cache"] == n and m2["http_requests"] == 0
    second = rows_of(tmp_path / "p")
    assert [r["text"] for r in second] == [r["text"] for r in first]
    assert {r["source"] for r in second} == {"cache"}
    # another model is another cache key
    generate_prompts(ds, tmp_path / "p", "openai", **oai(stub, model="other"))
    assert stub.n == 2 * n


def test_no_valid_or_test_request_holds_a_label(stub, tmp_path):
    ds = text_dataset()
    generate_prompts(ds, tmp_path / "p", "openai", **oai(stub))
    by_id = {}
    for body in stub.bodies:
        t = _text_of(body)
        by_id[t.split("SAMPLE<")[1].split(">")[0]] = t
    for split, sd in ds.splits.items():
        for sid, y in zip(sd.ids, sd.y, strict=True):
            t = by_id[sid]
            if split == "train":
                assert LABEL_MARK in t and f"{y:+.2f}" in t
            else:
                assert LABEL_MARK not in t and f"{y:+.2f}" not in t
                assert "label" not in t.lower() and "positive" not in t and "negative" not in t


def test_retries_429_and_500_then_succeeds(stub, tmp_path):
    stub.script = {"SAMPLE<train-1>": ["429", "500", "500"], "SAMPLE<test-0>": ["500"]}
    m = generate_prompts(text_dataset(), tmp_path / "p", "openai", **oai(stub, max_retries=3))
    assert m["counts"]["failed"] == 0
    texts = stub.texts()
    assert sum("SAMPLE<train-1>" in t for t in texts) == 4
    assert sum("SAMPLE<test-0>" in t for t in texts) == 2
    assert m["http_requests"] == stub.n == 16 + 4


def test_retries_exhausted_mark_the_sample_failed(stub, tmp_path):
    stub.script = {"SAMPLE<valid-2>": ["500"] * 3}
    m = generate_prompts(text_dataset(), tmp_path / "p", "openai", **oai(stub, max_retries=2))
    bad = [r for r in rows_of(tmp_path / "p") if r["status"] == "failed"]
    assert [r["id"] for r in bad] == ["valid-2"] and "HTTP 500 after 3 attempt" in bad[0]["reason"]
    assert m["counts"]["failed"] == 1 and m["counts"]["ok"] == 15
    # failures are not cached: a rerun asks for that sample only, and it succeeds
    n = stub.n
    m = generate_prompts(text_dataset(), tmp_path / "p", "openai", **oai(stub))
    assert stub.n == n + 1 and m["counts"]["failed"] == 0 and m["counts"]["from_cache"] == 15


def test_timeout_is_retried_then_fails_when_out_of_retries(stub, tmp_path):
    stub.script = {"SAMPLE<train-0>": ["slow"]}
    m = generate_prompts(text_dataset(), tmp_path / "a", "openai",
                         **oai(stub, timeout=0.3, max_retries=1))
    assert m["counts"]["failed"] == 0
    assert sum("SAMPLE<train-0>" in t for t in stub.texts()) == 2
    stub.script = {"SAMPLE<train-0>": ["slow"]}
    generate_prompts(text_dataset(), tmp_path / "b", "openai",
                     **oai(stub, timeout=0.3, max_retries=0, model="m2"))
    bad = [r for r in rows_of(tmp_path / "b") if r["status"] == "failed"]
    assert [r["id"] for r in bad] == ["train-0"] and "timed out" in bad[0]["reason"]


def test_malformed_and_empty_answers_fail_that_sample(stub, tmp_path):
    stub.script = {"SAMPLE<train-2>": ["malformed"], "SAMPLE<test-3>": ["empty"]}
    m = generate_prompts(text_dataset(), tmp_path / "p", "openai", **oai(stub))
    bad = {r["id"]: r for r in rows_of(tmp_path / "p") if r["status"] == "failed"}
    assert set(bad) == {"train-2", "test-3"}
    assert "malformed answer" in bad["train-2"]["reason"] and bad["train-2"]["text"] == ""
    assert bad["test-3"]["reason"] == "empty answer"
    assert m["counts"]["failed"] == 2 and stub.n == 16  # not retried
    # a training sample without a prompt is refused when the prompts are attached
    with pytest.raises(DataError, match=r"prompts\.jsonl: training sample 'train-2' has no "
                                        r"successful prompt \(1 of 8 missing\)"):
        attach_prompts(text_dataset(), tmp_path / "p")


def test_auth_error_stops_the_run(stub, tmp_path):
    stub.default = "401"
    with pytest.raises(RunError, match="HTTP 401"):
        generate_prompts(text_dataset(), tmp_path / "p", "openai", **oai(stub))
    assert stub.n <= 8  # stopped, not 16 samples x retries


def test_no_server_stops_the_run(tmp_path):
    import socket

    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.monotonic()
    with pytest.raises(RunError, match="connection refused after 2 attempt.*--base-url"):
        generate_prompts(text_dataset(), tmp_path / "p", "openai", base_url=f"http://127.0.0.1:"
                         f"{port}/v1", model="m", backoff=0.01, max_retries=1)
    assert time.monotonic() - t < 5


def test_concurrency_bound_and_rpm_limit(stub, tmp_path):
    stub.delay = 0.05
    generate_prompts(text_dataset(), tmp_path / "a", "openai", **oai(stub, concurrency=3))
    assert 2 <= stub.max_in_flight <= 3
    stub.delay, stub.starts = 0.0, []
    generate_prompts(text_dataset((5, 1, 1)), tmp_path / "b", "openai",
                     **oai(stub, rpm=600, concurrency=4))  # one start per 0.1 s
    starts = sorted(stub.starts)  # the client spaces its starts 0.1 s apart: 0.6 s for 7
    assert len(starts) == 7 and starts[-1] - starts[0] >= 0.5


def test_frames_are_sent_as_images_and_key_the_cache(stub, tmp_path):
    frames = tmp_path / "frames"
    png = b"\x89PNG\r\n\x1a\n" + b"x" * 20
    for i in range(5):
        (frames / "train-0").mkdir(parents=True, exist_ok=True)
        (frames / "train-0" / f"{i:03d}.png").write_bytes(png + bytes([i]))
    ds = text_dataset()
    generate_prompts(ds, tmp_path / "p", "openai", frames=frames, **oai(stub))
    with_images = [b for b in stub.bodies if not isinstance(b["messages"][0]["content"], str)]
    assert len(with_images) == 1
    parts = with_images[0]["messages"][0]["content"]
    assert "SAMPLE<train-0>" in parts[0]["text"] and "Frames: 3 attached." in parts[0]["text"]
    urls = [p["image_url"]["url"] for p in parts[1:]]
    assert len(urls) == 3 and all(u.startswith("data:image/png;base64,") for u in urls)
    assert len(set(urls)) == 3  # first, middle, last of the 5
    n = stub.n
    (frames / "train-0" / "004.png").write_bytes(png + b"changed")
    generate_prompts(ds, tmp_path / "p", "openai", frames=frames, **oai(stub))
    assert stub.n == n + 1  # only the sample whose image changed is asked again


def test_bad_options_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="--provider 'nope'"):
        generate_prompts(text_dataset(), tmp_path / "p", "nope")
    with pytest.raises(ConfigError, match="--base-url"):
        generate_prompts(text_dataset(), tmp_path / "p", "openai", base_url="localhost:8000")
    with pytest.raises(ConfigError, match="--concurrency 0"):
        generate_prompts(text_dataset(), tmp_path / "p", "openai",
                         base_url="http://127.0.0.1:9/v1", concurrency=0)
    env = os.environ.pop("MSAKIT_TEST_NO_KEY", None)
    with pytest.raises(ConfigError, match="--api-key-env MSAKIT_TEST_NO_KEY"):
        generate_prompts(text_dataset(), tmp_path / "p", "openai",
                         api_key_env="MSAKIT_TEST_NO_KEY")
    assert env is None


# ---------------------------------------------------------------------------------------------
# the offline provider


def test_offline_provider_is_deterministic_and_labels_only_training_cues(tmp_path):
    ds = text_dataset()
    m = generate_prompts(ds, tmp_path / "a", "offline")
    generate_prompts(text_dataset(), tmp_path / "b", "offline")
    assert (tmp_path / "a" / PROMPTS_FILE).read_bytes() == (tmp_path / "b" / PROMPTS_FILE).read_bytes()
    assert m["counts"]["offline"] == 16 and m["http_requests"] == 0
    assert not (tmp_path / "a" / CACHE_FILE).exists()
    rows = {r["id"]: r for r in rows_of(tmp_path / "a")}
    assert "'not good' (negated positive)" in rows["train-0"]["text"]
    assert "'great' (positive)" in rows["train-0"]["text"]
    assert f"{LABEL_MARK}: {ds.splits['train'].y[3]:+.2f}" in rows["train-3"]["text"]
    for sid in ("valid-0", "test-3"):
        assert LABEL_MARK not in rows[sid]["text"]
    assert "NOT an LLM" in OfflineProvider.__doc__


def test_offline_on_synthetic_data_without_transcripts(tmp_path):
    import msakit

    ds = msakit.load_dataset("synthetic-tiny")
    generate_prompts("synthetic-tiny", tmp_path / "p", "offline")
    rows = rows_of(tmp_path / "p")
    assert len(rows) == sum(ds.sizes().values()) and all(r["status"] == "ok" for r in rows)
    assert [r["id"] for r in rows] == [i for s in ("train", "valid", "test")
                                       for i in ds.splits[s].ids]
    assert "no transcript" in rows[0]["text"] and "steps" in rows[0]["text"]


# ---------------------------------------------------------------------------------------------
# the dataset carries the prompts


def test_attach_prompts_names_and_hashes_the_prompts(tmp_path, monkeypatch):
    import msakit

    ds = text_dataset()
    generate_prompts(ds, tmp_path / "p", "offline")
    a = attach_prompts(ds, tmp_path / "p")
    rows = {r["id"]: r["text"] for r in rows_of(tmp_path / "p")}
    for s, sd in a.splits.items():
        assert sd.prompt_text == [rows[i] for i in sd.ids], s
    assert a.name == f"prompts:{(tmp_path / 'p').resolve()}"
    assert a.content_hash() != ds.content_hash()
    assert a.info["prompts"]["sha256"] == json.loads(
        (tmp_path / "p" / MANIFEST_FILE).read_text())["sha256"]
    # another prompts file (one test cue changed) -> another hash
    lines = (tmp_path / "p" / PROMPTS_FILE).read_text().splitlines()
    lines[-1] = json.dumps({**json.loads(lines[-1]), "text": "edited"})
    (tmp_path / "p" / PROMPTS_FILE).write_text("\n".join(lines) + "\n")
    b = attach_prompts(ds, tmp_path / "p")
    assert b.content_hash() not in (a.content_hash(), ds.content_hash())
    assert b.splits["test"].prompt_text[-1] == "edited"
    # a catalog dataset round-trips through load_dataset("prompts:DIR") with the same hash,
    # also from another working directory when DIR was given relative
    monkeypatch.chdir(tmp_path)
    generate_prompts("synthetic-tiny", "s", "offline")
    c = attach_prompts(msakit.load_dataset("synthetic-tiny"), "s")
    assert c.name == f"prompts:{(tmp_path / 's').resolve()}"
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    d = msakit.load_dataset(c.name)
    assert d.name == c.name and d.content_hash() == c.content_hash()
    assert d.splits["train"].prompt_text == c.splits["train"].prompt_text
    # valid/test prompts may be missing; train prompts may not
    lines = (tmp_path / "s" / PROMPTS_FILE).read_text().splitlines()
    recs = [json.loads(x) for x in lines]
    n_train = len(c.splits["train"])
    recs[n_train] = {**recs[n_train], "status": "failed", "text": "", "reason": "x"}
    (tmp_path / "s" / PROMPTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    e = msakit.load_dataset(c.name)
    assert e.splits["valid"].prompt_text[0] == ""
    recs[0] = {**recs[0], "status": "failed", "text": "", "reason": "x"}
    (tmp_path / "s" / PROMPTS_FILE).write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(DataError, match=f"training sample {recs[0]['id']!r}"):
        msakit.load_dataset(c.name)


def run_cli(*args: str) -> int:
    from msakit.cli import main

    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code or 0


def test_cli_prompts_then_train_with_prompts_and_eval(tmp_path, capsys):
    import msakit

    p, run = tmp_path / "p", tmp_path / "run"
    assert run_cli("prompts", "--dataset", "synthetic-tiny", "--out", str(p), "--no-progress") == 0
    assert "prompts: 420 succeeded, 0 failed" in capsys.readouterr().out
    assert run_cli("train", "--model", "late_fusion", "--dataset", "synthetic-tiny", "--prompts",
                   str(p), "--out", str(run), "--seeds", "1", "--epochs", "1") == 0
    cfg = json.loads((run / "seed_1" / "config.json").read_text())
    assert cfg["dataset"] == f"prompts:{p.resolve()}"
    assert cfg["dataset_info"]["prompts"]["provider"] == "offline"
    assert cfg["dataset_hash"] == msakit.load_dataset(f"prompts:{p}").content_hash()
    assert cfg["dataset_hash"] != msakit.load_dataset("synthetic-tiny").content_hash()
    capsys.readouterr()
    assert run_cli("eval", "--run", str(run)) == 0  # reloads prompts:DIR by name, same hash
    assert "test" in capsys.readouterr().out
    assert run_cli("train", "--model", "late_fusion", "--dataset", "synthetic-tiny",
                   "--prompts", str(tmp_path / "none"), "--out", str(run)) == 2
    assert "--prompts" in capsys.readouterr().err


def test_cli_reports_failures_with_exit_code_1_and_shows_progress(stub, tmp_path, capsys):
    stub.script = {LABEL_MARK: ["empty"]}  # one training request (each is unique: its label)
    args = ("prompts", "--dataset", "synthetic-tiny", "--provider", "openai", "--base-url",
            stub.url, "--model", "stub", "--out", str(tmp_path / "p"), "--max-retries", "0")
    assert run_cli(*args) == 1
    cap = capsys.readouterr()
    assert "prompts: 419 succeeded, 1 failed" in cap.out
    assert "1 sample(s) failed" in cap.err and "prompts (openai)" in cap.err and "100%" in cap.err
    assert run_cli(*args) == 0  # the rerun asks for the failed sample only
    assert "1 requested" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# kill and resume (a real subprocess, SIGKILL)


def _cached_rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(path, timeout=5) as db:
            return db.execute("SELECT COUNT(*) FROM cues").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


@pytest.mark.slow
def test_killed_run_resumes_and_asks_each_request_once(stub, tmp_path):
    import msakit

    out = tmp_path / "p"
    cmd = [sys.executable, "-m", "msakit.cli", "prompts", "--dataset", "synthetic-tiny",
           "--provider", "openai", "--base-url", stub.url, "--model", "stub", "--out", str(out),
           "--concurrency", "4", "--no-progress"]
    stub.block_after = 60
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        t0 = time.monotonic()
        while (stub.blocked < 1 or stub.in_flight > stub.blocked
               or _cached_rows(out / CACHE_FILE) < sum(stub.answered.values())):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - t0 < 60, "the client never reached the block"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    answered_before = sum(stub.answered.values())
    assert 60 <= answered_before <= 63 and _cached_rows(out / CACHE_FILE) == answered_before
    assert not (out / PROMPTS_FILE).exists()
    stub.drop = True  # the requests in flight at the kill are never answered
    stub.release.set()
    stub.block_after = None
    res = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    ds = msakit.load_dataset("synthetic-tiny")
    unique = {s.request_text() for s in samples_from(ds)}
    assert set(stub.answered) == unique
    assert max(stub.answered.values()) == 1, "a request was answered twice"
    man = json.loads((out / MANIFEST_FILE).read_text())
    c = man["counts"]
    assert c["failed"] == 0 and c["from_cache"] >= answered_before
    assert c["from_cache"] + c["requested"] + c["shared"] == c["samples"] == 420
    assert man["http_requests"] == c["requested"] == len(unique) - answered_before
    assert f"prompts: {sum(ds.sizes().values())} succeeded, 0 failed" in res.stdout
    assert f"{c['from_cache']} from the cache" in res.stdout
    held_out = {s.request_text() for s in samples_from(ds) if s.split != "train"}
    assert held_out and not any(LABEL_MARK in t for t in held_out)
    assert {t for t in stub.texts() if LABEL_MARK in t} == unique - held_out
