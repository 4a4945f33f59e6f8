"""Gallery PNG of an ensemble: a few members of every class, one row per class, titled."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sense_core.ensemble import MemberStore


def write_preview(
    store: MemberStore,
    path: str | Path,
    per_class: int = 6,
    classes: np.ndarray | None = None,
    seed: int = 0,
    title: str | None = None,
    dpi: int = 80,
) -> Path:
    """Write a gallery of ``per_class`` random members per class (first channel) to ``path``.

    ``classes`` gives each member's class when the labels are mostly -1 (e.g. a generator's
    ``regime`` metadata); by default the metadata ``regime`` is used if present, else labels.
    Matplotlib (Agg backend) is imported here only, so the library does not need it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if classes is None:
        classes = store.metadata.get("regime", store.labels)
    classes = np.asarray(classes)
    names = list(store.class_names) or [str(c) for c in np.unique(classes[classes >= 0])]
    rng = np.random.default_rng(seed)
    rows = [(i, name) for i, name in enumerate(names) if np.any(classes == i)]
    figure, axes = plt.subplots(
        len(rows),
        per_class,
        figsize=(per_class * 1.25, len(rows) * 1.4 + 0.4),
        squeeze=False,
    )
    for row, (index, name) in enumerate(rows):
        members = np.flatnonzero(classes == index)
        chosen = np.sort(rng.choice(members, size=min(per_class, members.size), replace=False))
        fields = store.read_members(chosen)[:, 0]
        for column in range(per_class):
            axis = axes[row, column]
            axis.set_xticks([])
            axis.set_yticks([])
            if column < chosen.size:
                axis.imshow(fields[column], cmap="viridis", vmin=0.0, vmax=1.0)
            else:
                axis.set_axis_off()
        axes[row, 0].set_ylabel(f"{name}\n({members.size})", fontsize=8)
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path
