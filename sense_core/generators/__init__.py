"""Built-in ensemble generators: ``channels`` (MCMC posterior), ``drops`` (impact), ``crops``.

Every generator is deterministic from its seed, needs only numpy/scipy (Pillow for crops) and
returns an :class:`~sense_core.ensemble.Ensemble` whose metadata holds each member's
parameters and ``regime`` (its class, also for unlabeled members). ``generate_with_info`` also
returns a :class:`GenerationInfo` with the options, the reproducing command line and statistics
(e.g. the MCMC acceptance rate). See docs/generators.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sense_core.ensemble import Ensemble
from sense_core.errors import EnsembleError
from sense_core.generators.common import GenerationInfo

DEFAULT_LABELED_FRACTION = 0.05


@dataclass(frozen=True)
class GeneratorSpec:
    """A registered generator: its function, class names (if fixed) and a one-line summary."""

    name: str
    function: Callable[..., tuple[Ensemble, GenerationInfo]]
    class_names: tuple[str, ...]
    summary: str


def _registry() -> dict[str, GeneratorSpec]:
    from sense_core.generators import channels, crops, drops

    return {
        "channels": GeneratorSpec(
            "channels",
            channels.generate_channels,
            channels.CLASS_NAMES,
            "MCMC posterior of sinuous sand channels conditioned on boreholes (5 regimes)",
        ),
        "drops": GeneratorSpec(
            "drops",
            drops.generate_drops,
            drops.CLASS_NAMES,
            "droplet impact on a liquid film, procedural kinematic snapshots (7 regimes)",
        ),
        "crops": GeneratorSpec(
            "crops",
            crops.generate_crops,
            (),
            "random crops of given images, class = image, region-based train/test split",
        ),
    }


GENERATORS: tuple[str, ...] = ("channels", "drops", "crops")


def get_generator(name: str) -> GeneratorSpec:
    registry = _registry()
    if name not in registry:
        raise EnsembleError(f"unknown generator {name!r}; available: {', '.join(registry)}")
    return registry[name]


def generate_with_info(
    name: str,
    n: int,
    size: int = 64,
    labeled_fraction: float = DEFAULT_LABELED_FRACTION,
    seed: int = 0,
    **options: Any,
) -> tuple[Ensemble, GenerationInfo]:
    """Generate an ensemble and return it with its :class:`GenerationInfo`."""
    spec = get_generator(name)
    try:
        return spec.function(n, size, labeled_fraction, seed, **options)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            raise EnsembleError(f"generator {name!r}: {exc}") from exc
        raise


def generate(
    name: str,
    n: int,
    size: int = 64,
    labeled_fraction: float = DEFAULT_LABELED_FRACTION,
    seed: int = 0,
    **options: Any,
) -> Ensemble:
    """Generate ``n`` members of size ``size`` x ``size`` with the generator ``name``.

    ``labeled_fraction`` of the members keep their class label (stratified), the rest are -1.
    ``options`` are generator specific (``noise``, ``blur`` for all; see each module).
    """
    return generate_with_info(name, n, size, labeled_fraction, seed, **options)[0]


__all__ = [
    "GENERATORS",
    "GenerationInfo",
    "GeneratorSpec",
    "generate",
    "generate_with_info",
    "get_generator",
]
