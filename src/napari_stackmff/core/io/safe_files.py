"""Writing without ever losing a user's file: temporary names, the sweep, result sets, checks.

Three rules, each learnt from a bug that deleted users' files:

* **A temporary file is ours only by a name no user picks**: ``.<final>.~stackmff-tmp~<owner>~<pid>~<token>``
  (:func:`temp_path`). The sweep matches that pattern exactly, removes only regular files (or folders
  that carry our stamp file inside), only of this machine's processes that are gone, and never by age.
* **Nothing is deleted because a record on disk names it.** A result set is replaced by the names
  this code writes for that stack (``core.io.result_paths``), never by names read from an old
  ``_fusion.json``.
* **A set is switched in whole** (:func:`commit`): every file is written under a temporary name
  first; then, under a lock on the folder, the old files are moved aside, the new ones renamed in,
  and the old ones removed. Any failure puts the old set back.

The cheap checks (writable folder, enough free space) run before the expensive work
(:func:`check_output_folder`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

from ..errors import OutputError

PathLike = str | os.PathLike

#: The marker in every temporary name of ours: a tilde-framed word no camera, editor or user picks.
MARKER = "~stackmff-tmp~"
#: A temporary folder (zarr store) is ours only if this file is inside it (written first).
DIR_STAMP = ".stackmff-tmp-dir"
#: The folder lock of :func:`commit` (held only while a set is renamed in: milliseconds).
LOCK_NAME = ".stackmff.lock"
#: How long :func:`commit` waits for another writer's commit before giving up (a commit is renames
#: only, so anything this long is a hung process, not a slow one).
LOCK_WAIT_S = 60.0
#: Free space asked beyond the estimate (an uncompressed upper bound already): file-system metadata and
#: the JSON record, a few blocks per file.
SPACE_MARGIN_BYTES = 256 << 10

_TMP = re.compile(r"^\.(?P<name>.{1,120})\.~stackmff-tmp~(?P<owner>[A-Za-z0-9_-]{1,64})~(?P<pid>[0-9]{1,10})"
                  r"~(?P<token>[0-9a-f]{8})$", re.DOTALL)
_UMASK = os.umask(0)
os.umask(_UMASK)


def _owner() -> str:
    """This machine and PID namespace: a dead PID means a dead writer only among our own processes
    (containers sharing a folder may share a host name, not a boot id and PID namespace)."""
    host = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
    ident = host
    for f in ("/proc/sys/kernel/random/boot_id",):
        with contextlib.suppress(OSError):
            ident += Path(f).read_text().strip()
    with contextlib.suppress(OSError):
        ident += os.readlink("/proc/self/ns/pid")
    return f"{host}-{hashlib.sha1(ident.encode()).hexdigest()[:8]}"


_OWNER = _owner()


def temp_path(final: PathLike) -> Path:
    """A fresh temporary name beside ``final`` (same folder, so the rename is atomic)."""
    final = Path(final)
    return final.with_name(f".{final.name[:120]}.{MARKER}{_OWNER}~{os.getpid()}~{secrets.token_hex(4)}")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of our temporary names (any writer's)."""
    return _TMP.match(name) is not None


def make_temp_dir(final: PathLike) -> Path:
    """A temporary folder for ``final`` (a zarr store), stamped inside as ours before anything else."""
    tmp = temp_path(final)
    tmp.mkdir()
    stamp_temp_dir(tmp)
    return tmp


def stamp_temp_dir(tmp: PathLike) -> None:
    """Mark a temporary folder of ours as ours (the sweep removes no folder without this file)."""
    stamp = Path(tmp) / DIR_STAMP
    if not stamp.is_file():
        stamp.write_text(f"{_OWNER} {os.getpid()}\n")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # someone else's process (or nonsense): leave it be
        return True
    return True


def _remove_ours(path: Path) -> bool:
    """Remove one temporary entry if it provably is ours: a regular file, or a real folder with our
    stamp inside. Symlinks, devices, unstamped folders: never."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if st.st_uid != os.getuid() and os.getuid() != 0:
        return False
    if stat.S_ISREG(st.st_mode):
        path.unlink()
        return True
    if stat.S_ISDIR(st.st_mode) and (path / DIR_STAMP).is_file() and not (path / DIR_STAMP).is_symlink():
        shutil.rmtree(path)
        return True
    return False


def discard(tmp: PathLike) -> None:
    """Remove a temporary entry this process made (quietly: it is cleanup after another error)."""
    with contextlib.suppress(OSError):
        _remove_ours(Path(tmp))


_swept: set[Path] = set()


def sweep_stale_temps(folder: PathLike, *, again: bool = False) -> list[Path]:
    """Remove temporary entries a killed run of ours left in ``folder``.

    Only names matching our pattern exactly, written by a process of this machine (and PID
    namespace) that no longer runs, and only regular files or folders stamped as ours. Never by
    age: another machine's writer cannot be asked whether it lives, so its files stay (hidden).
    Once per folder per process unless ``again`` (a batch writes thousands of results into one folder).
    """
    folder = Path(folder)
    removed: list[Path] = []
    try:
        key = folder.resolve()
    except OSError:
        return removed
    if key in _swept and not again:
        return removed
    _swept.add(key)
    try:
        entries = list(folder.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TMP.match(entry.name)
        if m is None or m["owner"] != _OWNER or int(m["pid"]) == os.getpid() or _alive(int(m["pid"])):
            continue
        try:
            if _remove_ours(entry):
                removed.append(entry)
        except OSError:
            pass
    return removed


def write_error(path: PathLike, exc: OSError, unchanged: str = "") -> OutputError:
    """One line for a failed write: the path, what the system said, what to do."""
    if exc.errno is None and "requested and" in str(exc):  # numpy's short write: the file system ran out
        exc = OSError(errno.ENOSPC, str(exc))
    what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
            errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied"}.get(exc.errno or 0, exc.strerror or str(exc))
    hint = {errno.ENOSPC: "free some space or choose another output (-o)",
            errno.EDQUOT: "free some space or choose another output (-o)"}.get(exc.errno or 0,
                                                                            "choose another output folder (-o)")
    return OutputError(f"{path}: cannot write here ({what}); {hint}.{(' ' + unchanged) if unchanged else ''}")


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` then rename onto ``path``, so a crash never leaves half a file; a failed
    write (disk full, permission) becomes one :class:`OutputError` line and leaves ``path`` as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(path.parent, exc) from None
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666 & ~_UMASK)
        os.close(fd)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        discard(tmp)
        ours = is_temp_name(path.name)  # staging a set: the caller says what is unchanged
        raise write_error(path.parent if ours else path, exc, "" if ours else f"{path.name} is unchanged.") from None
    except BaseException:
        discard(tmp)
        raise
    return path


# ------------------------------------------------------------------------------------ checks
def check_output_folder(folder: PathLike, need_bytes: int = 0) -> None:
    """Before the expensive work: ``folder`` is (or can be made) a folder we can write, with room for
    about ``need_bytes``. Writability is tried, not guessed (``os.access`` says yes to root on a
    read-only mount)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: is a file, not a folder; -o names the folder the results go to.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None
    probe = temp_path(folder / "write-probe")
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.close(fd)
    except OSError as exc:
        raise write_error(folder, exc) from None
    finally:
        discard(probe)
    if need_bytes:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return
        if free < need_bytes + SPACE_MARGIN_BYTES:
            raise OutputError(f"{folder}: the results need about {_mb(need_bytes + SPACE_MARGIN_BYTES)} and "
                              f"only {_mb(free)} is free; free some space or choose another output (-o).")


def _mb(n: int) -> str:
    if n < 2**20:
        return f"{n / 2**10:.0f} KB"
    return f"{n / 2**20:.0f} MB" if n < 2**30 else f"{n / 2**30:.1f} GB"


# ------------------------------------------------------------------------------------ result sets
@contextlib.contextmanager
def folder_lock(folder: PathLike, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold the folder's commit lock: ``fcntl.flock`` on :data:`LOCK_NAME` (released by the kernel if
    we die, so a killed run never leaves the folder locked). The file is removed on release, so no
    lock file stays behind; a writer that locked a file just unlinked by its holder sees that the name
    now points elsewhere and tries again. Where there is no ``fcntl`` (Windows), no lock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    path = Path(folder) / LOCK_NAME
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_RDWR | getattr(os, "O_NOFOLLOW", 0), 0o600)
        except OSError as exc:
            raise write_error(folder, exc) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() > deadline:
                raise OutputError(f"{folder}: another stackmff run has held this folder for {wait_s:.0f} s; "
                                  "wait for it to finish or choose another output (-o).") from None
            time.sleep(0.02)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(path, follow_symlinks=False).st_ino
        except OSError:
            same = False
        if same:
            break
        os.close(fd)  # locked a file its holder has just removed: take the current one
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still holding the lock: nobody else holds this file
        os.close(fd)


def _kind(path: Path) -> str | None:
    """'file', 'dir', 'link', 'other' or None (missing), without following links."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISLNK(st.st_mode):
        return "link"
    return "other"


def commit(staged: Mapping[Path, Path], *, retire: Iterable[Path] = (), overwrite: bool = False,
           replaceable: Callable[[Path], bool] | None = None) -> None:
    """Switch a written set in whole: each ``staged[final] = tmp`` is renamed onto ``final``, and
    each ``retire`` path (a name of this set the new run does not write) is removed, all or nothing.

    ``retire`` paths are removed only when they are regular files. An existing ``final`` is replaced
    only if ``overwrite`` and it is a file or link (or a folder that ``replaceable`` accepts, e.g. an
    OME-Zarr of ours); otherwise nothing changes and :class:`OutputError` says why. The temporaries
    are removed on every failure.
    """
    finals = list(staged)
    if not finals:
        return
    folder = finals[0].parent
    moved: list[tuple[Path, Path]] = []  # (original, backup)
    placed: list[Path] = []
    try:
        with folder_lock(folder):
            for f in finals:  # decided inside the lock: another writer may have just committed
                kind = _kind(f)
                if kind is None:
                    continue
                if not overwrite:
                    raise OutputError(f"{f}: already exists; pass --overwrite (overwrite=True) to replace the "
                                      "results, or choose another output.")
                if kind == "other" or (kind == "dir" and not (replaceable and replaceable(f))):
                    raise OutputError(f"{f}: exists and is not a result file of ours; move it away or choose "
                                      "another output (-o).")
            old = [f for f in finals if _kind(f) is not None] + [r for r in retire if _kind(r) == "file"]
            try:
                for f in old:
                    backup = temp_path(f)
                    os.rename(f, backup)
                    moved.append((f, backup))
                for f in finals:
                    os.replace(staged[f], f)
                    placed.append(f)
            except OSError as exc:
                _roll_back(placed, moved)
                raise write_error(folder, exc, "The earlier results are as they were.") from None
    except BaseException:
        for f in finals:
            if f not in placed:
                discard(staged[f])
        raise
    for _, backup in moved:  # the old set, now replaced
        _drop_backup(backup)


def _roll_back(placed: list[Path], moved: list[tuple[Path, Path]]) -> None:
    for f in placed:
        with contextlib.suppress(OSError):
            _drop_backup_path(f)
    for original, backup in reversed(moved):
        with contextlib.suppress(OSError):
            os.rename(backup, original)


def _drop_backup_path(path: Path) -> None:
    kind = _kind(path)
    if kind in ("file", "link"):
        path.unlink()
    elif kind == "dir":
        shutil.rmtree(path)


def _drop_backup(backup: Path) -> None:
    """Remove an old result moved aside by :func:`commit` (its name is a temporary of this process)."""
    with contextlib.suppress(OSError):
        _drop_backup_path(backup)
