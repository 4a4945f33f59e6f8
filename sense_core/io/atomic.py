"""Write outputs so that a failure never leaves a half-written file or folder behind.

Everything is written to a temporary sibling first and renamed into place at the end
(``os.replace`` is atomic within one file system). Temporaries are named
``.<name>.<pid>.<random>.part``: an error or a SIGTERM removes them at once; after a SIGKILL
(which no program can catch) the next write of the same output removes the ones whose process
is gone. An output is therefore either complete or absent, never partial.

Two SENSE processes never write one output at the same time: every writer holds a lock on its
output (:func:`output_lock`, ``fcntl.flock`` on a hidden ``.<name>.lock`` file beside it) from
the "already exists" check to the final rename, and a second writer stops at once with "another
SENSE process is writing <path>" instead of replacing or mixing the first one's files.
:func:`check_output_outside_inputs` refuses an output that is, is inside, or would replace an
input, before any work.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from sense_core.errors import SenseError, SignalGate, WriteError

try:
    import fcntl
except ImportError:  # not POSIX: outputs are written without a lock
    fcntl = None  # type: ignore[assignment]


def _check_parent(path: Path) -> None:
    parent = path.parent
    if not parent.is_dir():
        raise SenseError(f"{path}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise SenseError(f"{path}: the folder {parent} is not writable")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``path`` left by writers that were killed (their process is
    gone); return what was removed. Temporaries of running writers are kept. A folder that a
    killed writer had moved aside to replace it comes back if nothing replaced it."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[^.]+\.(part|old)$")
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or _process_alive(int(match.group(1))):
            continue
        stale = Path(entry.path)
        try:
            kept = stale / path.name
            if match.group(2) == "old" and not path.exists() and kept.exists():
                os.replace(kept, path)  # killed between the two renames: put the old one back
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(stale)
            else:
                stale.unlink()
        except OSError:
            continue
        removed.append(stale)
    return removed


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def _write_error(path: Path, exc: OSError, existed: bool) -> WriteError:
    reason = exc.strerror or str(exc)
    kept = f"the previous {path.name} is unchanged" if existed else "nothing was written"
    return WriteError(f"{path}: not written ({reason}); {kept}")


# --------------------------------------------------------------------------- one writer per output
LOCK_SUFFIX = ".lock"
# (process, lock file) -> [owning thread, fd, depth]; the process id keeps a forked child (which
# inherits this dict and, for the forking thread, its thread id) from taking the parent's lock
_held: dict[tuple[int, str], list[int]] = {}
_held_guard = threading.Lock()


def lock_file(path: str | os.PathLike) -> Path:
    """The hidden file whose lock guards the output ``path``: ``.<name>.lock`` beside it (in
    its folder after symbolic links: the entry that the writer replaces)."""
    target = Path(path)
    target = (
        target.resolve()
        if target.name in ("", ".", "..")
        else target.parent.resolve() / target.name
    )
    if not target.name:  # the file-system root
        return target / f".sense{LOCK_SUFFIX}"
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


def _busy(path: Path, lock: Path) -> SenseError:
    holder = ""
    with contextlib.suppress(OSError, ValueError):
        pid = int(lock.read_text(encoding="ascii").strip() or "0")
        holder = f" (pid {pid})" if pid else ""
    return SenseError(
        f"{path}: another SENSE process{holder} is writing {path}; try again when it has finished"
    )


def _open_lock(lock: Path) -> int | None:
    """An open descriptor of ``lock`` (created if needed), or None where none can be made
    (a read-only folder: the write itself will say so)."""
    for flags in (os.O_RDWR | os.O_CREAT, os.O_RDONLY):
        try:
            return os.open(lock, flags | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError:
            continue
    return None


def _acquire(path: Path, lock: Path) -> int | None:
    """Lock ``lock`` without waiting; its descriptor, None where locking is not possible, or a
    :class:`SenseError` when another process holds it."""
    for _ in range(20):
        fd = _open_lock(lock)
        if fd is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise _busy(path, lock) from None
            return None  # a file system without locks (ENOLCK): write as before
        try:
            current, mine = os.stat(lock), os.fstat(fd)
            if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
                return fd
        except FileNotFoundError:
            pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # the previous holder removed that file after we opened it: lock the new one
    raise _busy(path, lock)


def _release(lock: Path, fd: int) -> None:
    # remove the file while still holding it: a process that opened it meanwhile sees, once it
    # has the lock, that the name no longer refers to its file and locks a new one
    with contextlib.suppress(OSError):
        current, mine = os.stat(lock), os.fstat(fd)
        if (current.st_dev, current.st_ino) == (mine.st_dev, mine.st_ino):
            os.unlink(lock)
    os.close(fd)


@contextlib.contextmanager
def output_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the write lock of the output ``path`` (a file or a folder) within the block.

    Another process (or another thread) that asks for it meanwhile gets a :class:`SenseError`
    at once, naming ``path``; the same thread may take it again (nested writers of one output).
    The lock file is removed afterwards; one left by a killed process is hidden, ignored by the
    readers and reused (the system releases a dead process's lock).
    """
    if fcntl is None:
        yield
        return
    path = Path(path)
    lock = lock_file(path)
    if not os.access(lock.parent, os.W_OK) and path.is_dir():
        lock = path.resolve() / f".sense{LOCK_SUFFIX}"  # only the folder itself is writable
    key, me = (os.getpid(), str(lock)), threading.get_ident()
    with _held_guard:
        held = _held.get(key)
        if held is not None and held[0] == me:
            held[2] += 1
    if held is not None and held[0] == me:
        try:
            yield
        finally:
            with _held_guard:
                held[2] -= 1
        return
    fd = _acquire(path, lock)
    if fd is None:
        yield
        return
    with _held_guard:
        _held[key] = [me, fd, 1]
    try:
        yield
    finally:
        with _held_guard:
            del _held[key]
        _release(lock, fd)


# --------------------------------------------------------------------------- outputs vs inputs
def _resolved(path: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(os.fspath(path))).resolve()


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist
        return False


def _inside(a: Path, b: Path) -> bool:
    """Whether ``a`` is strictly inside the folder ``b`` (after symbolic links; hard-linked or
    bind-mounted folders compared by identity where they exist)."""
    return any(_same(parent, b) for parent in a.parents)


def check_output_outside_inputs(
    out: str | os.PathLike,
    inputs: Iterable[str | os.PathLike | None] = (),
    *,
    bundles: Iterable[str | os.PathLike | None] = (),
    replaces: bool = False,
    writes: Iterable[str | os.PathLike] = (),
) -> None:
    """Refuse, before any work, an output that would damage an input.

    ``inputs`` (ensembles, images): the output may not be one, nor be inside one (a member
    folder that gets other files no longer reads). ``bundles``: the output may not be one (it
    may be inside one, as a bundle's ``evaluation`` folder is). With ``replaces`` (the output
    is replaced as a whole, e.g. a converted ensemble folder) it may not contain any input or
    bundle either; ``writes``: the paths the command writes into the output, none of which may
    be or hold an input. Paths are compared after resolving symbolic links.
    """
    target = _resolved(out)
    written = [_resolved(w) for w in writes]
    checks = [(p, "input") for p in inputs if p] + [(p, "bundle") for p in bundles if p]
    for given, kind in checks:
        source = _resolved(given)
        problem = None
        if _same(target, source):
            problem = f"is the {kind} {given}"
        elif kind == "input" and _inside(target, source):
            problem = f"is inside the {kind} {given}"
        elif replaces and _inside(source, target):
            problem = f"contains the {kind} {given}, which replacing it would delete"
        else:
            hit = next((w for w in written if _same(source, w) or _inside(source, w)), None)
            if hit is not None:
                problem = f"writing {hit.name} would replace the {kind} {given}"
        if problem:
            raise SenseError(f"{out}: the output {problem}; write the output somewhere else")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it was; system
    errors (disk full, no permission) become a :class:`WriteError` that names ``path``.
    """
    path = Path(path)
    _check_parent(path)
    with output_lock(path):  # the check below and the rename happen under one lock
        if not overwrite and path.exists():
            raise SenseError(f"{path} already exists (pass overwrite to replace it)")
        with _atomic_path(path) as tmp:
            yield tmp


@contextlib.contextmanager
def _atomic_path(path: Path) -> Iterator[Path]:
    existed = path.exists()
    remove_stale_temporaries(path)
    tmp_path: Path | None = None
    try:
        # a SIGTERM that arrives while the temporary is created waits until tmp_path names it,
        # so that the handlers below remove it (it was left behind in a CI run)
        with SignalGate() as gate:
            gate.close()
            fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".part", dir=path.parent)
            tmp_path = Path(tmp)
            os.close(fd)
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual mode
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as exc:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        if isinstance(exc, SenseError):
            raise
        raise _write_error(path, exc, existed) from exc
    except BaseException:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``path``; move it to ``path`` on success.

    With ``overwrite`` an existing folder is replaced only after the new one is complete.
    """
    path = Path(path)
    _check_parent(path)
    with output_lock(path):  # a second writer of ``path`` stops here, before any check
        if path.exists() and not overwrite:
            raise SenseError(f"{path} already exists (pass overwrite to replace it)")
        if path.exists() and not path.is_dir():
            raise SenseError(f"{path} exists and is not a folder")
        with _atomic_directory(path) as tmp:
            yield tmp


@contextlib.contextmanager
def _atomic_directory(path: Path) -> Iterator[Path]:
    existed = path.exists()
    remove_stale_temporaries(path)
    tmp_path: Path | None = None
    try:
        with SignalGate() as gate:  # as in atomic_path: the temporary is known before a SIGTERM
            gate.close()
            tmp_path = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".part", dir=path.parent))
        os.chmod(tmp_path, 0o777 & ~_umask())  # mkdtemp makes 0700
        yield tmp_path
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=_prefix(path), suffix=".old", dir=path.parent))
            with SignalGate() as gate:  # a SIGTERM waits until the new folder is in place
                gate.close()
                os.replace(path, old / path.name)
                os.replace(tmp_path, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, path)
    except OSError as exc:
        if tmp_path is not None:
            shutil.rmtree(tmp_path, ignore_errors=True)
        if isinstance(exc, SenseError):
            raise
        raise _write_error(path, exc, existed) from exc
    except BaseException:
        if tmp_path is not None:
            shutil.rmtree(tmp_path, ignore_errors=True)
        raise
