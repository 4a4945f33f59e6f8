"""The parametric projector: a small MLP that reproduces a UMAP map of the training latents, so
that new members land in the *same* map, deterministically and fast (no UMAP at use time).

Use from the ``sense fit`` pipeline::

    from sense_training.projector import train_projector, add_projector_to_bundle

    projection = sense_core.projection.umap_project(train_latents, seed=0)   # the map to imitate
    fit = train_projector(train_latents, projection.xy, ProjectorConfig(seed=0))
    print(fit.fidelity)                   # trustworthiness, k-NN overlap, relative RMSE
    add_projector_to_bundle(bundle_dir, fit, train_latents, umap_params=projection.params,
                            command="sense fit ...")

The network takes raw latents (B, D) and returns map coordinates (B, 2): the latent
standardisation and the map's scale are buffers inside the model, so the exported ONNX needs no
side information. Training minimises the mean squared error to the UMAP coordinates (scaled to
unit spread) with AdamW and a cosine learning-rate schedule; a seeded random part of the points
(``validation_fraction``) is held out to measure fidelity on points the network has not seen.
Fidelity (:func:`projector_fidelity`): k-NN overlap between the projector's and UMAP's maps,
trustworthiness of both maps with respect to the latents, and RMSE relative to the map's spread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sense_core.errors import SenseError
from sense_core.projection import ProjectionOptions
from sense_training.config import ProjectorConfig

DEFAULT_HIDDEN = ProjectorConfig().hidden
TARGET_STEPS = 3000  # optimiser steps when epochs is not given
MIN_POINTS = 10  # fewer points than this are not enough to learn a map from


class ProjectorNet(nn.Module):
    """latent (B, D) -> standardise -> MLP (ReLU) -> rescale -> map coordinates (B, 2)."""

    def __init__(
        self,
        latent_dim: int,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        latent_mean: np.ndarray | None = None,
        latent_std: np.ndarray | None = None,
        xy_center: np.ndarray | None = None,
        xy_scale: float = 1.0,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = latent_dim
        for size in hidden:
            layers += [nn.Linear(width, int(size)), nn.ReLU()]
            width = int(size)
        layers.append(nn.Linear(width, 2))
        self.mlp = nn.Sequential(*layers)

        def buffer(value, default, shape):
            array = default if value is None else np.asarray(value, dtype=np.float32)
            return torch.as_tensor(np.broadcast_to(array, shape).copy(), dtype=torch.float32)

        self.register_buffer("latent_mean", buffer(latent_mean, np.zeros(1), (latent_dim,)))
        self.register_buffer("latent_std", buffer(latent_std, np.ones(1), (latent_dim,)))
        self.register_buffer("xy_center", buffer(xy_center, np.zeros(1), (2,)))
        self.register_buffer("xy_scale", torch.tensor(float(xy_scale)))
        self.latent_dim = latent_dim
        self.hidden = tuple(int(h) for h in hidden)

    def scaled(self, latents: torch.Tensor) -> torch.Tensor:
        """Output in training units (map centred, unit spread)."""
        return self.mlp((latents - self.latent_mean) / self.latent_std)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.scaled(latents) * self.xy_scale + self.xy_center


@dataclass
class ProjectorFit:
    """A trained projector with its record: configuration (seeded, JSON-ready), per-epoch loss
    history, fidelity to the map it imitates, and the held-out indices."""

    model: ProjectorNet
    config: dict[str, Any]
    history: list[dict[str, float]]
    fidelity: dict[str, Any]
    validation_indices: np.ndarray
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def predict(self, latents: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Map coordinates (N, 2) from torch (evaluation mode, CPU)."""
        return predict(self.model, latents, batch_size)


def predict(model: ProjectorNet, latents: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    model = model.eval()
    device = next(model.parameters()).device
    outputs = []
    with torch.no_grad():
        for start in range(0, len(latents), batch_size):
            chunk = torch.as_tensor(np.asarray(latents[start : start + batch_size], np.float32))
            outputs.append(model(chunk.to(device)).cpu().numpy())
    return np.concatenate(outputs).astype(np.float32)


def projector_fidelity(
    latents: np.ndarray,
    umap_xy: np.ndarray,
    projector_xy: np.ndarray,
    *,
    k: int = 10,
    sample_size: int = 5000,
    seed: int = 0,
) -> dict[str, float]:
    """How well ``projector_xy`` reproduces ``umap_xy`` (both maps of ``latents``):
    ``knn_overlap`` (shared 2D neighbours, 1 = same neighbourhoods), ``trustworthiness`` of each
    map with respect to the latents, and ``relative_rmse`` (point error / spread of the map)."""
    from sense_core.metrics import knn_overlap, trustworthiness

    spread = float(np.sqrt(np.mean(np.sum((umap_xy - umap_xy.mean(axis=0)) ** 2, axis=1))))
    error = float(np.sqrt(np.mean(np.sum((projector_xy - umap_xy) ** 2, axis=1))))
    return {
        "points": int(len(latents)),
        "knn_overlap": round(
            knn_overlap(umap_xy, projector_xy, k=k, sample_size=sample_size, seed=seed), 4
        ),
        "trustworthiness_projector": round(
            trustworthiness(latents, projector_xy, k=k, sample_size=sample_size, seed=seed), 4
        ),
        "trustworthiness_umap": round(
            trustworthiness(latents, umap_xy, k=k, sample_size=sample_size, seed=seed), 4
        ),
        "relative_rmse": round(error / spread if spread > 0 else float("nan"), 5),
    }


def train_projector(
    latents: np.ndarray,
    xy: np.ndarray,
    config: ProjectorConfig | None = None,
    *,
    device: str = "cpu",
    progress: bool = False,
    **changes: Any,
) -> ProjectorFit:
    """Fit a :class:`ProjectorNet` so that ``model(latents) ~ xy`` (the UMAP map of ``latents``).

    ``latents`` (N, D) and ``xy`` (N, 2) are the training members' latent vectors and their UMAP
    coordinates. ``config`` (default :class:`~sense_training.config.ProjectorConfig`) with
    ``changes`` (its fields, e.g. ``epochs=5``) replaced: ``epochs`` None means about 3000
    optimiser steps (20-500 epochs). Everything random (initial weights, held-out points, batch
    order) derives from ``config.seed``. Returns the
    model (CPU, evaluation mode) with its configuration, loss history and fidelity on the
    held-out points and on all points.

    ``threads`` defaults to 1: the network is so small that more threads only add
    synchronisation, and on a loaded 2-core machine 2 threads were 60x slower per step (250 ms
    vs 4 ms). torch's thread count is restored afterwards.
    """
    from sense_training.common import choose_device, configure_threads, seed_everything

    config = (config or ProjectorConfig()).updated(changes)
    latents = np.ascontiguousarray(latents, dtype=np.float32)
    xy = np.ascontiguousarray(xy, dtype=np.float32)
    if latents.ndim != 2 or xy.shape != (len(latents), 2):
        raise SenseError(f"need latents (N, D) and xy (N, 2); got {latents.shape} and {xy.shape}")
    if len(latents) < MIN_POINTS:
        raise SenseError(
            f"the projector needs at least {MIN_POINTS} points to learn from, got {len(latents)}"
        )
    if not (np.isfinite(latents).all() and np.isfinite(xy).all()):
        raise SenseError("latents and xy must be finite")
    previous_threads = torch.get_num_threads()
    try:
        return _train(
            latents,
            xy,
            config,
            target=choose_device(device),
            used_threads=configure_threads(config.threads),
            progress=progress,
            seeding=seed_everything(config.seed),
        )
    finally:
        torch.set_num_threads(previous_threads)


def _scaled_net(latents: np.ndarray, xy: np.ndarray, hidden: Sequence[int]) -> ProjectorNet:
    """A :class:`ProjectorNet` that standardises latents and scales the map like these
    (training) points."""
    latent_mean = latents.mean(axis=0)
    latent_std = latents.std(axis=0)
    latent_std = np.where(latent_std > 1e-8, latent_std, 1.0)
    xy_center = xy.mean(axis=0)
    xy_scale = float(np.sqrt(np.mean(np.sum((xy - xy_center) ** 2, axis=1)))) or 1.0
    return ProjectorNet(latents.shape[1], hidden, latent_mean, latent_std, xy_center, xy_scale)


def _fit_epoch(model, optimizer, schedule, inputs, targets, batches) -> float:
    """One epoch over ``batches`` (rows of ``inputs``); the summed squared error."""
    model.train()
    total = 0.0
    for rows in batches:
        loss = torch.mean((model.scaled(inputs[rows]) - targets[rows]) ** 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        total += float(loss.detach()) * len(rows)
    return total


def _train(
    latents: np.ndarray,
    xy: np.ndarray,
    config: ProjectorConfig,
    *,
    target: torch.device,
    used_threads: int,
    progress: bool,
    seeding: dict[str, Any],
) -> ProjectorFit:
    started = time.perf_counter()
    hidden, epochs, batch_size = config.hidden, config.epochs, config.batch_size
    seed, validation_fraction = config.seed, config.validation_fraction
    rng = np.random.default_rng(seed)
    count = len(latents)
    held_out = int(round(count * validation_fraction)) if validation_fraction > 0 else 0
    order = rng.permutation(count)
    validation = np.sort(order[:held_out])
    train = np.sort(order[held_out:])

    model = _scaled_net(latents[train], xy[train], hidden).to(target)

    steps_per_epoch = max(1, int(np.ceil(len(train) / batch_size)))
    if epochs is None:
        epochs = int(np.clip(TARGET_STEPS // steps_per_epoch, 20, 500))
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    inputs = torch.as_tensor(latents).to(target)
    xy_center, xy_scale = model.xy_center.cpu().numpy(), float(model.xy_scale)
    targets = torch.as_tensor((xy - xy_center) / xy_scale, dtype=torch.float32).to(target)
    generator = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=epochs, unit="epoch", desc="projector", leave=False)
    train_index = torch.as_tensor(train)
    for epoch in range(epochs):
        permutation = train_index[torch.randperm(len(train), generator=generator)].to(target)
        batches = torch.split(permutation, batch_size)
        total = _fit_epoch(model, optimizer, schedule, inputs, targets, batches)
        record = {"epoch": epoch + 1, "train_mse": total / len(train)}
        if held_out:
            model.eval()
            with torch.no_grad():
                rows = torch.as_tensor(validation).to(target)
                record["validation_mse"] = float(
                    torch.mean((model.scaled(inputs[rows]) - targets[rows]) ** 2)
                )
        history.append({k: round(v, 6) if isinstance(v, float) else v for k, v in record.items()})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(mse=f"{record['train_mse']:.4f}")
    if bar is not None:
        bar.close()

    model = model.cpu().eval()
    predicted = predict(model, latents)
    fidelity: dict[str, Any] = {"all": projector_fidelity(latents, xy, predicted, seed=seed)}
    if held_out >= 12:
        fidelity["validation"] = projector_fidelity(
            latents[validation], xy[validation], predicted[validation], seed=seed
        )
    record = {
        **config.to_dict(),
        "hidden": list(model.hidden),
        "epochs": epochs,
        "seeding": seeding,
        "threads": used_threads,
        "device": str(target),
        "points": count,
        "latent_dim": int(latents.shape[1]),
    }
    return ProjectorFit(
        model, record, history, fidelity, validation, round(time.perf_counter() - started, 3)
    )


def add_projector_to_bundle(
    bundle_folder: str | os.PathLike,
    fit: ProjectorFit,
    latents: np.ndarray,
    *,
    umap_params: dict[str, Any] | None = None,
    command: str | None = None,
    opset: int | None = None,
):
    """Export ``fit.model`` to ONNX (verified against torch on ``latents``) and put it into the
    bundle as ``projector.onnx`` with its fidelity, configuration and the UMAP parameters of the
    map it imitates. The bundle's encoder, if any, must produce latents of the same size.
    Returns the reloaded :class:`~sense_core.bundle.Bundle`."""
    from sense_core.bundle import add_model, read_manifest
    from sense_training.export import DEFAULT_OPSET, export_onnx, scratch_folder

    folder = Path(bundle_folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise SenseError(f"{folder}: not a SENSE bundle (no sense.json); add the encoder first")
    encoder = manifest.get("models", {}).get("encoder", {})
    encoder_dim = encoder.get("latent_dim")
    if encoder_dim is not None and int(encoder_dim) != fit.model.latent_dim:
        raise SenseError(
            f"{folder}: the encoder gives latents of size {encoder_dim}, the projector takes "
            f"{fit.model.latent_dim}"
        )
    latents = np.asarray(latents, dtype=np.float32)
    with scratch_folder(folder, "projector") as scratch:
        path = Path(scratch) / "projector.onnx"
        report = export_onnx(
            fit.model,
            latents[:2],
            path,
            "latent",
            "xy",
            real_inputs=latents[:512],
            opset=opset or DEFAULT_OPSET,
        )
        return add_model(
            folder,
            "projector",
            path,
            manifest,
            input_name="latent",
            output_name="xy",
            opset=report.opset,
            details={
                "latent_dim": fit.model.latent_dim,
                "hidden": list(fit.model.hidden),
                "imitates": "umap",
                "umap": dict(umap_params or {}),
                "fidelity": fit.fidelity,
            },
            training={
                "command": command,
                "config": fit.config,
                "metrics": fit.fidelity,
                "seconds": fit.seconds,
                "final": fit.history[-1] if fit.history else {},
                "export": report.to_dict(),
            },
        )


@dataclass
class BundleProjector:
    """What :func:`fit_bundle_projector` did: the fit, the UMAP parameters of the imitated map,
    the store indices of the members it was fitted on, and the seconds of each step."""

    fit: ProjectorFit
    umap_params: dict[str, Any]
    indices: np.ndarray
    seconds: dict[str, float]

    def record(self) -> dict[str, Any]:
        """JSON-ready summary for reports (fidelity, points, UMAP parameters, seconds)."""
        return {
            "points": int(len(self.indices)),
            "fidelity": self.fit.fidelity,
            "umap": self.umap_params,
            "epochs": self.fit.config["epochs"],
            "seconds": self.seconds,
        }


def fit_bundle_projector(
    store,
    bundle_folder: str | os.PathLike,
    indices: Sequence[int] | np.ndarray,
    config: ProjectorConfig | None = None,
    *,
    projection: ProjectionOptions | None = None,
    command: str | None = None,
    log=print,
    **changes: Any,
) -> BundleProjector:
    """Give the bundle's encoder a projector: encode the members ``indices`` of ``store`` (a
    seeded sample of at most ``config.max_points``) with the bundle's ONNX encoder, map them with
    UMAP (``projection``; default: :class:`~sense_core.projection.ProjectionOptions` seeded with
    ``config.seed``, exact k-NN), train a :class:`ProjectorNet` on that map and add it to the
    bundle as ``projector.onnx`` with its fidelity (:func:`add_projector_to_bundle`).
    ``changes`` replace fields of ``config`` (e.g. ``max_points=2000, seed=3``)."""
    from sense_core.bundle import Bundle
    from sense_core.inference import Encoder
    from sense_core.projection import umap_project

    config = (config or ProjectorConfig()).updated(changes)
    max_points, seed = config.max_points, config.seed
    indices = np.asarray(indices, dtype=np.int64)
    if max_points < MIN_POINTS:
        raise SenseError(f"max_points must be >= {MIN_POINTS}, got {max_points}")
    if len(indices) > max_points:
        chosen = np.random.default_rng(seed).choice(len(indices), size=max_points, replace=False)
        indices = np.sort(indices[chosen])
    if len(indices) < MIN_POINTS:
        raise SenseError(
            f"the projector needs at least {MIN_POINTS} training members to learn from, got "
            f"{len(indices)}"
        )
    seconds: dict[str, float] = {}
    tick = time.perf_counter()
    bundle = Bundle.load(bundle_folder)
    latents = Encoder(bundle, device="cpu").encode_store(store, indices=indices)
    seconds["encode"] = round(time.perf_counter() - tick, 2)
    tick = time.perf_counter()
    options = projection or ProjectionOptions(seed=seed, knn="exact")
    projection_map = umap_project(latents, options)
    seconds["umap"] = round(time.perf_counter() - tick, 2)
    log(f"  UMAP of {len(indices)} training latents in {seconds['umap']:.1f} s")
    tick = time.perf_counter()
    fit = train_projector(latents, projection_map.xy, config)
    seconds["train"] = round(time.perf_counter() - tick, 2)
    tick = time.perf_counter()
    add_projector_to_bundle(
        bundle_folder, fit, latents, umap_params=projection_map.params, command=command
    )
    seconds["export"] = round(time.perf_counter() - tick, 2)
    held_out = fit.fidelity.get("validation", fit.fidelity["all"])
    log(
        f"  projector: {fit.config['epochs']} epochs in {seconds['train']:.1f} s; held-out "
        f"k-NN overlap {held_out['knn_overlap']:.3f}, trustworthiness "
        f"{held_out['trustworthiness_projector']:.3f} (UMAP {held_out['trustworthiness_umap']:.3f})"
    )
    return BundleProjector(fit, dict(projection_map.params), indices, seconds)
