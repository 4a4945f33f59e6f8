"""Paths through the map (issue 19, item 1) and chain convergence (item 2): the generators
record their members' order, paths are built from it (unsorted steps, gaps, time series),
``sense paths`` draws them, the ParaView filter ``SENSE Paths`` outputs one line per path, and
R-hat/ESS tell mixed chains from stuck ones."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_paraview_script

from sense_core.embedding import Embedding, write_csv, write_npz
from sense_core.errors import SenseError
from sense_core.generators import generate_with_info
from sense_core.generators.convergence import (
    convergence_from_metadata,
    effective_sample_size,
    split_r_hat,
)
from sense_core.paths import build_paths, find_order_columns, find_paths

FAST_CHANNELS = {"burn_in": 60, "thin": 2, "tempering_levels": 2, "hottest_temperature": 5.0}


def make_embedding(metadata: dict, count: int, seed: int = 0, ids=None) -> Embedding:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, size=count)
    return Embedding(
        member_ids=tuple(ids or (f"m{i:03d}" for i in range(count))),
        latents=rng.normal(size=(count, 4)).astype(np.float32),
        xy=rng.normal(size=(count, 2)).astype(np.float32),
        labels=labels,
        label_source=np.array(["predicted"] * count),
        confidence=np.ones(count, np.float32),
        class_names=("a", "b", "c"),
        metadata={k: np.asarray(v) for k, v in metadata.items()},
    )


# ------------------------------------------------------------------ generators record order


def test_channels_members_carry_chain_step_and_convergence():
    ensemble, info = generate_with_info("channels", 60, 16, 0.2, seed=1, **FAST_CHANNELS)
    meta = ensemble.metadata
    chains = info.stats["chains"]
    assert {"chain", "step", "problem", "problem_r_hat", "problem_ess"} <= set(meta)
    assert sorted(np.unique(meta["chain"]).tolist()) == list(range(chains))
    for chain in range(chains):
        steps = meta["step"][meta["chain"] == chain]
        assert np.all(np.diff(steps) == FAST_CHANNELS["thin"])  # thinned states, in order
        assert steps[0] == FAST_CHANNELS["burn_in"] + FAST_CHANNELS["thin"]
    paths = find_paths(ensemble.member_ids, meta)
    assert (paths.group_column, paths.order_column) == ("chain", "step")
    assert len(paths) == chains
    problems = len(info.stats["r_hat"])
    assert problems == info.options["problems"] and len(info.stats["ess"]) == problems
    back = convergence_from_metadata(meta)
    np.testing.assert_allclose(back["r_hat"], info.stats["r_hat"])
    np.testing.assert_allclose(back["ess"], info.stats["ess"])


def test_drops_simulations_are_seen_at_increasing_times():
    ensemble, info = generate_with_info("drops", 50, 32, 0.2, seed=2, times_per_simulation=6)
    meta = ensemble.metadata
    assert info.stats["simulations"] == len(np.unique(meta["simulation"]))
    assert np.bincount(meta["parameter_regime"], minlength=7).tolist() == [8, 7, 7, 7, 7, 7, 7]
    for sim in np.unique(meta["simulation"]):
        mine = meta["simulation"] == sim
        assert 1 <= mine.sum() <= 6
        assert np.all(np.diff(meta["time"][mine]) > 0)  # impact -> later
        assert np.unique(meta["weber"][mine]).size == 1  # one impact: one parameter set
    paths = find_paths(ensemble.member_ids, meta)
    assert (paths.group_column, paths.order_column) == ("simulation", "time")
    # one snapshot per simulation: independent members, every simulation id distinct
    single, _ = generate_with_info("drops", 21, 32, 0.2, seed=2, times_per_simulation=1)
    assert np.unique(single.metadata["simulation"]).size == 21
    assert "--times-per-simulation 6" in info.command()
    with pytest.raises(SenseError, match="times_per_simulation"):
        generate_with_info("drops", 10, 32, times_per_simulation=0)


# ------------------------------------------------------------------ building paths


def test_paths_are_sorted_by_step_and_groups_numerically():
    group = np.array([10, 2, 2, 10, 2, 10, 2])
    step = np.array([3.0, 9.0, 1.0, 1.0, 5.0, 2.0, 7.0])
    built = build_paths(group, step)
    assert [label for label, _ in built] == ["2", "10"]  # numeric order, not "10" < "2"
    assert built[0][1].tolist() == [2, 4, 6, 1]
    assert built[1][1].tolist() == [3, 5, 0]
    as_floats = build_paths(np.where(group == 2, np.nan, group.astype(float)), step)
    assert [(label, p.tolist()) for label, p in as_floats] == [("10", [3, 5, 0])]


def test_gaps_nan_steps_short_pieces_and_duplicates():
    group = np.zeros(8, dtype=int)
    step = np.array([1, 2, 3, 10, 11, 30, np.nan, 12], dtype=float)
    whole = build_paths(group, step)
    assert whole[0][1].tolist() == [0, 1, 2, 3, 4, 7, 5]  # NaN left out, gaps bridged
    pieces = build_paths(group, step, max_gap=5)
    assert [label for label, _ in pieces] == ["0#1", "0#2"]  # the lone step 30 is dropped
    assert [p.tolist() for _, p in pieces] == [[0, 1, 2], [3, 4, 7]]
    with pytest.raises(SenseError, match="group '0' has two members with step 2"):
        build_paths(group, np.array([1, 2, 2, 3, 4, 5, 6, 7.0]), order_name="step")


def test_order_columns_are_found_or_named_and_time_series_ids_work():
    assert find_order_columns({"chain": 0, "step": 0, "time": 0}) == ("chain", "step")
    assert find_order_columns({"simulation": 0, "time": 0}) == ("simulation", "time")
    assert find_order_columns({"time": 0}) == (None, "time")
    assert find_order_columns({"run_id": 0, "k": 0}, (), "run_id", "k") == ("run_id", "k")
    with pytest.raises(SenseError, match="the members carry no order"):
        find_order_columns({"amplitude": 0}, ["a", "b"])
    with pytest.raises(SenseError, match="order column 'tick' is not in the table"):
        find_order_columns({"amplitude": 0}, (), order="tick")
    ids = [f"t{i:06d}" for i in (2, 0, 1)]
    series = find_paths(ids, {})
    assert series.group_column is None and len(series) == 1
    assert series.paths[0].tolist() == [1, 2, 0]
    chosen = find_paths([f"m{i}" for i in range(6)], {"c": np.array([0, 0, 1, 1, 2, 2]),
                        "s": np.arange(6)}, "c", "s")  # fmt: skip
    assert chosen.through([3]) == [1]
    assert [p.tolist() for p in chosen.subset([2, 0]).paths] == [[4, 5], [0, 1]]


# ------------------------------------------------------------------ R-hat and ESS


def test_r_hat_and_ess_tell_mixed_from_stuck_chains():
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(400, 4))
    stuck = mixed + np.array([0.0, 3.0, 6.0, 9.0])
    assert split_r_hat(mixed) < 1.01
    assert split_r_hat(stuck) > 2.0
    drifting = mixed + np.linspace(0, 6, 400)[:, None]  # every chain drifts the same way
    assert split_r_hat(drifting) > 1.5  # only splitting the chains sees this
    assert 1200 < effective_sample_size(mixed) < 2000  # about 1600 independent draws
    sticky = np.empty_like(mixed)  # AR(1), phi = 0.9: ESS about N (1 - phi) / (1 + phi)
    sticky[0] = mixed[0]
    for t in range(1, 400):
        sticky[t] = 0.9 * sticky[t - 1] + np.sqrt(1 - 0.81) * mixed[t]
    assert 40 < effective_sample_size(sticky) < 180
    assert np.isnan(split_r_hat(mixed[:3]))


def test_even_odd_swaps_propose_every_other_neighbour_pair_at_once():
    from sense_core.generators import channels as ch

    temperatures = ch.temperature_ladder(5, 16.0)
    groups = 3
    log_lik = np.tile(np.arange(5) * -100.0, groups)  # colder = far better
    state = np.arange(15, dtype=float)[:, None] * np.ones((1, ch.N_CONTINUOUS))
    n_channels = np.arange(15)
    rng = np.random.default_rng(0)
    args = (state.copy(), n_channels.copy(), log_lik.copy(), temperatures, rng)
    assert ch._swap_levels(*args, parity=0) == (0, 6)  # (0,1), (2,3) in each group: all refused
    flipped = log_lik[::-1].copy()  # hotter = better: every proposed swap is accepted
    swapped = n_channels.copy()
    assert ch._swap_levels(state.copy(), swapped, flipped, temperatures, rng, parity=1) == (6, 6)
    assert swapped[:5].tolist() == [0, 2, 1, 4, 3]  # pairs (1,2) and (3,4) exchanged
    ensemble, info = generate_with_info(
        "channels", 40, 16, 0.2, seed=2, **{**FAST_CHANNELS, "tempering_levels": 3},
        swap_scheme="even_odd",
    )  # fmt: skip
    assert 0.0 < info.stats["swap_acceptance"] < 1.0
    assert "--swap-scheme even_odd" in info.command()
    with pytest.raises(SenseError, match="swap_scheme must be one of"):
        generate_with_info("channels", 10, 16, swap_scheme="sometimes")


# ------------------------------------------------------------------ CLI


def _ordered_embedding() -> Embedding:
    chain = np.repeat(np.arange(4), 6)
    step = np.tile(np.arange(6) * 10, 4)[::-1].copy()  # unsorted in member order
    return make_embedding({"chain": chain, "step": step, "amplitude": np.arange(24.0)}, 24)


@pytest.mark.parametrize("table", ["npz", "csv"])
def test_sense_paths_writes_the_plot_csv_and_vtk(tmp_path, table, capsys):
    from sense_core.cli import main

    embedding = _ordered_embedding()
    source = (write_npz if table == "npz" else write_csv)(embedding, tmp_path / f"e.{table}")
    png, csv_out, vtk_out = tmp_path / "paths.png", tmp_path / "paths.csv", tmp_path / "p.vtk"
    args = ["paths", str(source), "--out", str(png), "--csv", str(csv_out), "--vtk", str(vtk_out)]
    assert main(args) == 0
    assert "4 paths (chain + step) through 24 of 24 members" in capsys.readouterr().out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    rows = csv_out.read_text().splitlines()
    assert rows[0].split(",") == ["member_id", "path", "group", "position", "step", "x", "y"]
    first = [r.split(",") for r in rows[1:7]]
    assert [float(r[4]) for r in first] == [0, 10, 20, 30, 40, 50]  # sorted by step
    assert [r[0] for r in first] == [f"m{i:03d}" for i in (5, 4, 3, 2, 1, 0)]
    text = vtk_out.read_text()
    assert "LINES 4 28" in text and "SCALARS step double 1" in text
    assert main([*args[:2], "--out", str(png)]) == 2  # exists, no --overwrite
    assert main([*args[:2], "--out", str(png), "--overwrite", "--members", "m007"]) == 0
    assert "1 paths (chain + step) through 6 of 24" in capsys.readouterr().out
    assert main([*args[:2], "--out", str(png), "--overwrite", "--order", "nothing"]) == 2
    assert "order column 'nothing' is not in the table" in capsys.readouterr().err


def test_sense_info_reports_convergence(tmp_path, capsys):
    from sense_core.cli import main
    from sense_core.io import write_ensemble

    ensemble, info = generate_with_info("channels", 60, 16, 0.2, seed=1, **FAST_CHANNELS)
    path = write_ensemble(ensemble, tmp_path / "ch.npz")
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "MCMC convergence per problem: split-R-hat " in out
    assert f"{info.stats['r_hat'][0]:.2f}" in out


def test_sense_generate_channels_with_jumps_records_and_reproduces_them(tmp_path, capsys):
    """``--jump-every`` reaches the sampler (jump acceptance recorded), the printed command
    repeats it, and that command makes the same members."""
    from sense_core.cli import main
    from sense_core.io import read_ensemble

    args = ["generate", "channels", "--n", "40", "--size", "16", "--seed", "4",
            "--chains-per-problem", "4", "--burn-in", "60", "--thin", "2",
            "--tempering-levels", "2", "--jump-every", "2", "--no-progress"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "a.npz")]) == 0
    assert "; jumps between chains 0." in capsys.readouterr().out
    at = args.index("--jump-every")
    plain = args[:at] + args[at + 2 :]
    assert main([*plain, "--out", str(tmp_path / "b.npz")]) == 0
    assert "jumps between chains" not in capsys.readouterr().out
    ensemble, info = generate_with_info(
        "channels", 40, 16, 0.05, seed=4, chains_per_problem=4, burn_in=60, thin=2,
        tempering_levels=2, jump_every=2,
    )  # fmt: skip
    assert 0.0 < info.stats["jump_acceptance"] < 1.0
    assert "--jump-every 2" in info.command()
    written = read_ensemble(tmp_path / "a.npz")
    np.testing.assert_array_equal(written.fields, ensemble.fields)
    without = generate_with_info(
        "channels", 40, 16, 0.05, seed=4, chains_per_problem=4, burn_in=60, thin=2,
        tempering_levels=2,
    )[0]  # fmt: skip
    assert not np.array_equal(without.fields, ensemble.fields)
    assert "--jump-every" not in generate_with_info("channels", 20, 16, 0.05, seed=4,
                                                    **FAST_CHANNELS)[1].command()  # fmt: skip


# ------------------------------------------------------------------ ParaView


@pytest.mark.paraview
def test_paraview_paths_filter_outputs_one_line_per_path(tmp_path):
    from sense_paraview import plugin_file

    embedding = _ordered_embedding()
    npz = write_npz(embedding, tmp_path / "embedding.npz")
    run = run_paraview_script(
        f"""
        from paraview.simple import *
        from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter
        from sense_core.embedding import read_embedding
        from sense_paraview.vtk_views import embedding_to_polydata
        from sense_paraview.paths import show_paths
        LoadPlugin({str(plugin_file())!r}, ns=globals())
        writer = vtkXMLPolyDataWriter()
        writer.SetInputData(embedding_to_polydata(read_embedding({str(npz)!r})))
        writer.SetFileName({str(tmp_path / "map.vtp")!r})
        writer.Write()
        source = OpenDataFile({str(tmp_path / "map.vtp")!r})
        paths = SENSEPaths(Input=source)
        def lines():
            paths.UpdatePipeline()
            data = servermanager.Fetch(paths)
            step = data.GetPointData().GetArray("step")
            return [data.GetNumberOfLines(), data.GetNumberOfPoints(),
                    [step.GetValue(i) for i in range(step.GetNumberOfTuples())][:6]]
        RESULT = {{"all": lines()}}
        paths.Show = "None"
        RESULT["none"] = lines()
        paths.Show = "Paths of selected members"
        paths.MemberIds = ["m007", "m020"]
        RESULT["selected"] = lines()
        paths.OrderColumn = "amplitude"
        paths.GroupColumn = "chain"
        paths.Show = "All paths"
        RESULT["explicit"] = lines()
        paths.OrderColumn = "missing"
        paths.UpdatePipeline()
        RESULT["failed"] = servermanager.Fetch(paths).GetNumberOfPoints()
        view = CreateView("RenderView")
        shown, display, link = show_paths(source, view, show="all")
        RESULT["coloured"] = list(display.ColorArrayName)
        RESULT["style"] = [display.LineWidth, display.Opacity]
        shown, display, link = show_paths(source, CreateView("RenderView"), show="selected")
        RESULT["style_selected"] = [display.LineWidth, display.Opacity]
        """,
        tmp_path,
    )
    result = run["result"]
    assert result["all"] == [4, 24, [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]]
    assert result["none"][:2] == [0, 0]
    assert result["selected"][:2] == [2, 12]
    assert result["explicit"][0] == 4
    assert result["failed"] == 0
    assert "order column 'missing' is not in the table" in run["output"]
    assert result["coloured"] == ["POINTS", "step"]
    assert result["style"] == [1.0, 0.35] and result["style_selected"] == [2.5, 1.0]
