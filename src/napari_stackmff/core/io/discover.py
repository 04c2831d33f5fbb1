"""Finding the stacks under a folder: each sub-folder of slices, each TIFF, or the published
datasets' pair layout (root/A/1.png + root/B/1.png), never our own earlier results.

Batch runs and training on a folder of stacks both start here.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ..errors import StackMFFError
from .read import IMAGE_SUFFIXES, TIFF_SUFFIXES, list_slice_files
from .records import recorded_outputs, stack_name


@dataclass(frozen=True)
class StackJob:
    """One stack to fuse: a name for its outputs, where its pixels are, and (for a folder) which
    files are slices when not the folder's naming pattern (``include``, see ``load_stack``)."""

    name: str
    source: Path
    include: str | None = None
    files: tuple[Path, ...] = ()  # the sources of one pair (or group) of a pair layout, in order

    def input_files(self) -> list[Path]:
        if self.files:
            return list(self.files)
        if self.source.is_dir():
            return list_slice_files(self.source, warn=False, include=self.include)
        return [self.source]

    def load(self) -> Any:
        from .read import load_stack

        if self.files:
            return load_stack(list(self.files))
        return load_stack(self.source, include=self.include if self.source.is_dir() else None)


def survey(root: str | Path, *, exclude: Iterable[str | Path] = (),
           include: str | None = None) -> tuple[list[StackJob], list[Path]]:
    """(stacks under ``root``, our own earlier results there that look like stacks but are not).

    Stacks are each sub-folder of slices (root/scene/1.png...) and each TIFF file, or, in the pair
    layout of the published datasets (root/A/1.png, root/B/1.png...), each name in A and B. Results are
    the TIFFs a ``<name>_fusion.json`` in ``root`` lists, and sub-folders holding nothing but
    listed results (the output folder of an earlier batch). ``exclude``: further paths that are
    not stacks (e.g. this run's output folder). ``include`` is passed to every folder stack.
    """
    root = Path(root)
    if not root.is_dir():
        raise StackMFFError(f"{root}: not a folder; batch takes a folder of stacks (root/scene/1.png, or TIFFs).")
    try:
        entries = sorted(root.iterdir())
    except OSError as exc:
        raise StackMFFError(f"{root}: cannot read this folder ({exc.strerror or exc}).") from None
    skip = {Path(e).resolve() for e in exclude}
    pairs = pair_jobs(root)
    if pairs:
        return pairs, []
    _refuse_output_in_a_stack(root, skip)
    ours = recorded_outputs(root)
    jobs: list[StackJob] = []
    results: list[Path] = []
    for p in entries:
        if p.name.startswith(".") or p.resolve() in skip:
            continue
        if p.is_dir() and not _readable(p):
            jobs.append(StackJob(p.name, p, include))  # fails alone, with its reason, when its turn comes
        elif p.is_dir() and _holds_images(p):
            if list_slice_files(p, warn=False):  # empty when every image is a listed result
                jobs.append(StackJob(p.name, p, include))
            else:
                results.append(p)
        elif p.is_file() and p.suffix.lower() in TIFF_SUFFIXES:
            if p.name in ours:
                results.append(p)
            else:
                jobs.append(StackJob(stack_name(p), p))
    if not jobs:
        raise StackMFFError(f"{root}: found no stacks (sub-folders of slices or TIFF files).")
    return unique_names(jobs), results


#: Folder names of the pair layout of the published multi-focus datasets: root/A/1.png + root/B/1.png
#: fuse into one result "1"; further sources as root/C/1.png... (multi-focus groups).
PAIR_FOLDERS = ("A", "B", "C", "D", "E", "F", "G", "H")


def pair_jobs(root: Path) -> list[StackJob]:
    """One job per image name found in every source folder of a pair layout (root/A, root/B[, root/C...]).

    Empty when ``root`` is not such a layout (no A and B folders). Names present in only some folders
    are left out with a warning naming them.
    """
    import warnings

    dirs = []
    for letter in PAIR_FOLDERS:
        d = next((q for q in (root / letter, root / letter.lower()) if q.is_dir()), None)
        if d is None:
            break
        dirs.append(d)
    if len(dirs) < 2:
        return []
    try:
        listings = [{q.stem: q for q in sorted(d.iterdir()) if q.suffix.lower() in IMAGE_SUFFIXES
                     and not q.name.startswith(".")} for d in dirs]
    except OSError as exc:
        raise StackMFFError(f"{exc.filename}: cannot read this folder of the pair layout ({exc.strerror}).") from None
    common = set(listings[0]).intersection(*listings[1:])
    lonely = sorted(set().union(*listings) - common)
    if lonely:
        warnings.warn(f"{root}: {len(lonely)} image name(s) are not in every one of "
                      f"{', '.join(d.name for d in dirs)} and are left out: {', '.join(lonely[:5])}"
                      f"{'...' if len(lonely) > 5 else ''}", stacklevel=2)
    if not common:
        raise StackMFFError(f"{root}: a pair layout ({', '.join(d.name + '/' for d in dirs)}) with no image name "
                            "in all of its folders; pairs are matched by name (A/1.png with B/1.png).")
    from .read import natural_key

    return [StackJob(stem, listings[0][stem], files=tuple(lst[stem] for lst in listings))
            for stem in sorted(common, key=lambda stem: natural_key(Path(stem)))]


def _refuse_output_in_a_stack(root: Path, outputs: set[Path]) -> None:
    """An output folder that is (or is inside) one of ROOT's slice folders would hide that stack and
    mix results into its slices: refuse it. ROOT itself, or a new or results-only folder in it, is fine."""
    top = root.resolve()
    for out in outputs:
        if out == top or top not in out.parents:
            continue
        child = top / out.relative_to(top).parts[0]
        if child.is_dir() and _holds_images(child) and list_slice_files(child, warn=False):
            where = "is the stack folder" if out == child else f"is inside the stack folder {child}"
            raise StackMFFError(f"{out}: {where} (it holds slices); write the results to another folder (a new "
                                "one in ROOT is fine).")


def unique_names(jobs: list[StackJob]) -> list[StackJob]:
    """Give stacks that would share a result name their own: a folder keeps its name, a file that
    collides takes its ending too (folder ``a`` and ``a.tif`` -> ``a`` and ``a_tif``). Names depend
    only on the stacks' own names, so re-runs find their earlier results."""
    count = Counter(j.name for j in jobs)
    out = []
    for j in jobs:
        if count[j.name] > 1 and j.source.is_file():
            ending = j.source.name[len(j.name):].lstrip(".").replace(".", "_").lower()
            j = dataclasses.replace(j, name=f"{j.name}_{ending}")
        out.append(j)
    names = Counter(j.name for j in out)
    clash = [n for n, c in names.items() if c > 1]
    if clash:  # e.g. files "a.tif" and "a.TIF"
        raise StackMFFError(f"{clash[0]!r}: several stacks would write results under this name; rename one.")
    return out


def _readable(folder: Path) -> bool:
    try:
        os.listdir(folder)
    except OSError:
        return False
    return True


def _holds_images(folder: Path) -> bool:
    return any(q.suffix.lower() in IMAGE_SUFFIXES and not q.name.startswith(".") for q in folder.iterdir())


def discover_stacks(root: str | Path, *, exclude: Iterable[str | Path] = (),
                    include: str | None = None) -> list[StackJob]:
    """Stacks under ``root`` (see :func:`survey`); our own earlier results are left out silently."""
    return survey(root, exclude=exclude, include=include)[0]
