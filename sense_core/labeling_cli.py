"""``sense label`` and ``sense suggest``: hand labels in the ensemble's label sidecar, and which
members to label next. They parse, call :mod:`sense_core.label_store` and
:mod:`sense_core.suggest`, and print; nothing heavy is imported at module level."""

from __future__ import annotations

import argparse
import csv
import io
from pathlib import Path

from sense_core.cli_options import (
    add_inference_options,
    add_reader_options,
    guard_output,
    open_from_args,
)
from sense_core.errors import SenseError

LABEL_DESCRIPTION = """\
Give members a class by hand, without rewriting the ensemble: the labels go to its label
sidecar, <ensemble>.sense/labels.csv (F.sense/ beside a member folder F, x.npz.sense/ beside
x.npz; under $SENSE_LABELS_HOME or ~/.local/share/sense/labels/ when the ensemble's folder is
read-only), with their source (hand, or corrected: a hand label replacing a prediction), time
and step. Every reader applies it: sense info, embed, fit and the ParaView reader see these
labels over the ensemble's own (--no-sidecar ignores them). Each call is one step; --undo takes
the last one back. See docs/labeling.md.

  sense label ENS --class meander --members m000003,m000017
  sense label ENS --class meander --from-csv suggestions.csv    (its member_id column)
  sense label ENS --from-csv answers.csv                         (member_id,class per row)
  sense label ENS --unlabel --members m000003
  sense label ENS --undo
  sense label ENS --list
"""

SUGGEST_DESCRIPTION = """\
Suggest which members to label next: the map is cut into --count regions (k-means of the latent
vectors) and one unlabeled member is picked per region: in regions without any hand label the
most typical member (nearest the region's centre), elsewhere the one the labeler is least sure
of (margin or entropy of its class probabilities; without a labeler, the member farthest from
the hand-labeled ones). Regions without hand labels come first. With --bundle the latent vectors
and probabilities are the bundle's; without, PCA of the raw fields (no labeler). Hand labels
include the label sidecar's (sense label). Deterministic for a --seed.

Prints the members; --out writes member_id,rank,reason,score,region (score: uncertainty, 0..1)
and a mosaic of the suggested members beside it (same name, .png).
"""


def _split_ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    from sense_core.io.escape import unescape_cell

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SenseError(f"{path}: cannot read ({exc})") from exc
    try:
        rows = [row for row in csv.reader(io.StringIO(text)) if row]
    except csv.Error as exc:
        raise SenseError(f"{path}: not valid CSV ({exc})") from exc
    if not rows:
        raise SenseError(f"{path}: empty file (expected a header with member_id)")
    header = [unescape_cell(cell.strip()).lower() for cell in rows[0]]
    if "member_id" not in header:
        raise SenseError(f"{path}: no member_id column (header: {','.join(header)})")
    return header, [[unescape_cell(cell.strip()) for cell in row] for row in rows[1:]]


def _from_csv(path: Path, class_name: str | None) -> list[tuple[str, str]] | list[str]:
    """Member ids (with --class) or (member id, class) pairs from a CSV with a header."""
    header, rows = _read_csv_rows(path)
    id_column = header.index("member_id")
    if class_name is not None:
        return [row[id_column] for row in rows if len(row) > id_column and row[id_column]]
    column = next((header.index(c) for c in ("class", "label", "class_name") if c in header), None)
    if column is None:
        raise SenseError(
            f"{path}: no class column (class, label or class_name); or give --class for all rows"
        )
    pairs = []
    for line, row in enumerate(rows, start=2):
        if len(row) <= max(id_column, column) or not row[id_column]:
            raise SenseError(f"{path}, row {line}: needs a member_id and a class")
        pairs.append((row[id_column], row[column]))
    return pairs


def _run_label(args: argparse.Namespace) -> int:
    from sense_core import label_store

    actions = [bool(args.undo), bool(args.list), bool(args.unlabel), args.class_name is not None]
    if sum(actions[:3]) > 1 or (args.class_name is not None and sum(actions[:3])):
        raise SenseError("give one of --class, --unlabel, --undo or --list")
    if args.list:
        return _print_labels(args.ensemble)
    if args.undo:
        print(label_store.undo(args.ensemble).message)
        return 0
    if args.members and args.from_csv:
        raise SenseError("give the members with --members or --from-csv, not both")
    members = _split_ids(args.members) if args.members else []
    if args.unlabel:
        if args.from_csv:
            members = _from_csv(Path(args.from_csv), "")
        print(label_store.unlabel(args.ensemble, members).message)
        return 0
    if args.from_csv:
        found = _from_csv(Path(args.from_csv), args.class_name)
        if args.class_name is None:
            print(label_store.assign(args.ensemble, found, source=args.source).message)
            return 0
        members = found
    if args.class_name is None:
        raise SenseError(
            "give --class NAME (or --from-csv with a class column, --unlabel, --undo, --list)"
        )
    print(label_store.label(args.ensemble, members, args.class_name, source=args.source).message)
    return 0


def _print_labels(ensemble: str) -> int:
    from sense_core import label_store

    sidecar = label_store.read_labels(ensemble)
    if not sidecar.exists:
        print(f"{ensemble}: no label sidecar yet (it would be {sidecar.folder})")
        return 0
    counts = sidecar.counts()
    print(
        f"{sidecar.labels_path}: {len(sidecar.records)} member(s): {counts['hand']} hand, "
        f"{counts['corrected']} corrected, {counts['unlabeled']} unlabeled"
    )
    for record in sidecar.records.values():
        shown = record.class_name if record.source != "unlabeled" else "-"
        print(f"  {record.member_id}\t{shown}\t{record.source}\t{record.time}\tstep {record.step}")
    for entry in sidecar.history:
        what = f" as {entry['class']!r}" if entry.get("class") else ""
        print(f"  step {entry['step']} {entry['time']}: {entry['action']} {entry['members']}{what}")
    return 0


def _run_suggest(args: argparse.Namespace) -> int:
    from sense_core.suggest import suggest_for_ensemble, write_suggestions

    out = Path(args.out) if args.out else None
    png = None if out is None or args.no_plot else out.with_suffix(".png")
    for path in [p for p in (out, png) if p is not None]:
        if path.exists() and not args.overwrite:
            raise SenseError(f"{path} already exists (pass --overwrite to replace it)")
    store = open_from_args(args.ensemble, args)
    suggestion = suggest_for_ensemble(
        store,
        args.bundle,
        count=args.count,
        seed=args.seed,
        uncertainty=args.uncertainty,
        device=args.device,
        batch_size=args.batch_size,
        threads=args.threads,
    )
    ids = suggestion.member_ids(store.member_ids)
    source = f"the bundle {args.bundle}" if args.bundle else "PCA of the raw fields (no bundle)"
    print(
        f"{len(ids)} member(s) to label next ({suggestion.method} uncertainty; latents: {source}):"
    )
    for rank, (member_id, reason) in enumerate(zip(ids, suggestion.reasons), start=1):
        print(f"  {rank:3d}. {member_id}: {reason}")
    if out is not None:
        for path in write_suggestions(suggestion, store, out, png):
            print(f"  wrote {path}")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register ``label`` and ``suggest`` on the ``sense`` subcommands."""
    label = commands.add_parser(
        "label",
        help="label members by hand (kept in the ensemble's label sidecar), unlabel, undo, list",
        description=LABEL_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    label.add_argument("ensemble", help="ensemble .npz file or folder of members")
    label.add_argument(
        "--class", dest="class_name", default=None, help="class to give (new or existing)"
    )
    label.add_argument("--members", default=None, help="member ids, comma-separated")
    label.add_argument(
        "--from-csv",
        default=None,
        help="CSV with a member_id column (e.g. sense suggest's output); without --class, its "
        "class (or label) column gives each member's class",
    )
    label.add_argument(
        "--source",
        choices=("hand", "corrected"),
        default="hand",
        help="provenance: hand (default), or corrected (a hand label replacing a prediction)",
    )
    label.add_argument("--unlabel", action="store_true", help="remove the members' labels")
    label.add_argument("--undo", action="store_true", help="take back the last labeling step")
    label.add_argument("--list", action="store_true", help="print the sidecar's labels and steps")
    label.set_defaults(handler=_run_label)

    suggest = commands.add_parser(
        "suggest",
        help="suggest which members to label next (uncertain ones, across the map's regions)",
        description=SUGGEST_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    suggest.add_argument("ensemble", help="ensemble .npz file or folder of members")
    suggest.add_argument("--bundle", default=None, help="model bundle folder (with sense.json)")
    suggest.add_argument("--count", type=int, default=20, help="members to suggest (default 20)")
    suggest.add_argument("--out", default=None, help="write the suggestions to this CSV (and .png)")
    suggest.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    suggest.add_argument("--no-plot", action="store_true", help="do not write the mosaic .png")
    suggest.add_argument("--seed", type=int, default=0, help="k-means / PCA seed (default 0)")
    suggest.add_argument(
        "--uncertainty",
        choices=("margin", "entropy"),
        default="margin",
        help="labeler uncertainty: margin between the two likeliest classes (default) or entropy",
    )
    add_inference_options(suggest, labeler=False)
    add_reader_options(suggest)

    def _guarded(args: argparse.Namespace) -> int:
        if args.out is None:
            return _run_suggest(args)
        png = [] if args.no_plot else [Path(args.out).with_suffix(".png")]
        return guard_output(
            _run_suggest, inputs=("ensemble",), bundles=("bundle",), writes=lambda a: png
        )(args)

    suggest.set_defaults(handler=_guarded)
