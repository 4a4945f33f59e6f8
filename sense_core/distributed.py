"""Embedding an ensemble whose members are spread over MPI ranks (pvbatch/pvserver under MPI).

Each rank encodes (and labels) the members it holds; the latent vectors and labels are gathered
to rank 0, put back in the ensemble's member order and projected there, so rank 0's result is
the single-process result (same members, order and values up to float rounding). Works with any
communicator offering mpi4py's ``allgather``/``gather``/``Get_rank`` (``mpi4py.MPI.COMM_WORLD``
in ParaView's MPI runs). No VTK here: the ParaView filter hands over numpy members.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from sense_core.errors import SenseError
from sense_core.projection import ProjectionOptions

ROOT = 0


def member_share(count: int, rank: int, size: int) -> range:
    """The contiguous block of member indices that ``rank`` of ``size`` holds."""
    return range(count * rank // size, count * (rank + 1) // size)


def global_class_names(names_per_rank: Sequence[dict[int, str]]) -> list[str]:
    """Class names for labels 0..max over every rank (as a single process names them)."""
    names: dict[int, str] = {}
    for part in names_per_rank:
        names.update({int(k): v for k, v in part.items()})
    count = max([*names, -1]) + 1
    return [names.get(i, f"class_{i}") for i in range(count)]


def _local_embedding(ids, labels, fields, class_names, bundle, options) -> dict[str, Any]:
    from sense_core.embedding import embed_ensemble
    from sense_core.ensemble import Ensemble

    store = Ensemble(
        np.asarray(fields, dtype=np.float32),
        labels=np.asarray(labels),
        class_names=tuple(class_names),
        member_ids=list(ids),
    )
    keep = ("device", "threads", "batch_size", "use_labeler")
    local = embed_ensemble(
        store,
        bundle,
        # replaced on rank 0 by the projection of all members
        projection=ProjectionOptions(method="pca"),
        metrics=False,
        **{k: v for k, v in options.items() if k in keep},
    )
    return {
        "member_ids": list(local.member_ids),
        "latents": local.latents,
        "labels": local.labels,
        "label_source": local.label_source,
        "confidence": local.confidence,
        "predicted_labels": local.predicted_labels,
        "predicted_confidence": local.predicted_confidence,
        "class_names": local.class_names,
        "provenance": local.provenance,
    }


def _merge(parts: list[dict[str, Any]], order: np.ndarray):
    """One Embedding from the ranks' parts, rows sorted by their global member index."""
    from sense_core.embedding import Embedding

    rank = np.argsort(order, kind="stable")

    def stacked(key):
        values = [p[key] for p in parts]
        if any(v is None for v in values):
            return None
        return np.concatenate(values)[rank]

    provenance = dict(parts[0]["provenance"])
    inference = dict(provenance.get("inference", {}))
    providers = sorted({p["provenance"]["inference"]["provider"] for p in parts})
    inference["provider"] = ",".join(providers)
    provenance["inference"] = inference
    provenance["ensemble"] = dict(provenance.get("ensemble", {}), members=int(len(order)))
    provenance["distributed"] = {
        "ranks_with_members": len(parts),
        "members_per_rank": [len(p["member_ids"]) for p in parts],
        "providers": [p["provenance"]["inference"]["provider"] for p in parts],
        "inference_seconds": [p["provenance"]["inference"]["seconds"] for p in parts],
    }
    xy = np.zeros((len(order), 2), dtype=np.float32)
    return Embedding(
        member_ids=tuple(np.asarray(sum((p["member_ids"] for p in parts), []))[rank].tolist()),
        latents=stacked("latents"),
        xy=xy,
        labels=stacked("labels"),
        label_source=stacked("label_source"),
        confidence=stacked("confidence"),
        class_names=tuple(parts[0]["class_names"]),
        predicted_labels=stacked("predicted_labels"),
        predicted_confidence=stacked("predicted_confidence"),
        provenance=provenance,
    )


def embed_distributed(
    comm,
    indices: Sequence[int],
    member_ids: Sequence[str],
    labels: Sequence[int],
    label_names: dict[int, str],
    fields: np.ndarray | None,
    bundle: str | os.PathLike,
    *,
    projection: ProjectionOptions | None = None,
    **options: Any,
):
    """Collective: every rank calls it with the members it holds (``indices``: their positions
    in the whole ensemble; ``fields``: (n, C, H, W) or None when it holds none). Rank 0 returns
    the embedding of all members in ensemble order; the other ranks return None. An error on
    any rank is raised on rank 0 (naming the rank) after the collectives, so none is left
    waiting; the other ranks then return None. ``options``: ``device``, ``threads``, ``batch_size``,
    ``use_labeler`` as for ``embed_ensemble``."""
    from sense_core.embedding import reproject

    started = time.perf_counter()
    class_names = global_class_names(comm.allgather(dict(label_names)))
    part: dict[str, Any] | None = None
    error = ""
    if len(indices):
        try:
            part = _local_embedding(member_ids, labels, fields, class_names, bundle, options)
            part["indices"] = np.asarray(indices, dtype=np.int64)
        except Exception as exc:  # noqa: BLE001 - reported by rank 0, never a hang
            error = str(exc)
    gathered = comm.gather((part, error), root=ROOT)
    if comm.Get_rank() != ROOT:
        return None
    errors = [f"rank {r}: {e}" for r, (_, e) in enumerate(gathered) if e]
    if errors:
        raise SenseError("distributed embedding failed on " + "; ".join(errors))
    parts = [p for p, _ in gathered if p is not None]
    if not parts:
        raise SenseError("no rank holds any member: the input is empty")
    order = np.concatenate([p["indices"] for p in parts])
    if len(np.unique(order)) != len(order):
        raise SenseError("a member is held by several ranks; the input's blocks overlap")
    merged = _merge(parts, order)
    result = reproject(
        merged,
        projection or ProjectionOptions(),
        bundle_folder=bundle,
        device=options.get("device", "auto"),
    )
    result.provenance["seconds"]["total"] = round(time.perf_counter() - started, 3)
    return result
