"""Latent vectors -> 2D maps: UMAP, PCA, and the bundle's parametric projector.

- **UMAP** (umap-learn, imported only when used). Its numba code is cached under
  :func:`numba_cache_dir` (``~/.cache/sense/numba`` unless ``NUMBA_CACHE_DIR`` is set), so only
  the first import on a machine compiles (17-20 s, then ~1-2 s). The first *fit* in each new
  process is still slow when umap-learn computes the k nearest neighbours itself: pynndescent's
  nn-descent is compiled in every process and not cached (~25 s here for n >= 4096). SENSE
  therefore passes exact k nearest neighbours from scikit-learn (``precomputed_knn``) up to
  ``EXACT_KNN_MAX`` points, which takes seconds (50k x 32 in ~3.4 s on 2 cores) and removes that
  compilation; see docs/runtime.md for the measured figures. ``seed`` makes UMAP reproducible
  (umap-learn then runs its layout on one thread).
- **PCA**: dependency-light, deterministic fallback.
- **Parametric projector**: a small MLP in the bundle (ONNX, trained by
  ``sense_training.projector``) that reproduces the UMAP map of the training latents. New members
  land in the same map, deterministically: each row is computed in a batch of exactly
  ``ParametricProjector.CHUNK`` rows (the tail padded), so a point does not depend on how many
  others are projected with it or in which order.

:func:`warmup` compiles UMAP's code once in the current process (e.g. when ParaView loads the
plugin, or ``sense warmup`` after installing) so that the user's first map does not wait.
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from sense_core.errors import SenseError

METHODS = ("umap", "pca", "projector")
# ``auto``: the bundle's projector when it has one, else UMAP.
PROJECTIONS = ("auto", "projector", "umap", "pca")
KNN_MODES = ("auto", "exact", "approximate")
# Up to this many points, exact k-NN (scikit-learn, O(N^2) but vectorised) beats compiling
# pynndescent in a fresh process; measured in benchmarks/bench_projection.py.
EXACT_KNN_MAX = 60_000
UMAP_MIN_POINTS = 5


@dataclass(frozen=True)
class ProjectionOptions:
    """How latents are mapped to 2D: the one place where the projection defaults are written.

    Shared by the library (:func:`project`, :func:`umap_project`, ``embed_ensemble``,
    ``reproject``, ``embed_distributed``), the ``sense embed``/``sense project`` options (generated
    from these fields) and the ParaView filter's property defaults. ``seed`` None (or negative,
    as given on a command line) = unseeded: faster multi-threaded UMAP, not reproducible.
    """

    method: str = field(
        default="auto",
        metadata={
            "flag": "--projection",
            "choices": PROJECTIONS,
            "help": "how to map latents to 2D: auto (the bundle's projector when it has one, "
            "else UMAP), projector, umap or pca",
        },
    )
    n_neighbors: int = field(
        default=15, metadata={"help": "UMAP neighbourhood size: larger favours global structure"}
    )
    min_dist: float = field(
        default=0.1, metadata={"help": "UMAP minimum distance: how tightly points may pack"}
    )
    metric: str = field(default="euclidean", metadata={"help": "UMAP distance between latents"})
    seed: int | None = field(
        default=0,
        metadata={"help": "UMAP seed (reproducible, one thread); none or -1: unseeded, faster"},
    )
    knn: str = field(
        default="auto",
        metadata={
            "choices": KNN_MODES,
            "help": "UMAP nearest neighbours: exact (scikit-learn; no per-process compile), "
            f"approximate (umap-learn's nn-descent), auto = exact up to {EXACT_KNN_MAX:,} members",
        },
    )

    def __post_init__(self) -> None:
        if self.method not in PROJECTIONS:
            raise SenseError(f"projection method must be one of {PROJECTIONS}, got {self.method!r}")
        if self.knn not in KNN_MODES:
            raise SenseError(f"knn must be one of {KNN_MODES}, got {self.knn!r}")
        if int(self.n_neighbors) < 2:
            raise SenseError(f"n_neighbors must be at least 2, got {self.n_neighbors}")
        if not 0.0 <= float(self.min_dist):
            raise SenseError(f"min_dist must be >= 0, got {self.min_dist}")
        if self.seed is not None and int(self.seed) < 0:
            object.__setattr__(self, "seed", None)

    def resolved_method(self, bundle=None) -> str:
        """The method really used: ``auto`` becomes ``projector`` when ``bundle`` has one."""
        if self.method != "auto":
            return self.method
        return "projector" if bundle is not None and "projector" in bundle.models else "umap"


def numba_cache_dir() -> Path:
    """Point numba's cache at a user cache folder (unless ``NUMBA_CACHE_DIR`` is set); return it.

    Must run before numba is imported to take effect; every SENSE entry to UMAP calls it. The
    default folder is ``$XDG_CACHE_HOME/sense/numba`` (``~/.cache/sense/numba``), writable by the
    user, unlike site-packages in a shared installation.
    """
    if not os.environ.get("NUMBA_CACHE_DIR"):
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        os.environ["NUMBA_CACHE_DIR"] = os.path.join(base, "sense", "numba")
    path = Path(os.environ["NUMBA_CACHE_DIR"])
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        pass  # numba then falls back to not caching; not worth failing a projection for
    return path


def _import_umap():
    numba_cache_dir()
    try:
        import umap
    except ImportError as exc:
        raise SenseError(
            "umap-learn is not installed (pip install umap-learn); use --projection pca"
        ) from exc
    return umap


@dataclass
class Projection:
    """A 2D map: ``xy`` (N, 2) float32, the method and every parameter that shaped it, timings
    (seconds) and the fitted model (a ``umap.UMAP``, a ``sklearn`` PCA, a
    :class:`ParametricProjector`) for projecting more points."""

    xy: np.ndarray
    method: str
    params: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    model: Any = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready provenance: method, parameters, timings."""
        return {"method": self.method, "params": self.params, "seconds": self.seconds}


def _as_points(latents: np.ndarray) -> np.ndarray:
    points = np.asarray(latents, dtype=np.float32)
    if points.ndim != 2 or points.shape[0] == 0:
        raise SenseError(f"latent vectors must be a non-empty (N, D) array, got {points.shape}")
    if not np.isfinite(points).all():
        bad = int(np.count_nonzero(~np.isfinite(points).all(axis=1)))
        raise SenseError(f"{bad} latent vector(s) hold NaN/Inf; cannot project them")
    return np.ascontiguousarray(points)


def exact_knn(
    points: np.ndarray, k: int, metric: str = "euclidean"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every point among ``points``, itself first (distance 0), as
    UMAP expects: (indices int64 (N, k), distances float32 (N, k)).

    The search runs on one OpenMP thread: ensembles have exact duplicates (an MCMC chain that
    stays in a state), and scikit-learn breaks ties between equal distances differently for
    different thread counts, which changed the seeded UMAP map with the process's thread
    settings (e.g. after torch set its threads: 2,536 of 30,000 neighbour indices on a channels
    ensemble). One thread keeps a seeded map the same in every process."""
    from sklearn.neighbors import NearestNeighbors
    from threadpoolctl import threadpool_limits

    search = NearestNeighbors(n_neighbors=k, metric=metric, algorithm="brute").fit(points)
    with threadpool_limits(limits=1, user_api="openmp"):
        distances, indices = search.kneighbors(points)
    return indices.astype(np.int64), distances.astype(np.float32)


def umap_project(
    latents: np.ndarray,
    options: ProjectionOptions | None = None,
    *,
    n_epochs: int | None = None,
    exact_knn_max: int = EXACT_KNN_MAX,
    **changes: Any,
) -> Projection:
    """UMAP map of ``latents`` (N, D) with ``options`` (default :class:`ProjectionOptions`;
    ``changes`` replace some of its fields for this call, e.g. ``seed=3``).

    ``knn``: ``exact`` (scikit-learn, passed as ``precomputed_knn``), ``approximate``
    (umap-learn's own search: nn-descent from 4096 points; needed if the returned model must
    ``transform`` new points), ``auto`` (exact up to ``exact_knn_max`` points). ``seed`` (None =
    not reproducible, uses all cores) is recorded in the parameters.
    """
    options = replace(options or ProjectionOptions(), **changes)
    n_neighbors, min_dist, metric = options.n_neighbors, options.min_dist, options.metric
    seed, knn = options.seed, options.knn
    points = _as_points(latents)
    count = len(points)
    if count < UMAP_MIN_POINTS:
        raise SenseError(
            f"UMAP needs at least {UMAP_MIN_POINTS} members, got {count}; use the PCA projection"
        )
    neighbors = int(min(n_neighbors, count - 1))
    use_exact = knn == "exact" or (knn == "auto" and count <= exact_knn_max)
    seconds: dict[str, float] = {}
    tick = time.perf_counter()
    umap = _import_umap()
    seconds["import"] = time.perf_counter() - tick

    options: dict[str, Any] = {}
    if use_exact:
        tick = time.perf_counter()
        options["precomputed_knn"] = exact_knn(points, neighbors, metric)
        seconds["knn"] = time.perf_counter() - tick
    if seed is not None:
        options.update(random_state=int(seed), n_jobs=1)
    reducer = umap.UMAP(
        n_components=2,
        n_neighbors=neighbors,
        min_dist=float(min_dist),
        metric=metric,
        n_epochs=n_epochs,
        **options,
    )
    tick = time.perf_counter()
    with warnings.catch_warnings():
        # umap-learn warns about ignored search indices and spectral-init fallbacks for tiny N;
        # the parameters below record what was done.
        warnings.simplefilter("ignore")
        xy = reducer.fit_transform(points)
    seconds["fit"] = time.perf_counter() - tick
    params = {
        "n_neighbors": neighbors,
        "min_dist": float(min_dist),
        "metric": metric,
        "seed": seed,
        "knn": "exact" if use_exact else "umap-learn",
        "n_epochs": n_epochs,
        "umap_version": getattr(umap, "__version__", ""),
    }
    return Projection(
        np.asarray(xy, dtype=np.float32),
        "umap",
        params,
        {k: round(v, 3) for k, v in seconds.items()},
        reducer,
    )


def pca_project(latents: np.ndarray) -> Projection:
    """The first two principal components (deterministic: full SVD with sign convention)."""
    from sklearn.decomposition import PCA

    points = _as_points(latents)
    tick = time.perf_counter()
    if points.shape[1] < 2 or len(points) < 2:
        xy = np.zeros((len(points), 2), dtype=np.float32)
        xy[:, : min(points.shape[1], 1)] = points[:, :1] - points[:, :1].mean(axis=0)
        return Projection(xy, "pca", {"components": 2, "degenerate": True}, {}, None)
    pca = PCA(n_components=2, svd_solver="full").fit(points)
    xy = pca.transform(points).astype(np.float32)
    ratio = [round(float(r), 6) for r in pca.explained_variance_ratio_]
    return Projection(
        xy,
        "pca",
        {"components": 2, "explained_variance_ratio": ratio},
        {"fit": round(time.perf_counter() - tick, 3)},
        pca,
    )


class ParametricProjector:
    """The bundle's projector (ONNX): latent (B, D) -> map coordinates (B, 2).

    Deterministic and independent of batching: every call runs chunks of exactly ``CHUNK`` rows
    (the last one padded with zeros), so a row is always computed the same way.
    """

    CHUNK = 1024

    def __init__(
        self,
        path: str | os.PathLike,
        input_name: str = "latent",
        output_name: str = "xy",
        device: str = "cpu",
        threads: int | None = None,
        details: dict | None = None,
    ) -> None:
        from sense_core.inference import OnnxModel

        self.model = OnnxModel(path, input_name, output_name, device=device, threads=threads)
        self.details = dict(details or {})
        shape = self.model.input_shape
        self.latent_dim = shape[0] if len(shape) == 1 else None
        if len(shape) != 1:
            raise SenseError(f"{path}: a projector takes (B, D) latents, its input is (B, {shape})")

    @classmethod
    def from_bundle(cls, bundle, device: str = "cpu", threads: int | None = None):
        """The projector of a :class:`~sense_core.bundle.Bundle` (an error if it has none)."""
        entry = bundle.model("projector")
        return cls(
            entry.path, entry.input_name, entry.output_name, device, threads, dict(entry.details)
        )

    @property
    def provider(self) -> str:
        return self.model.provider

    def transform(self, latents: np.ndarray) -> np.ndarray:
        """Map coordinates (N, 2) float32 of latents (N, D); NaN/Inf in the projector's output
        are refused naming its file."""
        from sense_core.inference import non_finite_error, non_finite_rows

        points = _as_points(latents)
        if self.latent_dim is not None and points.shape[1] != self.latent_dim:
            raise SenseError(
                f"{self.model.path}: the projector takes latents of size {self.latent_dim}, "
                f"got {points.shape[1]} (was it trained with another encoder?)"
            )
        out = np.empty((len(points), 2), dtype=np.float32)
        padded = np.zeros((self.CHUNK, points.shape[1]), dtype=np.float32)
        for start in range(0, len(points), self.CHUNK):
            rows = points[start : start + self.CHUNK]
            padded[: len(rows)] = rows
            padded[len(rows) :] = 0.0
            result = self.model.run(padded, check_finite=False)  # padding rows do not count
            if result.shape != (self.CHUNK, 2):
                raise SenseError(
                    f"{self.model.path}: the projector gives outputs of shape {result.shape[1:]},"
                    " expected (2,)"
                )
            bad = non_finite_rows(result[: len(rows)])
            if bad.any():
                raise non_finite_error(self.model.path, bad, "latent vector(s) of a batch")
            out[start : start + len(rows)] = result[: len(rows)]
        return out

    def project(self, latents: np.ndarray) -> Projection:
        tick = time.perf_counter()
        xy = self.transform(latents)
        params = {"file": self.model.path.name, "provider": self.provider, **self.details}
        return Projection(xy, "projector", params, {"fit": round(time.perf_counter() - tick, 4)})


def project(
    latents: np.ndarray,
    options: ProjectionOptions | None = None,
    *,
    bundle=None,
    device: str = "cpu",
) -> Projection:
    """Map ``latents`` to 2D with ``options.method``: ``umap``, ``pca``, ``projector`` (needs a
    ``bundle`` with one) or ``auto`` (the bundle's projector when it has one, else UMAP)."""
    options = options or ProjectionOptions()
    method = options.resolved_method(bundle)
    if method == "umap":
        return umap_project(latents, options)
    if method == "pca":
        return pca_project(latents)
    if bundle is None:
        raise SenseError("the projector projection needs a bundle with a projector model")
    return ParametricProjector.from_bundle(bundle, device=device).project(latents)


def warmup(points: int = 300, dim: int = 16, seeded: bool = True, parallel: bool = True) -> dict:
    """Compile UMAP's numba code in this process (and fill the on-disk cache) with a tiny fit.

    ``seeded`` compiles the single-thread layout used with a seed, ``parallel`` the multi-thread
    one used without. Returns timings (seconds) and the cache folder.
    """
    timings: dict[str, Any] = {"numba_cache_dir": str(numba_cache_dir())}
    tick = time.perf_counter()
    _import_umap()
    timings["import_umap"] = round(time.perf_counter() - tick, 3)
    rng = np.random.default_rng(0)
    sample = rng.normal(size=(points, dim)).astype(np.float32)
    sample[: points // 2] += 2.0
    for name, seed, wanted in (("fit_seeded", 0, seeded), ("fit_parallel", None, parallel)):
        if wanted:
            tick = time.perf_counter()
            umap_project(sample, seed=seed, knn="exact", n_epochs=20)
            timings[name] = round(time.perf_counter() - tick, 3)
    return timings
