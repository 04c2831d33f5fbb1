"""Nothing half-written survives a kill for long: temporary files of ours that a killed run left are
swept by the next run into the same folder; other files, and those of live writers, are never touched."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_stackmff.core import fuse
from napari_stackmff.core.io import part_prefix, save_result, sweep_stale_parts


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_sweep_removes_only_our_dead_writers_parts(tmp_path: Path) -> None:
    own = tmp_path / (part_prefix(tmp_path / "a.tif") + "x1.part.tif")  # this process: alive
    host_pid = part_prefix(tmp_path / "a.tif").split(".")[-2]
    dead = tmp_path / f".b.tif.{host_pid.rsplit('-', 1)[0]}-{_dead_pid()}.x2.part.tif"
    dead_dir = tmp_path / f".c.ome.zarr.{host_pid.rsplit('-', 1)[0]}-{_dead_pid()}.part"
    other_host_fresh = tmp_path / ".d.tif.otherhost-1.part"
    other_host_old = tmp_path / ".e.tif.otherhost-1.part"
    not_ours = [tmp_path / ".notes.part", tmp_path / "result.part", tmp_path / "a.tif"]
    for p in (own, dead, other_host_fresh, other_host_old, *not_ours):
        p.write_bytes(b"x")
    dead_dir.mkdir()
    (dead_dir / "0").write_bytes(b"x")
    old = time.time() - 2 * 24 * 3600
    os.utime(other_host_old, (old, old))
    removed = sweep_stale_parts(tmp_path)
    assert sorted(removed) == sorted([dead, dead_dir, other_host_old])
    assert own.exists() and other_host_fresh.exists() and all(p.exists() for p in not_ours)


def test_save_result_sweeps_its_folder(tmp_path: Path) -> None:
    stale = tmp_path / f".x_all_in_focus.tif.{part_prefix(tmp_path).split('.')[-2].rsplit('-', 1)[0]}-{_dead_pid()}.q.part.tif"
    stale.write_bytes(b"half a file")
    stack = np.random.default_rng(0).integers(0, 255, (3, 32, 32), dtype=np.uint8)
    save_result(fuse(stack, method="variance"), tmp_path, "x")
    assert not stale.exists() and (tmp_path / "x_all_in_focus.tif").is_file()


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_killed_streamed_fusion_leaves_no_final_file_and_the_next_run_cleans_up(tmp_path: Path) -> None:
    """A real `stackmff fuse --stream tiff` killed with SIGKILL mid-write: no truncated result under a
    final name; the next run into the folder removes the orphaned temporary file and succeeds."""
    src = tmp_path / "big.tif"
    rng = np.random.default_rng(1)
    tifffile.imwrite(src, rng.integers(0, 60000, (12, 768, 768), dtype=np.uint16), metadata={"axes": "ZYX"})
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "napari_stackmff.cli", "-q", "fuse", str(src), "-o", str(out), "--method",
           "variance", "--stream", "tiff", "--tile", "192"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not any(p.name.endswith("part") for p in out.glob(".*")):
            assert proc.poll() is None, "finished before it could be killed: make the input bigger"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    parts = [p for p in out.glob(".*") if "part" in p.name]
    assert parts and not (out / "big_fused.tif").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (out / "big_fused.tif").is_file() and not any(p.exists() for p in parts)
