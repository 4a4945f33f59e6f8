"""Embedding an ensemble whose members are spread over MPI ranks (pvbatch/pvserver under MPI).

Each rank encodes (and labels) the members it holds and, with the bundle's decoder, measures
their reconstruction errors; the latent vectors, labels and errors are gathered to rank 0, put
back in the ensemble's member order, scored for unusual members (class prototypes need every
member) and projected there, so rank 0's result is the single-process result (same members,
order, unusual-member scores and values up to float rounding). Works with any
communicator offering mpi4py's ``allgather``/``gather``/``Get_rank`` (``mpi4py.MPI.COMM_WORLD``
in ParaView's MPI runs). No VTK here: the ParaView filter hands over numpy members.

Every collective step agrees on success before anything else is exchanged (:func:`agree`,
:func:`on_root`): a step that fails on one rank raises the same error on every rank, so no rank
goes on into a collective that another never reaches (that is a hang, not an error).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, TypeVar

import numpy as np

from sense_core.errors import SenseError, describe_exception
from sense_core.projection import ProjectionOptions

ROOT = 0
T = TypeVar("T")


def _agreed_error(comm, error: str) -> None:
    """Collective: raise :class:`SenseError` on every rank when ``error`` is set on any rank
    (the first failing rank's message, naming the rank when there are several)."""
    errors = [(rank, e) for rank, e in enumerate(comm.allgather(error)) if e]
    if errors:
        rank, message = errors[0]
        if len(errors) == comm.Get_size() and len({e for _, e in errors}) == 1:
            raise SenseError(message)  # every rank failed alike: no rank to name
        raise SenseError(f"rank {rank}: {message}")


def agree(comm, step: Callable[[], T]) -> T:
    """Run ``step`` on every rank and agree on its outcome before going on: when it raised on
    any rank, every rank raises :class:`SenseError` with that error. A collective call inside
    ``step`` must come before anything in it that can fail (ParaView's ``UpdatePipeline``, then
    a check of its outcome): a rank that failed first would leave the others in that call.
    ``comm`` None (one process): ``step()``, its exceptions unchanged."""
    if comm is None:
        return step()
    result, error = None, ""
    try:
        result = step()
    except Exception as exc:  # noqa: BLE001 - agreed on below, raised on every rank
        error = describe_exception(exc)
    _agreed_error(comm, error)
    return result  # type: ignore[return-value]


def on_root(comm, step: Callable[[], T], share: bool = True) -> T | None:
    """Run ``step`` on rank 0 only (writing a file, evaluating a query on data that only rank 0
    holds) and hand its result to every rank (``share`` off: the other ranks get None); when it
    raised, every rank raises :class:`SenseError` with that error. ``comm`` None: ``step()``,
    its exceptions unchanged."""
    if comm is None:
        return step()
    result, error = None, ""
    if comm.Get_rank() == ROOT:
        try:
            result = step()
        except Exception as exc:  # noqa: BLE001 - raised on every rank below
            error = describe_exception(exc)
    if share:
        result, error = comm.bcast((result, error), root=ROOT)
    else:
        error = comm.bcast(error, root=ROOT)
    if error:
        raise SenseError(error)
    return result


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
        # a member's own (with the bundle's decoder); prototypes need every member: rank 0
        "reconstruction_error": local.reconstruction_error,
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
        reconstruction_error=stacked("reconstruction_error"),
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
    any rank (its members, or rank 0's merge and projection) is raised on every rank, naming
    the rank, after the collectives: none is left waiting, and every rank's filter fails.
    ``options``: ``device``, ``threads``, ``batch_size``, ``use_labeler`` as for
    ``embed_ensemble``."""
    started = time.perf_counter()
    class_names = global_class_names(comm.allgather(dict(label_names)))
    part: dict[str, Any] | None = None
    error = ""
    if len(indices):
        try:
            part = _local_embedding(member_ids, labels, fields, class_names, bundle, options)
            part["indices"] = np.asarray(indices, dtype=np.int64)
        except Exception as exc:  # noqa: BLE001 - raised on every rank below, never a hang
            error = describe_exception(exc)
    gathered = comm.gather((part, error), root=ROOT)
    errors = []
    if comm.Get_rank() == ROOT:
        errors = [f"rank {r}: {e}" for r, (_, e) in enumerate(gathered) if e]
    errors = comm.bcast(errors, root=ROOT)
    if errors:
        raise SenseError("distributed embedding failed on " + "; ".join(errors))
    step = partial(_project_parts, gathered, bundle, projection, options, started)
    return on_root(comm, step, share=False)


def _project_parts(gathered, bundle, projection, options, started):
    """Rank 0's share of :func:`embed_distributed`: merge the ranks' parts and project them."""
    from sense_core.embedding import reproject

    parts = [p for p, _ in gathered if p is not None]
    if not parts:
        raise SenseError("no rank holds any member: the input is empty")
    order = np.concatenate([p["indices"] for p in parts])
    if len(np.unique(order)) != len(order):
        raise SenseError("a member is held by several ranks; the input's blocks overlap")
    merged = _merge(parts, order)
    if merged.reconstruction_error is not None:  # unusual members, as one process scores them
        from sense_core.embedding import set_unusual_scores
        from sense_core.unusual import score_members

        scores = score_members(
            merged.latents,
            merged.labels,
            merged.label_source,
            len(merged.class_names),
            reconstruction_error=merged.reconstruction_error,
        )
        set_unusual_scores(merged, scores)
    result = reproject(
        merged,
        projection or ProjectionOptions(),
        bundle_folder=bundle,
        device=options.get("device", "auto"),
    )
    result.provenance["seconds"]["total"] = round(time.perf_counter() - started, 3)
    return result
