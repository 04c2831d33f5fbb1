"""Batch next to our own outputs: results written beside the stacks (``-o`` = the input's folder)
or an earlier result folder inside the root are recognised by their ``<name>_fusion.json`` and
never fused as stacks; ``stackmff fuse`` warns when it writes next to its inputs."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_stackmff import cli, load_stack
from napari_stackmff.core.batch.jobs import beside_inputs
from napari_stackmff.core.io.discover import survey
from napari_stackmff.core.io.read import input_files
from napari_stackmff.core.io.records import result_paths

from conftest import summary_counts  # noqa: E402


@pytest.fixture(autouse=True)
def _restore_warning_format(monkeypatch):
    """cli.main() installs its own one-line warning format; keep that from leaking into other tests."""
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def tiff_root(tmp_path, make_synth, write_png_slices):
    """A folder of two TIFF stacks and one slice sub-folder."""
    root = tmp_path / "data"
    root.mkdir()
    tifffile.imwrite(root / "a.tif", make_synth(10, 6, 96, "natural", "objects", "uint16").slices,
                     photometric="minisblack")
    tifffile.imwrite(root / "b.tif", make_synth(11, 5, 96, "tissue", "objects", "uint8").slices,
                     photometric="minisblack")
    write_png_slices(root / "scene", make_synth(0, 6, 96, "natural", "plane", "uint8").slices)
    return root


def test_fuse_into_the_tiffs_folder_warns_and_a_later_batch_skips_the_results(tmp_path, capsys, tiff_root):
    with pytest.warns(UserWarning, match="next to the input stack"):
        code, _, err = _run(capsys, "fuse", tiff_root / "a.tif", "-o", tiff_root, "--method", "variance")
    assert code == 0, err
    written = json.loads(result_paths(tiff_root, "a")["info"].read_text())["outputs"]
    assert {"a_all_in_focus.tif", "a_focus_map.tif", "a_confidence.tif"} <= set(written.values())

    out = tmp_path / "out"
    code, stdout, err = _run(capsys, "batch", tiff_root, "-o", out, "--method", "variance")
    assert code == 0, stdout + err
    assert summary_counts(stdout) == (3, 0, 0)  # a, b and scene: every real stack, no result taken for one
    assert "FAILED" not in stdout and "holds a single image" not in stdout
    skipped = next(line for line in stdout.splitlines() if line.startswith("skipping"))
    assert "a_all_in_focus.tif" in skipped and "a.tif," not in skipped
    for name in ("a", "b", "scene"):
        assert result_paths(out, name)["info"].is_file()


def test_batch_writing_into_its_own_root_resumes_cleanly(capsys, tiff_root):
    code, stdout, err = _run(capsys, "batch", tiff_root, "-o", tiff_root, "--method", "variance")
    assert code == 0 and summary_counts(stdout) == (3, 0, 0), stdout + err
    code, stdout, err = _run(capsys, "batch", tiff_root, "-o", tiff_root, "--method", "variance")
    assert code == 0 and summary_counts(stdout) == (0, 3, 0), stdout + err


def test_an_earlier_result_folder_inside_root_is_not_a_stack(tmp_path, capsys, tiff_root):
    code, stdout, _ = _run(capsys, "batch", tiff_root, "-o", tiff_root / "results_v1", "--method", "variance")
    assert code == 0 and summary_counts(stdout) == (3, 0, 0)
    # A second run with another output folder meets results_v1 (PNG previews and TIFFs) in the root.
    jobs, results = survey(tiff_root, exclude=[tmp_path / "out2"])
    assert sorted(j.name for j in jobs) == ["a", "b", "scene"]
    assert [p.name for p in results] == ["results_v1"]
    code, stdout, err = _run(capsys, "batch", tiff_root, "-o", tmp_path / "out2", "--method", "variance")
    assert code == 0 and summary_counts(stdout) == (3, 0, 0), stdout + err


def test_results_next_to_a_tiff_in_its_own_folder_do_not_join_the_stack(tmp_path, capsys, make_synth):
    """A folder holding one TIFF stack is that stack, also after results were written beside it."""
    s = make_synth(12, 5, 64, "natural", "objects", "uint16")
    folder = tmp_path / "run1"
    folder.mkdir()
    tifffile.imwrite(folder / "z.tif", s.slices, photometric="minisblack")
    with pytest.warns(UserWarning, match="next to the input stack"):
        assert _run(capsys, "fuse", folder, "-o", folder, "--method", "variance")[0] == 0
    stack = load_stack(folder)
    assert input_files(stack) == [folder / "z.tif"]
    np.testing.assert_array_equal(stack.data, s.slices)


def test_a_single_image_tiff_that_is_not_ours_still_fails_clearly(tmp_path, capsys, tiff_root):
    tifffile.imwrite(tiff_root / "photo.tif", np.zeros((32, 32), np.uint8), photometric="minisblack")
    code, stdout, _ = _run(capsys, "batch", tiff_root, "-o", tmp_path / "out", "--method", "variance")
    assert code == 1 and summary_counts(stdout) == (3, 0, 1)
    assert "FAILED photo" in stdout and "holds a single image" in stdout


def test_batch_include_reaches_every_folder_stack(tmp_path, capsys, tiff_root):
    from PIL import Image

    Image.fromarray(np.zeros((96, 96), np.uint8)).save(tiff_root / "scene" / "reference.png")
    with pytest.warns(UserWarning, match=r"left out 1 other image: reference\.png"):
        code, stdout, err = _run(capsys, "batch", tiff_root, "-o", tmp_path / "o1", "--method", "variance")
    assert code == 0, stdout + err
    info = json.loads(result_paths(tmp_path / "o1", "scene")["info"].read_text())
    assert info["n_slices"] == 6 and not any("reference" in p for p in info["inputs"])
    code, stdout, err = _run(capsys, "batch", tiff_root, "-o", tmp_path / "o2", "--method", "variance",
                             "--include", "*.png")
    assert code == 0, stdout + err
    info = json.loads(result_paths(tmp_path / "o2", "scene")["info"].read_text())
    assert info["n_slices"] == 7 and Path(info["inputs"][-1]).name == "reference.png"


def test_beside_inputs(tmp_path):
    folder = tmp_path / "slices"
    folder.mkdir()
    files = [folder / "1.png", folder / "2.png"]
    assert beside_inputs(tmp_path, folder, files) == tmp_path.resolve()  # the slice folder's parent
    assert beside_inputs(tmp_path / "out", folder, files) is None
    assert beside_inputs(tmp_path, tmp_path / "s.tif", [tmp_path / "s.tif"]) == tmp_path.resolve()
    assert beside_inputs(tmp_path / "out", tmp_path / "s.tif", [tmp_path / "s.tif"]) is None


def test_batch_reads_the_pair_layout(tmp_path, make_synth, capsys):
    """root/A/1.png + root/B/1.png (the published datasets' layout) fuse as pairs, matched by name; a name
    missing from B is left out with a warning, and a re-run skips the finished pairs."""
    import warnings

    from PIL import Image

    from napari_stackmff.cli import main
    from napari_stackmff.core.io.discover import discover_stacks
    from napari_stackmff.core.batch.jobs import run_batch
    from napari_stackmff.core.fusion.dispatch import fuse

    root = tmp_path / "pairs"
    for letter in "AB":
        (root / letter).mkdir(parents=True)
    stacks = {}
    for k in (1, 2, 10):
        s = make_synth(seed=30 + k, n=2, size=64)
        stacks[k] = s
        for letter, sl in zip("AB", s.slices):
            Image.fromarray(sl).save(root / letter / f"{k}.png")
    Image.fromarray(stacks[1].slices[0]).save(root / "A" / "lonely.png")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        jobs = discover_stacks(root)
    assert [j.name for j in jobs] == ["1", "2", "10"]
    assert any("lonely" in str(w.message) for w in caught)
    assert [p.parent.name for p in jobs[0].input_files()] == ["A", "B"]
    summary = run_batch(jobs, tmp_path / "out", method="wavelet")
    assert sorted(summary.done) == ["1", "10", "2"]
    import tifffile

    got = tifffile.imread(tmp_path / "out" / "10_all_in_focus.tif")
    np.testing.assert_array_equal(got, fuse(stacks[10].slices, method="wavelet").all_in_focus)
    for _ in range(2):
        assert main(["-q", "batch", str(root), "-o", str(tmp_path / "cli"), "--method", "wavelet"]) == 0
    assert "0 fused, 3 skipped" in capsys.readouterr().out
