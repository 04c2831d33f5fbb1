"""Issue 23: nothing the user owns is deleted or mixed up, whatever sits in the output folder.

The repros of the issue run as real `stackmff` processes on real files; disk full comes from a real
small tmpfs where this machine may mount one, and from an injected ENOSPC everywhere; permissions
are tested as a normal user would meet them, also when the tests run as root (capabilities dropped
with capsh, else the check mocked)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_stackmff import cli
from napari_stackmff.core.io import safe_files
from napari_stackmff.core.io.records import result_paths
from napari_stackmff.core.io.safe_files import MARKER


def _stack(path: Path, seed: int = 0, n: int = 5, shape: tuple[int, int] = (48, 64)) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, rng.integers(0, 255, (n, *shape), dtype=np.uint8), metadata={"axes": "ZYX"})
    return path


def _run(*args: str, cwd: Path | None = None, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "napari_stackmff.cli", "-q", *args]
    if prefix:  # e.g. capsh: run the command through a shell with fewer capabilities
        cmd = [*prefix, " ".join(f"'{c}'" for c in cmd)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _one_line(proc: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if MARKER in p.name or p.name == safe_files.LOCK_NAME]


# ------------------------------------------------------------------------ 1. records decide nothing
def test_a_record_on_disk_cannot_make_overwrite_delete_anything(tmp_path: Path) -> None:
    d = tmp_path / "D"
    _stack(d / "stack.tif")
    shutil.copy(d / "stack.tif", d / "other.tif")
    (d / "notes").mkdir()
    (d / "notes" / "n.txt").write_text("mine")
    (d / "stack_fusion.json").write_text(json.dumps({"outputs": {"x": "stack.tif", "y": "other.tif",
                                                                 "z": "notes", "w": "../stack.tif"}}))
    proc = _run("fuse", str(d / "stack.tif"), "-o", str(d), "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert (d / "stack.tif").is_file() and (d / "other.tif").is_file() and (d / "notes" / "n.txt").read_text() == "mine"
    assert (d / "stack_all_in_focus.tif").is_file() and "Traceback" not in proc.stderr


def test_stale_names_are_ours_regular_files_only(tmp_path: Path) -> None:
    """--overwrite without a z-step retires the old height map (a name of this set) — but only a
    regular file: a folder by that name is the user's and stays."""
    src, out = _stack(tmp_path / "s.tif"), tmp_path / "out"
    assert cli.main(["-q", "fuse", str(src), "-o", str(out), "--method", "variance", "--z-step", "2"]) == 0
    assert (out / "s_height_map.tif").is_file()
    assert cli.main(["-q", "fuse", str(src), "-o", str(out), "--method", "variance", "--overwrite"]) == 0
    assert not (out / "s_height_map.tif").exists()
    (out / "s_height_map.tif").mkdir()  # a user's folder that happens to have the name
    (out / "s_height_map.tif" / "keep.txt").write_text("mine")
    assert cli.main(["-q", "fuse", str(src), "-o", str(out), "--method", "variance", "--overwrite"]) == 0
    assert (out / "s_height_map.tif" / "keep.txt").read_text() == "mine"


# ------------------------------------------------------------------------ 2. the sweep
def test_the_issue_sweep_repro_keeps_user_files(tmp_path: Path) -> None:
    src, out = _stack(tmp_path / "stack.tif"), tmp_path / "out"
    (out / ".photos.archive-2019.part").mkdir(parents=True)
    (out / ".photos.archive-2019.part" / "img.jpg").write_text("x")
    (out / ".thesis.draft-2.part.docx").write_text("y")
    old = 1_500_000_000  # 2017
    for p in (out / ".photos.archive-2019.part", out / ".thesis.draft-2.part.docx"):
        os.utime(p, (old, old))
    proc = _run("fuse", str(src), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert (out / ".photos.archive-2019.part" / "img.jpg").read_text() == "x"
    assert (out / ".thesis.draft-2.part.docx").read_text() == "y"
    assert _temps(out) == []


# ------------------------------------------------------------------------ 4. sets switch whole
def _fuse_set(src: Path, out: Path, *extra: str) -> int:
    return cli.main(["-q", "fuse", str(src), "-o", str(out), "--method", "variance", *extra])


def test_disk_full_midway_leaves_the_old_set_as_it_was(tmp_path: Path, monkeypatch, capsys) -> None:
    """ENOSPC while writing the third file of the new set: one line, the old set byte for byte."""
    src, out = _stack(tmp_path / "s.tif"), tmp_path / "out"
    assert _fuse_set(src, out, "--z-step", "2") == 0
    before = _snapshot(out)
    real, calls = tifffile.imwrite, []

    def full(path, *a, **k):
        calls.append(path)
        if len(calls) == 3:
            Path(path).write_bytes(b"II*\0half")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(tifffile, "imwrite", full)
    capsys.readouterr()
    assert _fuse_set(_stack(tmp_path / "other" / "s.tif", seed=5), out, "--overwrite") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk is full" in err[0] and "was changed" in err[0], err
    assert _snapshot(out) == before and _temps(out) == []


def test_a_failed_switch_puts_the_old_set_back(tmp_path: Path, monkeypatch, capsys) -> None:
    """The rename of the new set fails half-way (the file system says no): the old files return."""
    src, out = _stack(tmp_path / "s.tif"), tmp_path / "out"
    assert _fuse_set(src, out) == 0
    before = _snapshot(out)
    real, n = os.replace, []

    def flaky(a, b, *args, **kw):
        if MARKER in Path(a).name and MARKER not in Path(b).name:  # a staged file going in
            n.append(b)
            if len(n) == 3:
                raise OSError(errno.EIO, "Input/output error", str(b))
        return real(a, b, *args, **kw)

    monkeypatch.setattr(safe_files.os, "replace", flaky)
    capsys.readouterr()
    assert _fuse_set(_stack(tmp_path / "b" / "s.tif", seed=9), out, "--overwrite") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "as they were" in err[0], err
    assert _snapshot(out) == before and _temps(out) == []


def _mount_tmpfs(where: Path, size: str) -> bool:
    if not sys.platform.startswith("linux") or shutil.which("mount") is None or os.geteuid() != 0:
        return False
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path):
    where = tmp_path / "disk"
    if not _mount_tmpfs(where, "1200k"):
        pytest.skip("cannot mount a small tmpfs here (needs root on Linux); the injected-ENOSPC tests cover it")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_real_full_disk_refuses_before_fusing_and_midway_keeps_the_old_set(tmp_path: Path, small_disk: Path,
                                                                              monkeypatch, capsys) -> None:
    out = small_disk / "out"
    src = _stack(tmp_path / "s.tif", shape=(96, 128))
    assert _fuse_set(src, out) == 0
    before = _snapshot(out)
    big = _stack(tmp_path / "big" / "s.tif", seed=3, shape=(400, 500))
    # The cheap check refuses before the work (a real process).
    proc = _run("fuse", str(big), "-o", str(out), "--method", "variance", "--overwrite")
    assert proc.returncode == 2 and "free" in _one_line(proc) and "fused" not in proc.stdout
    # With the check out of the way, the kernel's own ENOSPC midway: one line, the old set intact.
    monkeypatch.setattr(safe_files, "check_output_folder", lambda *a, **k: None)
    import napari_stackmff.core.io.write as io_write
    monkeypatch.setattr(io_write, "check_output_folder", lambda *a, **k: None)
    capsys.readouterr()
    assert _fuse_set(big, out, "--overwrite") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("disk is full" in err[0] or "quota" in err[0]), err
    assert _snapshot(out) == before and _temps(out) == []


def test_concurrent_save_results_leave_one_whole_set(tmp_path: Path) -> None:
    """Two writers of two different results under one name, at once, many times (threads: the folder
    lock is taken per open file, so it holds between threads as between processes): each time the
    folder holds one whole set."""
    import threading

    from napari_stackmff.core import fuse
    from napari_stackmff.core.io.write import save_result

    results = {tag: fuse(tifffile.imread(_stack(tmp_path / f"{tag}.tif", seed=seed)), method="variance")
               for tag, seed in (("a", 1), ("b", 2))}
    out = tmp_path / "out"
    for _ in range(8):
        errors: list[BaseException] = []

        def write(tag: str) -> None:
            try:
                save_result(results[tag], out, "s", overwrite=True, extra_info={"tag": tag})
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(t,)) for t in ("a", "b")]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert not errors, errors
        tag = json.loads((out / "s_fusion.json").read_text())["tag"]
        np.testing.assert_array_equal(tifffile.imread(out / "s_all_in_focus.tif"), results[tag].all_in_focus)
        np.testing.assert_array_equal(tifffile.imread(out / "s_focus_map.tif"), results[tag].focus_map)
        assert _temps(out) == []


@pytest.mark.slow
def test_concurrent_overwrites_leave_one_whole_set(tmp_path: Path) -> None:
    """Two `fuse --overwrite` of two different stacks named alike into one folder at once, three
    times: each time every file of the set comes from the same run."""
    a = _stack(tmp_path / "a" / "s.tif", seed=1, shape=(160, 200))
    b = _stack(tmp_path / "b" / "s.tif", seed=2, shape=(160, 200))
    ref = {}
    for src in (a, b):  # each stack's own files, fused alone by the same kind of process
        o = tmp_path / f"ref_{src.parent.name}"
        assert _run("fuse", str(src), "-o", str(o), "--method", "variance").returncode == 0
        ref[str(src.resolve())] = {k: tifffile.imread(p) for k, p in result_paths(o, "s").items()
                                   if p.suffix == ".tif" and p.exists()}
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    for _ in range(3):
        procs = [subprocess.Popen([sys.executable, "-m", "napari_stackmff.cli", "-q", "fuse", str(src), "-o",
                                   str(out), "--method", "variance", "--overwrite"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for src in (a, b)]
        for p in procs:
            _, err = p.communicate(timeout=300)
            assert p.returncode == 0, err
        info = json.loads((out / "s_fusion.json").read_text())
        winner = ref[info["inputs"][0]]
        for key, want in winner.items():
            np.testing.assert_array_equal(tifffile.imread(result_paths(out, "s")[key]), want, err_msg=key)
        assert _temps(out) == []


# ------------------------------------------------------------------------ 7. one line, checked first
def _without_dac() -> list[str] | None:
    """A prefix that runs a command as a user the file modes apply to, also under root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("capsh") is None:
        return None
    probe = subprocess.run(["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c", "true"],
                           capture_output=True)
    return ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c"] if probe.returncode == 0 else None


def test_read_only_output_is_refused_before_the_work(tmp_path: Path) -> None:
    prefix = _without_dac()
    if prefix is None:
        pytest.skip("running as root without capsh: see test_read_only_output_check_mocked")
    src, ro = _stack(tmp_path / "s.tif"), tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        proc = _run("fuse", str(src), "-o", str(ro), prefix=prefix)
        line = _one_line(proc)
        assert proc.returncode == 2 and "ro: cannot write here (permission denied)" in line
        assert "fused" not in proc.stdout and list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_read_only_output_check_mocked(tmp_path: Path, monkeypatch, capsys) -> None:
    """The same refusal where permissions cannot be dropped: the probe file cannot be created."""
    import napari_stackmff.core.fusion.dispatch as fusion

    real_open = os.open

    def no_write(path, flags, *a, **k):
        if MARKER in os.fspath(path) and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real_open(path, flags, *a, **k)

    monkeypatch.setattr(safe_files.os, "open", no_write)
    monkeypatch.setattr(fusion, "fuse", lambda *a, **k: pytest.fail("fused before checking the output"))
    assert cli.main(["-q", "fuse", str(_stack(tmp_path / "s.tif")), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write here (permission denied)" in err[0]


def test_an_unreadable_sub_folder_fails_alone_in_a_batch(tmp_path: Path) -> None:
    prefix = _without_dac()
    if prefix is None:
        pytest.skip("running as root without capsh")
    from PIL import Image

    root = tmp_path / "root"
    for name in ("s1", "s2"):
        (root / name).mkdir(parents=True)
        for i, im in enumerate(np.random.default_rng(0).integers(0, 255, (3, 40, 50), dtype=np.uint8)):
            Image.fromarray(im).save(root / name / f"{i}.png")
    (root / "s2").chmod(0)
    try:
        proc = _run("batch", str(root), "-o", str(tmp_path / "o"), "--method", "variance", prefix=prefix)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "1 fused" in proc.stdout and "FAILED s2:" in proc.stdout and "Permission denied" in proc.stdout
        assert (tmp_path / "o" / "s1_all_in_focus.tif").is_file()
        root.chmod(0)  # now the whole root: one line for fuse and for batch
        for args in (["batch", str(root), "-o", str(tmp_path / "o2")], ["fuse", str(root / "s1"), "-o",
                                                                         str(tmp_path / "o3")]):
            proc = _run(*args, prefix=prefix)
            assert proc.returncode == 2 and "Permission denied" in _one_line(proc), proc.stderr
    finally:
        root.chmod(0o755)
        (root / "s2").chmod(0o755)


def test_streamed_zarr_disk_full_is_one_line_and_replaces_a_linked_store_not_its_target(
        tmp_path: Path, monkeypatch, capsys) -> None:
    src = _stack(tmp_path / "s.tif")
    elsewhere = tmp_path / "elsewhere"
    assert cli.main(["-q", "fuse", str(src), "-o", str(elsewhere), "--stream", "zarr", "--method", "variance"]) == 0
    target = _snapshot(elsewhere / "s.ome.zarr" / "0") if (elsewhere / "s.ome.zarr" / "0").is_dir() else None
    out = tmp_path / "out"
    out.mkdir()
    (out / "s.ome.zarr").symlink_to(elsewhere / "s.ome.zarr")
    assert cli.main(["-q", "fuse", str(src), "-o", str(out), "--stream", "zarr", "--method", "variance"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["-q", "fuse", str(src), "-o", str(out), "--stream", "zarr", "--method", "variance",
                     "--overwrite"]) == 0
    assert (out / "s.ome.zarr").is_dir() and not (out / "s.ome.zarr").is_symlink()
    assert (elsewhere / "s.ome.zarr" / ".zattrs").is_file()  # the link's target is untouched
    if target is not None:
        assert _snapshot(elsewhere / "s.ome.zarr" / "0") == target
    # Disk full while the zarr chunks are written: one line, the published store as it was.
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    import zarr

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zarr, "open_group", full)
    capsys.readouterr()
    assert cli.main(["-q", "fuse", str(src), "-o", str(out), "--stream", "zarr", "--method", "variance",
                     "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "disk is full" in err[0] and "as they were" in err[0], err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
