"""Throughput of ``msakit prompts --provider openai`` against a loopback stub, and of its cache.

A stub OpenAI-compatible server (``POST /v1/chat/completions``, a fixed answer after an
optional latency that stands in for an LLM's generation time) runs in its own process on
127.0.0.1, so the client's threads do not share a GIL with it. For each (latency,
concurrency) the script writes prompts for N synthetic samples with transcripts into a fresh
folder (every request sent: cold), then runs the same command again (every answer from the
SQLite cache: warm), and reports samples/s for both, plus the offline provider's rate.

    python benchmarks/bench_prompts.py [--n 2000] [--concurrency 1 8 32] [--latency 0 0.05]
        [--out bench_prompts.json] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def serve(latency: float) -> None:
    """The stub: prints its port on stdout, then serves until killed."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    answer = json.dumps({"choices": [{"message": {
        "role": "assistant", "content": "Visual cues: a smile.\nLanguage cues: 'great'."}}]}).encode()

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            if latency:
                time.sleep(latency)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256  # the listen backlog (5 by default resets connections)

    server = Server(("127.0.0.1", 0), H)
    print(server.server_address[1], flush=True)
    server.serve_forever()


def dataset(n: int):
    from msakit.data.batch import SplitData
    from msakit.data.dataset import MSADataset

    rng = np.random.default_rng(0)
    sizes = {"train": n * 7 // 10, "valid": n // 10}
    sizes["test"] = n - sizes["train"] - sizes["valid"]
    splits = {}
    for split, m in sizes.items():
        ids = [f"{split}-{i}" for i in range(m)]
        splits[split] = SplitData(
            x={"text": rng.normal(size=(m, 2, 2)).astype("f4")}, lengths={"text": np.full(m, 2)},
            y=rng.uniform(-3, 3, m).round(2), ids=ids,
            raw_text=[f"clip {s}: the plot was not great but i loved the music" for s in ids])
    return MSADataset(f"bench-{n}", splits)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--latency", type=float, nargs="+", default=[0.0, 0.05])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if args.serve is not None:
        return serve(args.serve)
    import torch

    torch.set_num_threads(1)
    from msakit.fileio import write_json
    from msakit.prompts import generate_prompts

    ds = dataset(args.n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        generate_prompts(ds, Path(tmp) / "offline", "offline")
        offline = args.n / (time.perf_counter() - t)
        for lat in args.latency:
            proc = subprocess.Popen([sys.executable, __file__, "--serve", str(lat)],
                                    stdout=subprocess.PIPE, text=True)
            try:
                url = f"http://127.0.0.1:{int(proc.stdout.readline())}/v1"
                for c in args.concurrency:
                    out = Path(tmp) / f"lat{lat}-c{c}"
                    times = []
                    for _ in ("cold", "warm"):
                        t = time.perf_counter()
                        m = generate_prompts(ds, out, "openai", base_url=url, model="stub",
                                             concurrency=c, max_retries=0)
                        times.append(time.perf_counter() - t)
                        assert m["counts"]["ok"] == args.n, m["counts"]
                    assert m["counts"]["from_cache"] == args.n and m["http_requests"] == 0
                    rows.append({"latency_s": lat, "concurrency": c, "n": args.n,
                                 "cold_samples_per_s": args.n / times[0],
                                 "warm_samples_per_s": args.n / times[1],
                                 "ideal_cold_per_s": c / lat if lat else None})
                    r = rows[-1]
                    print(f"latency {lat * 1000:4.0f} ms  concurrency {c:3d}: cold "
                          f"{r['cold_samples_per_s']:7.1f} req/s"
                          + (f" (ideal {r['ideal_cold_per_s']:.0f})" if lat else "")
                          + f", cache {r['warm_samples_per_s']:7.0f} samples/s", flush=True)
            finally:
                proc.kill()
                proc.wait()
    print(f"offline provider: {offline:.0f} samples/s")
    res = {"rows": rows, "offline_samples_per_s": offline, "n": args.n,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "python": platform.python_version(), "date": str(date.today()),
           "command": "python benchmarks/bench_prompts.py " + " ".join(sys.argv[1:])}
    if args.out:
        write_json(args.out, res)
    if args.markdown:
        print(f"\n### msakit prompts: openai provider against a loopback stub ({res['date']}, "
              f"{res['machine']})\n\n`{res['command']}` ({args.n} samples with transcripts; "
              f"stub in its own process; cold = every request sent, cache = the rerun)\n")
        print("| stub latency | concurrency | cold req/s | ideal | cache samples/s |")
        print("|---|---|---|---|---|")
        for r in rows:
            ideal = f"{r['ideal_cold_per_s']:.0f}" if r["ideal_cold_per_s"] else "-"
            print(f"| {r['latency_s'] * 1000:.0f} ms | {r['concurrency']} | "
                  f"{r['cold_samples_per_s']:.0f} | {ideal} | {r['warm_samples_per_s']:.0f} |")
        print(f"\nOffline provider: {offline:.0f} samples/s.")


if __name__ == "__main__":
    main()
