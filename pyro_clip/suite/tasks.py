"""The unit of work every executor ships: a :class:`Task` in, a :class:`TaskResult` out.

Two kinds of task: ``prepare`` fills the feature cache of one data set (every split the runs
read) so that its runs only read it, and ``run`` executes one suite run with
:func:`pyro_clip.pipeline.run.run`. A run is written atomically: into a hidden temporary sibling
folder ``.<name>.tmp-<id>``, whose ``config.json`` is then pointed at the final folder and
which is renamed onto ``<name>`` (POSIX ``rename`` of a directory is atomic on one file
system). A worker killed mid-run leaves only the hidden folder; the next attempt deletes it.
So a folder named like a run is either complete or holds just ``error.txt`` and ``run.log``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyro_clip.pipeline.config import RunConfig
from pyro_clip.utils.io import atomic_write, read_json, write_json

PREPARE, RUN = "prepare", "run"
TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class Task:
    """One prepare or run task; ``config`` is a :meth:`RunConfig.to_dict` (plain data, picklable).

    ``needs`` are the keys of the prepare tasks a run reads the features of; ``run_configs``
    are the configs of the runs whose images a prepare task encodes.
    """

    kind: str
    key: str
    config: dict[str, Any]
    diagnostics: str = "metrics"
    threads: int = 1
    needs: tuple[str, ...] = ()
    run_configs: tuple[dict[str, Any], ...] = ()


@dataclass
class TaskResult:
    """What a task reports back to the driver (it never raises for a failed run)."""

    kind: str
    key: str
    seconds: float
    error: str | None = None
    attempt: int = 1
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)

    @property
    def summary(self) -> str:
        """The last line of the traceback (``ValueError: ...``), or ``""``."""
        return self.error.strip().splitlines()[-1] if self.error else ""


@contextlib.contextmanager
def diagnostics_mode(mode: str) -> Iterator[None]:
    """Temporarily swap the runner's diagnostics hook: ``full`` | ``metrics`` | ``none``."""
    from pyro_clip.diagnostics.hooks import diagnose_run, metrics_only_hook
    from pyro_clip.pipeline import run as runner

    saved = list(runner.RUN_HOOKS)
    if mode == "metrics":
        runner.RUN_HOOKS[:] = [metrics_only_hook if h is diagnose_run else h for h in saved]
    elif mode == "none":
        runner.RUN_HOOKS[:] = [h for h in saved if h is not diagnose_run]
    try:
        yield
    finally:
        runner.RUN_HOOKS[:] = saved


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` intra-op torch threads (the run's ``resources.cpus``), then restore."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextlib.contextmanager
def run_log(path: Path, capture_output: bool) -> Iterator[None]:
    """Send warnings and ``logging`` (and, in worker processes, stdout/stderr) to ``path``."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    logging.captureWarnings(True)
    try:
        if capture_output:
            with open(path, "a", buffering=1) as fh, contextlib.redirect_stdout(fh), \
                    contextlib.redirect_stderr(fh):
                yield
        else:
            yield
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
        handler.close()


def _next_attempt(final: Path) -> int:
    """Count this attempt in ``.<name>.attempts`` and delete what earlier attempts left."""
    counter = final.parent / f".{final.name}.attempts"
    attempt = int(counter.read_text() or 0) + 1 if counter.is_file() else 1
    write_json(counter, attempt)
    for stale in final.parent.glob(f".{final.name}{TMP_MARK}*"):
        shutil.rmtree(stale, ignore_errors=True)
    return attempt


def _replace_dir(src: Path, dst: Path) -> None:
    """Move folder ``src`` onto ``dst``; an old ``dst`` (a failed attempt's) is removed first."""
    if dst.exists():
        shutil.rmtree(dst)
    os.rename(src, dst)


def execute_run(task: Task, capture_output: bool = False) -> TaskResult:
    """Run ``task.config`` into a temporary sibling folder, then rename it (module docstring)."""
    from pyro_clip.pipeline.run import run

    final = Path(task.config["out"])
    final.parent.mkdir(parents=True, exist_ok=True)
    attempt = _next_attempt(final)
    tmp = final.parent / f".{final.name}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    cfg = RunConfig.from_dict({**task.config, "out": str(tmp)})
    started = time.perf_counter()
    error = None
    log = tmp / "run.log"
    log.write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S')} run {final}: attempt {attempt} on "
                   f"{socket.gethostname()} pid {os.getpid()}, {task.threads} thread(s)\n")
    with run_log(log, capture_output):
        try:
            with diagnostics_mode(task.diagnostics), torch_threads(task.threads):
                run(cfg)
        except Exception:  # one broken run must not stop a suite; it is reported
            error = traceback.format_exc()
    with open(log, "a") as fh:
        fh.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} "
                 f"{'failed: ' + error if error else 'finished'}\n")
    if error is None:
        config = read_json(tmp / "config.json")
        write_json(tmp / "config.json", {**config, "out": str(final)})
    else:  # keep only the log and the traceback: no half-written outputs under the run's name
        failed = final.parent / f".{final.name}{TMP_MARK}failed-{uuid.uuid4().hex[:8]}"
        failed.mkdir()
        shutil.move(str(tmp / "run.log"), failed / "run.log")
        atomic_write(failed / "error.txt", lambda p: p.write_text(error))
        shutil.rmtree(tmp)
        tmp = failed
    _replace_dir(tmp, final)
    (final.parent / f".{final.name}.attempts").unlink(missing_ok=True)
    return TaskResult(RUN, task.key, time.perf_counter() - started, error, attempt)


def execute_prepare(task: Task) -> TaskResult:
    """Encode (or find cached) the images of every run in ``task.run_configs``.

    The cache is per image, so images shared by several runs (the test split, overlapping
    few-shot samples) are encoded once.
    """
    from pyro_clip.pipeline.run import encode_images, get_backbone, select_images
    from pyro_clip.runtime import Runtime

    cfg = RunConfig.from_dict(task.config)
    started = time.perf_counter()
    error = None
    try:
        with torch_threads(task.threads):  # the runs' device and precision: the same features
            backbone = get_backbone(cfg.backbone, Runtime.resolve(cfg.device, cfg.precision))
            for config in task.run_configs:
                run_cfg = RunConfig.from_dict(config).validate().resolved()
                images = select_images(run_cfg)
                for part in (images.train, images.val, images.test, *images.extra.values()):
                    encode_images(run_cfg, backbone, part)
    except Exception:  # the runs that need these features report the failure in their folders
        error = traceback.format_exc()
    return TaskResult(PREPARE, task.key, time.perf_counter() - started, error)


def execute_task(task: Task, capture_output: bool = False) -> TaskResult:
    """Dispatch on ``task.kind``; what every executor calls in its workers."""
    if task.kind == PREPARE:
        return execute_prepare(task)
    result = execute_run(task, capture_output)
    sys.stdout.flush()
    return result
