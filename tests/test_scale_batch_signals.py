"""A batch with --workers dies cleanly (issue 11, item 4): killing the batch process (SIGKILL, SIGTERM)
takes its workers with it, and Ctrl-C cancels the queue at once; nothing half-written is left under a
result name. Real processes and signals, bounded in time; Linux (/proc) only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import tifffile

pytestmark = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")


def _marked(mark: str) -> list[int]:
    """Processes whose environment carries ``mark``: the batch and everything it started."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if mark.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _results(out: Path) -> list[Path]:
    return sorted(out.glob("*_fusion.json")) if out.is_dir() else []


def _wait(cond, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


#: Stacks in the queue: enough that it cannot drain before the Ctrl-C arrives (16 take about 1 s here).
STACKS = 48


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    rng = np.random.default_rng(0)
    for i in range(STACKS):
        tifffile.imwrite(folder / f"s{i:02d}.tif", rng.integers(0, 60000, (8, 384, 384), dtype=np.uint16),
                         photometric="minisblack", metadata={"axes": "ZYX"})
    return folder


def _start(root: Path, out: Path) -> tuple[subprocess.Popen, str]:
    mark = f"STACKMFF_TEST_{uuid.uuid4().hex}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", mark: "1"}
    cmd = [sys.executable, "-m", "napari_stackmff.cli", "-q", "batch", str(root), "-o", str(out), "--workers", "2",
           "--method", "wavelet"]
    # A child inherits an ignored SIGINT, and Python then leaves it ignored: earlier tests in this process (Qt)
    # can leave it so, and the batch would never see the Ctrl-C (the full suite once ran all 48 stacks to exit 0).
    saved = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, saved)
    return proc, mark


def _whole(out: Path) -> None:
    """Every result set that exists is complete: its JSON's files are all there."""
    for info in _results(out):
        for name in json.loads(info.read_text())["outputs"].values():
            assert (out / name).is_file(), name


@pytest.mark.parametrize("sig", [pytest.param(signal.SIGKILL, marks=pytest.mark.slow), signal.SIGTERM])
def test_killing_the_batch_takes_its_workers_along(root: Path, tmp_path: Path, sig: int) -> None:
    out = tmp_path / "out"
    proc, mark = _start(root, out)
    try:
        assert _wait(lambda: _results(out), 120), proc.communicate()[1].decode()[-2000:]
        assert len(_marked(mark)) >= 3  # the batch, the fork server and two workers
        os.kill(proc.pid, sig)
        proc.wait(timeout=10)
        assert _wait(lambda: not _marked(mark), 10), f"left running: {_marked(mark)}"
        done = len(_results(out))
        time.sleep(1.5)
        assert len(_results(out)) == done < STACKS  # nobody goes on writing results
        _whole(out)
    finally:
        for pid in _marked(mark):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow  # issue 24: queues 48 stacks; stopping a batch: test_killing_the_batch_takes_its_workers_along
def test_ctrl_c_cancels_the_queue_at_once(root: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc, mark = _start(root, out)
    try:
        assert _wait(lambda: _results(out), 120), proc.communicate()[1].decode()[-2000:]
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole process group
        t0 = time.time()
        proc.wait(timeout=15)
        assert time.time() - t0 < 5 and proc.returncode == 130
        assert "interrupted" in proc.stderr.read().decode()
        assert _wait(lambda: not _marked(mark), 10), f"left running: {_marked(mark)}"
        done = len(_results(out))
        assert done < STACKS
        time.sleep(1.0)
        assert len(_results(out)) == done
        _whole(out)
        # The next run finishes the rest and leaves no temporary file behind.
        rerun = subprocess.run([sys.executable, "-m", "napari_stackmff.cli", "-q", "batch", str(root), "-o", str(out),
                                "--method", "variance"], capture_output=True, text=True, timeout=300,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert rerun.returncode == 0, rerun.stderr
        assert not [p for p in out.iterdir() if "part" in p.name]
    finally:
        for pid in _marked(mark):
            os.kill(pid, signal.SIGKILL)
