"""Encoder throughput: SENSE's product path vs bare onnxruntime vs torch eager, same model.

The model is the project's convolutional autoencoder encoder (sense_training.models.autoencoder,
latent 32), exported with sense_training.export.export_onnx into a bundle. For each member size
(64² and 128² by default) the three paths run interleaved for a few rounds on the same random
members; the best and median members/s of each are reported with the ratios:

- product: ``sense_core.inference.Encoder.encode_store`` (reads batches from an in-memory
  ensemble, normalises with the bundle's statistics, runs the session, collects the latents);
- onnxruntime: ``session.run`` on pre-normalised batches (the floor the product path adds to);
- torch: the same torch module in eval mode under ``torch.no_grad``.

``--stream N`` also embeds N synthetic members (generated on the fly, never all in memory) at the
largest size through the product path and reports the peak RSS: the memory bound of streaming.

Run: ``.venv/bin/python benchmarks/bench_inference.py [--sizes 64 128] [--threads 2] [--json F]``.
These machines are shared: compare numbers from one run only.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def describe_machine(threads: int | None) -> dict:
    """CPU model, cores, load and library versions: enough to compare runs honestly."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from sense_core.bundle import software_versions

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "threads": threads,
        "platform": platform.platform(),
        "versions": software_versions("numpy", "onnxruntime", "onnxruntime-gpu", "torch"),
    }


def build_encoder(size: int, latent_dim: int):
    """The project's AE encoder (torch, eval mode) for (1, size, size) members."""
    from sense_training.models.autoencoder import (
        AutoencoderConfig,
        LatentEncoder,
        build_autoencoder,
    )

    model = build_autoencoder(AutoencoderConfig(input_shape=(1, size, size), latent_dim=latent_dim))
    return LatentEncoder(model).eval()


def make_bundle(folder: Path, network, size: int) -> Path:
    import torch

    from sense_core.bundle import add_model, new_manifest
    from sense_core.ensemble import NormalizationStats
    from sense_training.export import export_onnx

    onnx_path = folder / f"encoder{size}.onnx"
    report = export_onnx(network, torch.zeros(2, 1, size, size), onnx_path, "fields", "latent")
    stats = NormalizationStats(mean=(0.2,), std=(1.5,), count=1000)
    bundle = folder / f"bundle{size}"
    add_model(
        bundle,
        "encoder",
        onnx_path,
        new_manifest((1, size, size), stats, ["a", "b"]),
        input_name="fields",
        output_name="latent",
        opset=report.opset,
    )
    return bundle


def bench_size(size: int, members: int, batch: int, rounds: int, threads, device, latent: int):
    import torch

    from sense_core.bundle import Bundle
    from sense_core.ensemble import Ensemble
    from sense_core.inference import Encoder

    network = build_encoder(size, latent)
    with tempfile.TemporaryDirectory() as scratch:
        bundle = Bundle.load(make_bundle(Path(scratch), network, size))
        encoder = Encoder(bundle, device=device, threads=threads, batch_size=batch)
        rng = np.random.default_rng(0)
        ensemble = Ensemble(fields=rng.normal(size=(members, 1, size, size)).astype(np.float32))
        normalized = bundle.normalization.apply(ensemble.fields)
        session = encoder.model.session
        batches = [normalized[i : i + batch] for i in range(0, members, batch)]

        def product():
            encoder.encode_store(ensemble)

        def bare():
            for chunk in batches:
                session.run(["latent"], {"fields": chunk})

        def eager():
            with torch.no_grad():
                for chunk in batches:
                    network(torch.from_numpy(chunk))

        paths = {"product": product, "onnxruntime": bare, "torch": eager}
        for run in paths.values():  # warm-up: allocators, kernels, caches
            run()
        rates: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(rounds):
            for name, run in paths.items():
                tick = time.perf_counter()
                run()
                rates[name].append(members / (time.perf_counter() - tick))
        # Same numbers on both paths (parity through the product path).
        with torch.no_grad():
            expected = network(torch.from_numpy(normalized[:batch])).numpy()
        parity = float(np.max(np.abs(encoder.encode(ensemble.fields[:batch]) - expected)))
        result = {
            "size": size,
            "members": members,
            "batch": batch,
            "provider": encoder.provider,
            "max_abs_diff_vs_torch": parity,
        }
        for name, values in rates.items():
            result[name] = {
                "best": round(max(values), 1),
                "median": round(statistics.median(values), 1),
            }
        result["ratio_product_vs_onnxruntime"] = round(
            result["product"]["median"] / result["onnxruntime"]["median"], 3
        )
        result["ratio_onnxruntime_vs_torch"] = round(
            result["onnxruntime"]["median"] / result["torch"]["median"], 3
        )
        return result


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss, not inherited from the
    parent across exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class SyntheticStore:
    """Members made on demand from their index (as a reader streams them from disk)."""

    @staticmethod
    def make(count: int, size: int):
        from sense_core.ensemble import MemberStore

        class Store(MemberStore):
            def __init__(self) -> None:
                self.member_ids = tuple(f"m{i}" for i in range(count))
                self.labels = np.full(count, -1)
                self.class_names = ()
                self.metadata = {}

            @property
            def member_shape(self):
                return (1, size, size)

            def read_members(self, indices):
                out = np.empty((len(indices), 1, size, size), np.float32)
                for row, index in enumerate(indices):
                    out[row] = np.random.default_rng(int(index)).normal(size=(1, size, size))
                return out

        return Store()


def stream_child(bundle: str, count: int, size: int, batch: int, threads, device) -> dict:
    """In a process without torch: embed ``count`` synthetic members, report peak RSS."""
    from sense_core.bundle import Bundle
    from sense_core.inference import Encoder, run_over_store

    encoder = Encoder(Bundle.load(bundle), device=device, threads=threads, batch_size=batch)
    encoder.encode(np.zeros((2, 1, size, size), np.float32))
    rss_before = peak_rss_mb()
    tick = time.perf_counter()
    run = run_over_store(SyntheticStore.make(count, size), encoder, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - tick
    return {
        "members": count,
        "size": size,
        "batch": batch,
        "fields_gb": round(count * size * size * 4 / 1e9, 2),
        "seconds": round(seconds, 1),
        "members_per_second": round(count / seconds, 1),
        "peak_rss_mb_before_streaming": rss_before,
        "peak_rss_mb": peak_rss_mb(),
        "latents_mb": round(run.latents.nbytes / 1e6, 1),
        "torch_imported": "torch" in sys.modules,
        "provider": encoder.provider,
    }


def bench_stream(count: int, size: int, batch: int, threads, device, latent: int) -> dict:
    """Export the encoder, then stream in a fresh process (no torch) to measure its memory."""
    import subprocess

    with tempfile.TemporaryDirectory() as scratch:
        bundle = make_bundle(Path(scratch), build_encoder(size, latent), size)
        command = [sys.executable, __file__, "--stream-child", str(bundle), str(count), str(size)]
        command += ["--batch", str(batch), "--device", device]
        if threads:
            command += ["--threads", str(threads)]
        result = subprocess.run(command, capture_output=True, text=True, timeout=7200)
        if result.returncode != 0:
            raise RuntimeError(result.stderr)
        return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--members", type=int, default=None, help="default 1024 (64²) / 256")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime and torch threads")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--stream", type=int, default=0, help="also stream N synthetic members")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument(
        "--stream-child", nargs=3, metavar=("BUNDLE", "N", "SIZE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.stream_child:
        bundle, count, size = args.stream_child
        row = stream_child(bundle, int(count), int(size), args.batch, args.threads, args.device)
        print(json.dumps(row))
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"machine": describe_machine(args.threads), "sizes": []}
    results["machine"]["torch_threads"] = torch.get_num_threads()
    for size in args.sizes:
        members = args.members or max(128, int(1024 * (64 / size) ** 2))
        row = bench_size(
            size, members, args.batch, args.rounds, args.threads, args.device, args.latent
        )
        print(json.dumps(row), flush=True)
        results["sizes"].append(row)
    if args.stream:
        row = bench_stream(
            args.stream, max(args.sizes), args.batch, args.threads, args.device, args.latent
        )
        print(json.dumps(row), flush=True)
        results["stream"] = row
    text = json.dumps(results, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
