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
from napari_stackmff.core.io.write import save_result
from napari_stackmff.core.io.safe_files import DIR_STAMP, MARKER, sweep_stale_temps, temp_path


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _as_dead(path: Path) -> Path:
    """Our temporary name for ``path`` as a finished (dead) process of this machine would have made it."""
    name = temp_path(path).name
    head, owner, _pid, token = name.rsplit("~", 3)
    return path.with_name(f"{head}~{owner}~{_dead_pid()}~{token}")


def _age(*paths: Path, days: float = 3) -> None:
    old = time.time() - days * 24 * 3600
    for p in paths:
        os.utime(p, (old, old), follow_symlinks=False)


def test_sweep_removes_only_our_dead_writers_temps(tmp_path: Path) -> None:
    own = temp_path(tmp_path / "a.tif")  # this process: alive
    dead = _as_dead(tmp_path / "b.tif")
    dead_dir = _as_dead(tmp_path / "c.ome.zarr")  # a zarr store of ours: stamped inside
    dead_unstamped = _as_dead(tmp_path / "d.ome.zarr")  # a folder by our name without our stamp: kept
    other_owner = tmp_path / f".e.tif.{MARKER}otherhost-0123abcd~{_dead_pid()}~0123abcd"  # cannot ask: kept
    user = [tmp_path / ".notes.part", tmp_path / "result.part", tmp_path / "a.tif",
            tmp_path / ".thesis.draft-2.part.docx",  # the look-alikes, old ones too
            tmp_path / ".b.tif.vm-123.x.part.tif"]   # the old temporary pattern: no longer trusted
    for p in (own, dead, other_owner, *user):
        p.write_bytes(b"x")
    photos = tmp_path / ".photos.archive-2019.part"
    photos.mkdir()
    (photos / "img.jpg").write_bytes(b"jpg")
    for d in (dead_dir, dead_unstamped):
        d.mkdir()
        (d / "0").write_bytes(b"x")
    (dead_dir / DIR_STAMP).write_text("ours")
    target = tmp_path / "precious.txt"
    target.write_text("keep")
    link = _as_dead(tmp_path / "f.tif")  # our pattern, but a link: never followed, never removed
    link.symlink_to(target)
    _age(own, dead, other_owner, *user, photos, dead_dir, dead_unstamped, link)
    removed = sweep_stale_temps(tmp_path)
    assert sorted(removed) == sorted([dead, dead_dir])
    for p in (own, other_owner, *user, photos / "img.jpg", dead_unstamped / "0", link, target):
        assert p.exists(), p
    assert target.read_text() == "keep"


def test_save_result_sweeps_its_folder(tmp_path: Path) -> None:
    stale = _as_dead(tmp_path / "x_all_in_focus.tif")
    stale.write_bytes(b"half a file")
    stack = np.random.default_rng(0).integers(0, 255, (3, 32, 32), dtype=np.uint8)
    save_result(fuse(stack, method="variance"), tmp_path, "x")
    assert not stale.exists() and (tmp_path / "x_all_in_focus.tif").is_file()
    assert not [p for p in tmp_path.iterdir() if MARKER in p.name]  # and leaves none of its own


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
    log = tmp_path / "killed.log"
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + 60
        # Killed once the streamed image's own temporary file is there (it lives for the whole fusion).
        while time.time() < deadline and not any(MARKER in p.name for p in out.glob(".big_fused.tif.*")):
            assert proc.poll() is None, f"finished before it could be killed: {log.read_text()[-500:]}"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    listing = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    parts = [p for p in out.glob(".*") if MARKER in p.name]
    assert parts and not (out / "big_fused.tif").exists(), listing
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    left = [p.name for p in parts if p.exists()]
    assert (out / "big_fused.tif").is_file() and not left, (left, proc.pid, sorted(p.name for p in out.iterdir()))
