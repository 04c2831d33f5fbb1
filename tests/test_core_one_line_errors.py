"""Errors that used to escape the one-line promise (issue 11, item 6): each is now one line naming
the file or setting and the way out, with exit code 2 from the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_stackmff.cli import main
from napari_stackmff.core import fuse
from napari_stackmff.core.errors import StackError


@pytest.fixture
def stack_tif(tmp_path: Path) -> Path:
    path = tmp_path / "s.tif"
    data = np.random.default_rng(0).integers(0, 255, (4, 48, 48), dtype=np.uint8)
    tifffile.imwrite(path, data, photometric="minisblack", metadata={"axes": "ZYX"})
    return path


def _one_line(capsys, *words: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err
    return err[0]


@pytest.mark.parametrize("window, words", [("100001", ("larger than the 48x48 image", "at most 47")),
                                           ("8", ("odd",)), ("0", ("positive odd",))])
def test_window_is_bounded_and_odd(stack_tif: Path, tmp_path: Path, capsys, window: str, words) -> None:
    assert main(["-q", "fuse", str(stack_tif), "-o", str(tmp_path / "o"), "--method", "variance", "--window",
                 window]) == 2
    _one_line(capsys, *words)


@pytest.mark.parametrize("stream", [[], ["--stream", "tiff"]])
def test_output_naming_an_existing_file(stack_tif: Path, tmp_path: Path, capsys, stream) -> None:
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert main(["-q", "fuse", str(stack_tif), "-o", str(target), "--method", "variance", *stream]) == 2
    _one_line(capsys, str(target), "is a file, not a folder")
    assert target.read_text() == "mine"


def test_resume_from_a_bad_checkpoint(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    args = ["-q", "train", "--epochs", "1", "--steps", "1", "--val-stacks", "1", "--pool-size", "1", "--crop", "32",
            "--device", "cpu", "--resume", "--checkpoint"]
    assert main([*args, str(bad)]) == 2
    _one_line(capsys, str(bad), "cannot resume")
    weights_only = Path(__file__).resolve().parents[1] / "weights" / "stackmff_v2.pt"
    if weights_only.exists():
        assert main([*args, str(weights_only)]) == 2
        _one_line(capsys, "not a training checkpoint", "--init-weights")


def test_mismatched_arrays_name_the_slice() -> None:
    with pytest.raises(StackError, match=r"slice 2 of the list is \(40, 40\), slice 0 is \(32, 32\)"):
        fuse([np.zeros((32, 32)), np.zeros((32, 32)), np.zeros((40, 40))], method="variance")


def test_weights_with_a_classical_method_are_refused(stack_tif: Path, tmp_path: Path, capsys) -> None:
    assert main(["-q", "fuse", str(stack_tif), "-o", str(tmp_path / "o"), "--method", "wavelet", "--weights",
                 "x.pt"]) == 2
    _one_line(capsys, "does not take 'weights'")


def test_results_too_big_for_memory_are_refused_up_front() -> None:
    """A huge input read tile by tile still returns whole images: say so before any work, with the
    way out (streaming to disk), instead of a MemoryError part way."""
    from napari_stackmff.core.errors import StackMFFError

    row = (np.arange(400_000) % 7).astype(np.uint16)  # not blank (a blank stack is refused first)
    huge = np.broadcast_to(row, (3, 400_000, 400_000))  # no memory behind it
    with pytest.raises(StackMFFError, match=r"results need \d+\.\d GiB.*--stream"):
        fuse(huge, method="variance")
