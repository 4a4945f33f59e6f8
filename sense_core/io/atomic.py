"""Write outputs so that a failure never leaves a half-written file or folder behind.

Everything is written to a temporary sibling first and renamed into place at the end
(``os.replace`` is atomic within one file system). Temporaries are named
``.<name>.<pid>.<random>.part``: an error or a SIGTERM removes them at once; after a SIGKILL
(which no program can catch) the next write of the same output removes the ones whose process
is gone. An output is therefore either complete or absent, never partial.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from sense_core.errors import SenseError, SignalGate, WriteError


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


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary file path next to ``path``; rename it to ``path`` on success.

    On any exception the temporary file is removed and ``path`` is left as it was; system
    errors (disk full, no permission) become a :class:`WriteError` that names ``path``.
    """
    path = Path(path)
    _check_parent(path)
    if not overwrite and path.exists():
        raise SenseError(f"{path} already exists (pass overwrite to replace it)")
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
    if path.exists() and not overwrite:
        raise SenseError(f"{path} already exists (pass overwrite to replace it)")
    if path.exists() and not path.is_dir():
        raise SenseError(f"{path} exists and is not a folder")
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
