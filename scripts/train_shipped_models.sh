#!/usr/bin/env bash
# Regenerate the shipped default bundle models/channels64 with SENSE's own pipeline.
# Deterministic from the seeds; the exact commands are also recorded in models/*/sense.json.
set -euo pipefail
cd "$(dirname "$0")/.."
SENSE=${SENSE:-.venv/bin/sense}
WORK=${WORK:-out/ship}
mkdir -p "$WORK" models
$SENSE generate channels --n 1500 --size 64 --labeled-fraction 0.2 --seed 0 \
    --out "$WORK/channels64.npz" --overwrite
$SENSE fit --data "$WORK/channels64.npz" --out models/channels64 --profile quick \
    --labeler-epochs 4 --epochs 8 --loss recon,cluster --seed 0 --overwrite
