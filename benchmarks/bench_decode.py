"""Decoding the map: how far fields decoded at members' own map positions (leave-one-out
interpolation of the neighbours' latents, :func:`sense_core.decode.decoding_fidelity`) are from
the members and from their reconstructions, for bundles of the label-efficiency benchmark.

Run: ``.venv/bin/python benchmarks/bench_decode.py --bundles out/label_efficiency3/bundles
[--ensembles drops,ising,...] [--json F]`` (bundles named
``<ensemble>_<fraction>_s<seed>_<method>``, as bench_label_efficiency.py writes them; the
ensembles are regenerated the same way).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main(argv: list[str] | None = None) -> int:
    import bench_label_efficiency as bench

    from sense_core.decode import decoding_fidelity
    from sense_core.embedding import embed_ensemble

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundles", type=Path, required=True)
    parser.add_argument("--ensembles", default="ising,textures,drops,digits,channels")
    parser.add_argument("--suffix", default="_0.05_s0_latent", help="bundle name after <ensemble>")
    parser.add_argument("--n", type=int, default=1200)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rows = []
    for name in args.ensembles.split(","):
        ensemble = bench.make_ensemble(name, args.n, args.size, 0, [])
        bundle = args.bundles / f"{name}{args.suffix}"
        embedding = embed_ensemble(ensemble, bundle)
        row = {
            "ensemble": name,
            "bundle": str(bundle),
            **decoding_fidelity(embedding, ensemble, bundle),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        load = [round(x, 2) for x in os.getloadavg()]
        args.json.write_text(json.dumps({"load_after": load, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
