"""Data-parallel training plumbing (sense_training.distributed) with torchrun and gloo on CPU."""

from __future__ import annotations

import json
import os
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the training extra (torch) is not installed")

from helpers import run_process_tree  # noqa: E402

from sense_training.distributed import DistributedContext, RankShare  # noqa: E402

TORCHRUN = Path(sys.executable).with_name("torchrun")


def run_torchrun(script: Path, *args: str, processes: int = 2, cwd: Path | None = None):
    """Run ``script`` under torchrun with ``processes`` CPU ranks (gloo); fail with its output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE"))}
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    completed = run_process_tree(
        [str(TORCHRUN), "--standalone", f"--nproc_per_node={processes}", str(script), *args],
        600,
        env=env,
        cwd=cwd,
    )
    assert completed.returncode == 0, f"torchrun failed\n{completed.stdout}\n{completed.stderr}"
    return completed


def test_rank_share_splits_batches_evenly_and_disjointly():
    batches = list(range(11))
    shares = [list(RankShare(batches, DistributedContext(rank, 2))) for rank in range(2)]
    assert shares == [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    assert [len(RankShare(batches, DistributedContext(rank, 2))) for rank in range(2)] == [5, 5]
    assert list(RankShare(batches, DistributedContext())) == batches


def test_ddp_gloo_two_ranks_average_gradients_like_one_full_batch(tmp_path):
    script = tmp_path / "ddp_check.py"
    script.write_text(
        textwrap.dedent(
            """
        import json, sys
        import torch
        from sense_training.distributed import (
            RankShare, init_distributed, mean_over_ranks, shutdown, unwrap_model, wrap_model)
        context = init_distributed(torch.device("cpu"))
        torch.manual_seed(0)
        model = wrap_model(torch.nn.Linear(6, 2), context)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        data = torch.randn(8, 4, 6, generator=torch.Generator().manual_seed(1))
        target = torch.randn(8, 4, 2, generator=torch.Generator().manual_seed(2))
        losses = []
        for step in RankShare(list(range(8)), context):
            loss = torch.nn.functional.mse_loss(model(data[step]), target[step])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        weights = unwrap_model(model).weight.detach().flatten().tolist()
        json.dump({"rank": context.rank, "world": context.world_size, "weights": weights,
                   "mean_loss": mean_over_ranks(losses, context)},
                  open(sys.argv[1] + f".{context.rank}.json", "w"))
        del model, optimizer  # the DDP wrapper holds the process group
        shutdown(context)
        """
        )
    )
    run_torchrun(script, str(tmp_path / "out"))
    ranks = [json.loads((tmp_path / f"out.{rank}.json").read_text()) for rank in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["weights"] == ranks[1]["weights"], "replicas diverged"

    # The same steps in one process: each DDP step averages the gradients of batches 2k and
    # 2k+1, i.e. one step on their union (equal sizes, mean-reduced loss).
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.randn(8, 4, 6, generator=torch.Generator().manual_seed(1))
    target = torch.randn(8, 4, 2, generator=torch.Generator().manual_seed(2))
    for pair in range(4):
        rows = slice(2 * pair, 2 * pair + 2)
        loss = torch.nn.functional.mse_loss(
            model(data[rows].reshape(-1, 6)), target[rows].reshape(-1, 2)
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    expected = model.weight.detach().flatten()
    assert torch.allclose(torch.tensor(ranks[0]["weights"]), expected, atol=1e-6)


def test_train_encoder_under_torchrun_two_ranks_writes_one_bundle(tmp_path):
    """`torchrun --nproc_per_node 2 sense train-encoder` (gloo): both ranks train, rank 0 alone
    writes the bundle and reports; the run records its world size; the bundle embeds."""
    from helpers import make_ensemble

    from sense_core.io import write_ensemble

    data = write_ensemble(make_ensemble(count=96, height=16, width=16), tmp_path / "ens.npz")
    sense = Path(sys.executable).with_name("sense")
    completed = run_torchrun(
        sense,
        "train-encoder",
        "--data",
        str(data),
        "--bundle",
        str(tmp_path / "bundle"),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--latent",
        "4",
        "--loss",
        "recon,cluster",
        "--threads",
        "1",
        "--seed",
        "0",
    )
    assert completed.stdout.count("encoder written to") == 1, completed.stdout
    metrics = json.loads((tmp_path / "bundle" / "encoder_run" / "metrics.json").read_text())
    assert metrics["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert metrics["epochs_run"] == 2 and metrics["completed"]
    from sense_core.bundle import Bundle
    from sense_core.inference import Encoder

    bundle = Bundle.load(tmp_path / "bundle")
    latents = Encoder(bundle).encode(make_ensemble(count=5, height=16, width=16).fields)
    assert latents.shape == (5, 4) and np.isfinite(latents).all()


def test_train_labeler_under_torchrun_two_ranks_writes_one_bundle(tmp_path):
    """`torchrun --nproc_per_node 2 sense train-labeler` (gloo): each rank trains on half of
    the batches, rank 0 alone writes the bundle and reports; the labeler labels."""
    from helpers import make_ensemble

    from sense_core.bundle import Bundle
    from sense_core.inference import Labeler
    from sense_core.io import write_ensemble

    ensemble = make_ensemble(count=96, height=16, width=16)
    data = write_ensemble(ensemble, tmp_path / "ens.npz")
    sense = Path(sys.executable).with_name("sense")
    completed = run_torchrun(
        sense, "train-labeler", "--data", str(data), "--out", str(tmp_path / "bundle"),
        "--epochs", "2", "--batch-size", "8", "--threads", "1", "--seed", "0", "--no-progress",
    )  # fmt: skip
    assert completed.stdout.count("labeler tf_efficientnetv2") == 1, completed.stdout
    metrics = json.loads((tmp_path / "bundle" / "labeler_run" / "metrics.json").read_text())
    assert metrics["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert metrics["epochs_run"] == 2
    prediction = Labeler(Bundle.load(tmp_path / "bundle")).predict(ensemble.fields[:5])
    assert prediction.labels.shape == (5,) and np.isfinite(prediction.confidence).all()


def test_a_rank_loads_its_share_of_the_shuffled_batches_per_epoch():
    """make_loader with a 2-rank context: each rank gets every other batch of the epoch's
    shuffle (together: every batch of a complete round), and set_epoch reshuffles."""
    from helpers import make_ensemble

    from sense_training.data import EnsembleDataset, make_loader, set_epoch

    dataset = EnsembleDataset(make_ensemble(count=40))
    whole = make_loader(dataset, 4, shuffle=True, seed=1)
    shares = [
        make_loader(dataset, 4, shuffle=True, seed=1, context=DistributedContext(rank, 2))
        for rank in range(2)
    ]
    for epoch in (0, 1):
        for loader in (whole, *shares):
            set_epoch(loader, epoch)
        batches = [batch[2].tolist() for batch in whole]
        assert len(shares[0]) == len(shares[1]) == 5
        for rank, loader in enumerate(shares):
            assert [batch[2].tolist() for batch in loader] == batches[rank::2]
        if epoch == 0:
            first = batches
    assert batches != first  # another shuffle in epoch 1
