#!/usr/bin/env bash
# Pseudo-labelled copies of the 32-px channels and drops ensembles for the label-noise
# ablation (grid_*_noise.toml): a labeler (EfficientNetV2-B0, 12 epochs, 1 thread) trained on
# each ensemble's hand-labeled training members labels the other members.
# Usage (repo root): bash docs/experiments/make_pseudo_labelled.sh
set -euo pipefail
for name in channels32 drops32; do
  .venv/bin/sense train-labeler --data "out/enc/$name.npz" --out "out/enc/labeler_$name" \
    --epochs 12 --threads 1 --overwrite
  .venv/bin/sense pseudo-label --data "out/enc/$name.npz" --bundle "out/enc/labeler_$name" \
    --out "out/enc/${name}_pseudo.npz" --overwrite --no-progress
done
