"""Open, read and write ensembles: ``.npz`` files and folders of member files.

``open_ensemble`` lists an ensemble without reading its fields (a lazy source);
``read_ensemble`` loads it into memory; ``write_ensemble`` writes either kind, atomically.
"""

from __future__ import annotations

import os
from pathlib import Path

from sense_core.ensemble import Ensemble, MemberStore
from sense_core.errors import EnsembleError
from sense_core.io.folder import MemberFolderSource, write_member_folder
from sense_core.io.members import MEMBER_SUFFIXES, NAN_POLICIES, read_member_file
from sense_core.io.npz import NpzSource, write_npz

__all__ = [
    "MEMBER_SUFFIXES",
    "NAN_POLICIES",
    "MemberFolderSource",
    "NpzSource",
    "open_ensemble",
    "read_ensemble",
    "read_member_file",
    "write_ensemble",
]


def open_ensemble(
    path: str | os.PathLike,
    nan_policy: str = "raise",
    fill_value: float = 0.0,
    array_name: str | None = None,
    sidecar: bool = True,
) -> MemberStore:
    """A lazy source over an ensemble ``.npz`` or member folder.

    ``nan_policy="fill"`` replaces NaN/Inf by ``fill_value`` instead of rejecting the member;
    ``array_name`` picks the point array of ``.vti`` members (default: the active scalars).
    ``sidecar``: apply the hand labels of the ensemble's label sidecar (``<path>.sense/``, see
    :mod:`sense_core.label_store`) over its own; ``store.label_origin`` says where they came from.
    """
    from sense_core.label_store import apply_sidecar

    path = Path(path)
    if path.is_dir():
        store: MemberStore = MemberFolderSource(path, nan_policy, fill_value, array_name)
        return apply_sidecar(store, path) if sidecar else store
    if path.suffix.lower() == ".npz":
        store = NpzSource(path, nan_policy, fill_value)
        return apply_sidecar(store, path) if sidecar else store
    if not path.exists():
        raise EnsembleError(f"{path}: no such file or folder")
    raise EnsembleError(f"{path}: not an ensemble (expected an .npz file or a folder of members)")


def read_ensemble(path: str | os.PathLike, **options) -> Ensemble:
    """Load a whole ensemble into memory (see :func:`open_ensemble` for the options)."""
    return open_ensemble(path, **options).load()


def write_ensemble(
    store: MemberStore,
    path: str | os.PathLike,
    overwrite: bool = False,
    member_format: str = "vti",
    progress: bool = False,
) -> Path:
    """Write to ``path``: an ``.npz`` file if it ends in .npz, else a folder of member files."""
    path = Path(path)
    if path.suffix.lower() == ".npz":
        return write_npz(store, path, overwrite=overwrite, progress=progress)
    return write_member_folder(
        store, path, member_format=member_format, overwrite=overwrite, progress=progress
    )
