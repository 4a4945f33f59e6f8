"""Per-member metadata reaches the map (issue 17): every metadata column of the ensemble is a
column of embedding.csv and an array of embedding.npz, under its own name unless SENSE uses
that name already."""

from __future__ import annotations

import csv

import numpy as np
from helpers import make_ensemble, make_runtime_bundle

from sense_core.embedding import embed_ensemble, read_embedding, write_csv, write_npz
from sense_core.ensemble import Ensemble
from sense_core.projection import ProjectionOptions


def test_metadata_columns_reach_the_csv_and_the_npz(tmp_path):
    make_runtime_bundle(tmp_path / "bundle")
    base = make_ensemble(count=20)
    metadata = {
        **base.metadata,  # amplitude (float), chain (int)
        "source": np.array([f"image{i % 3}" for i in range(20)]),
        "label": np.arange(20) * 10,  # a name SENSE's own columns use
    }
    ensemble = Ensemble(
        fields=base.fields,
        labels=base.labels,
        class_names=base.class_names,
        member_ids=base.member_ids,
        metadata=metadata,
    )
    embedding = embed_ensemble(ensemble, tmp_path / "bundle", projection=ProjectionOptions("pca"))
    assert set(embedding.metadata) == {"amplitude", "chain", "source", "label"}

    rows = list(csv.DictReader(write_csv(embedding, tmp_path / "e.csv").open()))
    assert [r["source"] for r in rows] == list(metadata["source"])
    assert [int(r["chain"]) for r in rows] == list(metadata["chain"])
    np.testing.assert_allclose(
        [float(r["amplitude"]) for r in rows], metadata["amplitude"], rtol=1e-6
    )
    assert [int(r["metadata_label"]) for r in rows] == list(metadata["label"])
    hand = [(int(r["label"]), int(label)) for r, label in zip(rows, ensemble.labels) if label >= 0]
    assert all(a == b for a, b in hand)  # SENSE's own label column is kept

    back = read_embedding(write_npz(embedding, tmp_path / "e.npz"))
    assert set(back.metadata) == set(metadata)
    np.testing.assert_array_equal(back.metadata["source"], metadata["source"])
    np.testing.assert_array_equal(back.metadata["chain"], metadata["chain"])
