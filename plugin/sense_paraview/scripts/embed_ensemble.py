"""Embed an ensemble in ParaView, headless, and save the map, a selection and a screenshot.

    sense pvbatch embed_ensemble.py ENSEMBLE OUT_DIR [--bundle DIR] [--projection PCA]
                                    [--select "label == 1" | --ids ID ID ...]

ENSEMBLE: an .npz or member folder (read by the SENSE reader) or a .vtm / .pvd. Writes
OUT_DIR/embedding.csv (one row per member), OUT_DIR/selection.vtm (the selected members'
mosaic, mean and std), and OUT_DIR/layout.png (the linked layout: scatter | members). A failed
SENSE filter (bad input, unusable bundle), an OUT_DIR that is the ensemble, or one that another
SENSE process is writing ends the script with its message and exit status 1.

embedding.csv is written by SENSE's own CSV writer (not ParaView's SaveData), so that a member id
or class name that a spreadsheet would run as a formula is escaped like in every SENSE CSV.
"""

import argparse
import sys
from pathlib import Path

import paraview.simple as simple
from paraview.simple import LoadPlugin, OpenDataFile, SaveData, SaveScreenshot

from sense_core.embedding import write_columns_csv
from sense_core.errors import SenseError
from sense_core.io.atomic import check_output_outside_inputs, output_lock
from sense_paraview import FilterError, plugin_file, show_linked_layout, update_or_raise
from sense_paraview.linking import embedding_columns

PROJECTIONS = {"auto": "Auto", "umap": "UMAP", "projector": "Parametric projector", "pca": "PCA"}


def main(argv):
    parser = argparse.ArgumentParser(prog="embed_ensemble.py", description=__doc__.split("\n")[0])
    parser.add_argument("ensemble")
    parser.add_argument("out_dir")
    parser.add_argument("--bundle", default="", help="bundle folder (default: the shipped one)")
    parser.add_argument("--projection", choices=sorted(PROJECTIONS), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--select", help="numpy query over the table, e.g. 'label == 1'")
    chosen.add_argument("--ids", nargs="+", help="member ids to select")
    args = parser.parse_args(argv)

    if not hasattr(simple, "SENSEEmbedding"):  # not started through `sense pvbatch`
        LoadPlugin(str(plugin_file()))
    out = Path(args.out_dir)
    written = [out / name for name in ("embedding.csv", "selection.vtm", "layout.png")]
    check_output_outside_inputs(out, [args.ensemble], bundles=[args.bundle], writes=written)
    out.mkdir(parents=True, exist_ok=True)
    with output_lock(out):  # another SENSE process writing OUT_DIR stops this one at once
        embed(args, out)


def embed(args, out: Path) -> None:
    """Embed, select and save into ``out`` (see the module doc)."""
    if args.ensemble.endswith((".vtm", ".pvd")):
        ensemble = OpenDataFile(args.ensemble)
    else:
        ensemble = simple.SENSEEnsembleReader(FileName=args.ensemble)
    linked = show_linked_layout(
        ensemble, bundle=args.bundle, Projection=PROJECTIONS[args.projection], Seed=args.seed
    )
    write_columns_csv(embedding_columns(linked.embedding), out / "embedding.csv")
    if args.select:
        selected = linked.select_where(args.select)
    elif args.ids:
        linked.select(args.ids)
        selected = args.ids
    else:
        selected = []
    if selected:
        update_or_raise(linked.member_view)
        SaveData(str(out / "selection.vtm"), proxy=linked.member_view)
    linked.layout.SetSize(1600, 800)
    SaveScreenshot(str(out / "layout.png"), linked.layout, ImageResolution=[1600, 800])
    print(f"embedded {len(linked.class_names)} classes; selected {len(selected)} member(s)")
    print(
        f"wrote {out / 'embedding.csv'}, {out / 'layout.png'}"
        + (f", {out / 'selection.vtm'}" if selected else "")
    )


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (FilterError, SenseError) as exc:
        print(f"embed_ensemble.py: error: {exc}", file=sys.stderr)
        sys.exit(1)
