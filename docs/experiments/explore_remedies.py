"""Quick exploration of clustering-loss remedies: train variants without export or evaluation
and print the clustering loss (1 − mean silhouette) on train / validation per epoch.

Usage (from the repo root)::

    nice -n 15 .venv/bin/python docs/experiments/explore_remedies.py out/enc/channels32.npz \
        out/enc/explore/runs '{"trim050": {"trim_fraction": 0.5}, "flip": {"augment": "hflip"}}'

Every variant starts from the settings of ``grid_channels32.toml``'s ``sense_cluster`` (AE,
latent 32, 16 base channels, dropout 0.3, 8 epochs, batch 64, λ warm-up 2, recon + cluster,
1 torch thread) overridden by its JSON values (``EncoderConfig`` fields). One line per variant:
seconds, selected epoch, the selected epoch's gap and ``val_cluster``, then
``train/val`` per epoch.
"""

from __future__ import annotations

import json
import sys
import time

from sense_core.io import open_ensemble
from sense_training.encoder import EncoderConfig, train_encoder

BASE = {
    "arch": "ae",
    "latent_dim": 32,
    "base_channels": 16,
    "dropout": 0.3,
    "epochs": 8,
    "batch_size": 64,
    "warmup_epochs": 2,
    "threads": 1,
    "losses": "recon,cluster",
}


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__)
        return 2
    data, out, spec = argv
    variants = json.loads(spec)
    store = open_ensemble(data)
    for name, values in variants.items():
        tick = time.perf_counter()
        result = train_encoder(
            store,
            f"{out}/{name}",
            EncoderConfig.from_dict({**BASE, **values}),
            export=False,
            log=lambda *_: None,
            command=["explore_remedies.py", name],
        )
        selected = result.metrics["selected"]
        curve = " ".join(
            f"{r['train_cluster']:.2f}/{r['val_cluster']:.2f}" for r in result.history.records
        )
        print(
            f"{name} {time.perf_counter() - tick:.0f}s sel {result.metrics['selected_epoch']} "
            f"gap {selected['cluster_gap']:.3f} val {selected['val_cluster']:.3f} | {curve}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
