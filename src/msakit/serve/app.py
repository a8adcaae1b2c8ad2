"""``msakit serve``: a FastAPI app that predicts the sentiment of uploaded videos.

Routes: ``GET /`` the page (upload, progress, result), ``GET /health``, ``POST /v1/predict``
(multipart form field ``file``; JSON as ``msakit predict --json`` prints it).

What a public server needs, with our defaults (:class:`ServeConfig`):

- uploads larger than ``max_upload_mb`` are refused (413) while they stream in; nothing past the
  limit is stored;
- content sniffing (msakit.serve.upload): a file that is not a video container is refused (415),
  one FFmpeg cannot read whole (truncated, damaged) too (422);
- ``workers`` child processes each hold the model (spawned, so a worker that runs over its time
  can be killed and replaced without touching the server); at most ``queue`` requests wait for
  one, more are refused (429);
- ``timeout_s`` bounds a request's wait plus its prediction: past it the answer is 408 and the
  worker, if one was running it, is killed and respawned in the background.

Every refusal is a 4xx JSON ``{"detail": "..."}`` with one line naming the file and what was
expected; an input the model cannot use (no speech for a text model) is 422; a worker that
dies is 500. The server keeps serving after each of them.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.datastructures import UploadFile
from starlette.requests import ClientDisconnect

from msakit.errors import ConfigError, RunError

log = logging.getLogger("msakit.serve")


@dataclass
class ServeConfig:
    """Server limits (all ours). run: a run folder or "default"."""

    run: str
    max_upload_mb: float = 100.0
    timeout_s: float = 120.0
    workers: int = 1
    queue: int = 8
    threads: int = 1  # torch threads per worker

    def __post_init__(self) -> None:
        for k in ("max_upload_mb", "timeout_s"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ConfigError(f"--{k.replace('_', '-')} {v!r}: expected a number > 0")
        for k, lo in (("workers", 1), ("queue", 0), ("threads", 1)):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"--{k} {v!r}: expected an integer >= {lo}")

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class Refused(Exception):
    """An HTTP refusal: status code and one-line message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _worker_main(conn, run: str, threads: int) -> None:
    """A worker process: load the run once, then answer (path, name) jobs until EOF."""
    from msakit.errors import DataError, MsakitError
    from msakit.extract.stages import set_threads
    from msakit.serve.predict import Predictor

    set_threads(threads)
    try:
        predictor = Predictor(run)
        predictor.warm_up()
    except MsakitError as e:
        conn.send(("failed", str(e)))
        return
    conn.send(("ready", predictor.describe()))
    while True:
        try:
            path, name = conn.recv()
        except (EOFError, OSError):
            return
        try:
            conn.send(("ok", predictor.predict(path, name)))
        except DataError as e:
            conn.send(("error", 422, str(e)))
        except MsakitError as e:
            conn.send(("error", 500, str(e)))
        except Exception as e:  # noqa: BLE001  (a bug in one request must not end the worker)
            log.exception("prediction of %s failed", name)
            conn.send(("error", 500, f"{name}: prediction failed ({type(e).__name__}: {e})"))


def _context():
    """Workers start from a fork server that has imported torch and msakit's model code
    once, so a second worker, or one replacing a killed one, starts in about the time it takes
    to load the weights (a fork of a process with no threads running; never of the server)."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["msakit.serve.predict", "msakit.train.engine",
                                "msakit.models"])
    return ctx


class _Worker:
    """A worker process, started at construction; :meth:`ready` waits until it has loaded
    the run (so several load at once)."""

    def __init__(self, run: str, threads: int) -> None:
        ctx = _context()
        self.run = run
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, run, threads), daemon=True)
        self.proc.start()
        child.close()

    def ready(self) -> _Worker:
        try:
            kind, info = self.conn.recv()  # blocks until the model is loaded
        except (EOFError, OSError):
            self.proc.join(5)
            raise RunError(f"--run {self.run}: the worker process exited while loading the run "
                           f"(exit code {self.proc.exitcode})") from None
        if kind != "ready":
            self.proc.join(5)
            raise ConfigError(str(info))
        self.info = info
        return self

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join(5)
        self.conn.close()


class WorkerPool:
    """``workers`` processes and at most ``queue`` requests waiting for one."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self.pending = 0  # admitted requests: running or waiting
        self.info: dict = {}
        self.served = self.refused = self.respawned = 0
        self._all: list[_Worker] = []

    def start(self) -> None:
        """Spawn the workers, which load the model in parallel; block until all are ready."""
        spawned = [_Worker(self.cfg.run, self.cfg.threads) for _ in range(self.cfg.workers)]
        try:
            for w in spawned:
                w.ready()
        except BaseException:
            for w in spawned:
                w.kill()
            raise
        for w in spawned:
            self._all.append(w)
            self.idle.put_nowait(w)
        log.info("%d worker(s) ready: %s", len(self._all), self._all[0].info)
        self.info = self._all[0].info

    def close(self) -> None:
        for w in self._all:
            w.kill()

    async def _respawn(self, dead: _Worker) -> None:
        dead.kill()
        self._all = [x for x in self._all if x is not dead]
        try:
            w = await asyncio.to_thread(lambda: _Worker(self.cfg.run, self.cfg.threads).ready())
        except Exception:  # noqa: BLE001  (logged; /health shows one worker fewer)
            log.exception("could not replace a worker")
            return
        self._all.append(w)
        self.respawned += 1
        self.idle.put_nowait(w)

    async def run(self, path: str, name: str) -> dict:
        cap = self.cfg.workers + self.cfg.queue
        if self.pending >= cap:
            raise Refused(429, f"{name}: the server is busy ({self.cfg.workers} running, "
                               f"{self.cfg.queue} waiting); try again later")
        deadline = time.monotonic() + self.cfg.timeout_s
        self.pending += 1
        try:
            try:
                w = await asyncio.wait_for(self.idle.get(), deadline - time.monotonic())
            except TimeoutError:
                raise Refused(408, f"{name}: waited {self.cfg.timeout_s:g} s for a free worker "
                                   f"(the server's time limit per request)") from None
            healthy = False
            try:
                w.conn.send((path, name))
                left = max(0.0, deadline - time.monotonic())
                if not await asyncio.to_thread(w.conn.poll, left):
                    raise Refused(408, f"{name}: the prediction took longer than the server's "
                                       f"limit of {self.cfg.timeout_s:g} s per request")
                msg = w.conn.recv()
                healthy = True
            except (EOFError, OSError):
                raise Refused(500, f"{name}: the worker process died during the "
                                   f"prediction") from None
            finally:
                if healthy:
                    self.idle.put_nowait(w)
                else:
                    asyncio.get_running_loop().create_task(self._respawn(w))
            if msg[0] == "ok":
                return msg[1]
            raise Refused(msg[1], msg[2])
        finally:
            self.pending -= 1


class _TooLarge(Exception):
    pass


def _page() -> str:
    return resources.files("msakit.serve").joinpath("page.html").read_text(encoding="utf-8")


def create_app(cfg: ServeConfig, pool: WorkerPool | None = None):
    """The FastAPI app; the worker pool starts with the app (lifespan) unless given."""
    from contextlib import asynccontextmanager

    from msakit.serve.upload import BrokenVideo, NotAVideo, check_video

    pool = pool or WorkerPool(cfg)

    @asynccontextmanager
    async def lifespan(app):
        if not pool._all:
            await asyncio.to_thread(pool.start)
        try:
            yield
        finally:
            pool.close()

    app = FastAPI(title="msakit", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.pool = pool
    page = _page().replace("{{MAX_MB}}", f"{cfg.max_upload_mb:g}")

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model": pool.info, "workers": cfg.workers,
                "workers_alive": len(pool._all),
                "running_or_waiting": pool.pending, "queue": cfg.queue,
                "max_upload_mb": cfg.max_upload_mb, "timeout_s": cfg.timeout_s,
                "served": pool.served, "refused": pool.refused}

    @app.post("/v1/predict")
    async def predict(request: Request) -> Any:
        tmpdir = tempfile.mkdtemp(prefix="msakit-serve-")
        try:
            result = await _predict(request, tmpdir)
            pool.served += 1
            return result
        except Refused as e:
            pool.refused += 1
            return JSONResponse({"detail": str(e)}, status_code=e.status)
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)

    async def _predict(request: Request, tmpdir: str) -> dict:
        limit = cfg.max_upload_bytes
        body_limit = limit + 64 * 1024  # room for the multipart framing
        too_big = Refused(413, f"upload larger than the server's limit of "
                               f"{cfg.max_upload_mb:g} MB")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > body_limit:
            await _drain(request, body_limit * 4)
            raise too_big
        seen = 0

        async def receive():
            nonlocal seen
            msg = await request.receive()
            seen += len(msg.get("body", b""))
            if seen > body_limit:
                raise _TooLarge
            return msg

        try:
            form = await Request(request.scope, receive).form(max_files=1, max_fields=4)
        except _TooLarge:
            await _drain(request, body_limit * 4)
            raise too_big from None
        except Exception as e:  # noqa: BLE001  (starlette's multipart errors vary by version)
            raise Refused(400, f"not a multipart upload ({e}); send the video as form "
                               f"field 'file'") from None
        up = form.get("file")
        if not isinstance(up, UploadFile):
            raise Refused(400, "no file: send the video as multipart form field 'file'")
        name = Path(up.filename or "upload").name or "upload"
        path = os.path.join(tmpdir, "video")
        with open(path, "wb") as f:
            await asyncio.to_thread(shutil.copyfileobj, up.file, f)
        await form.close()
        if os.path.getsize(path) == 0:
            raise Refused(400, f"{name}: the uploaded file is empty")
        try:
            await asyncio.to_thread(check_video, path, name)
        except NotAVideo as e:
            raise Refused(415, str(e)) from None
        except BrokenVideo as e:
            raise Refused(422, str(e)) from None
        return await pool.run(path, name)

    return app


async def _drain(request, cap: int) -> None:
    """Read and drop what is left of a refused body (up to ``cap`` bytes), so the client can
    read the refusal instead of a reset connection."""
    n = 0
    try:
        async for chunk in request.stream():
            n += len(chunk)
            if n > cap:
                break
    except (ClientDisconnect, RuntimeError):
        pass


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Start the workers (a run they cannot load is one ConfigError line here, before any
    port is opened), then run the app with uvicorn until interrupted."""
    import uvicorn

    pool = WorkerPool(cfg)
    try:
        pool.start()
    except BaseException:
        pool.close()
        raise
    uvicorn.run(create_app(cfg, pool), host=host, port=port, log_level="info")
