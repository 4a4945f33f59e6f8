"""Built-in generators: determinism, shapes, classes, labels, MCMC behaviour, crops split, CLI."""

from __future__ import annotations

import numpy as np
import pytest

from sense_core.ensemble import UNLABELED, split_labeled
from sense_core.errors import EnsembleError
from sense_core.generators import channels as ch
from sense_core.generators import drops as dr
from sense_core.generators import generate, generate_with_info
from sense_core.generators.crops import region_bounds

# Small, fast MCMC settings for tests (the defaults are tuned for quality, not speed).
FAST_CHANNELS = {"burn_in": 300, "thin": 4, "tempering_levels": 3, "hottest_temperature": 20.0}


@pytest.fixture(scope="module")
def channel_run():
    return generate_with_info("channels", 200, 32, 0.25, seed=3, **FAST_CHANNELS)


@pytest.fixture(scope="module")
def drops_run():
    return generate_with_info("drops", 140, 48, 0.1, seed=5)


def test_unknown_generator_and_option_are_explained():
    with pytest.raises(EnsembleError, match="unknown generator 'rain'"):
        generate("rain", 10)
    with pytest.raises(EnsembleError, match="unexpected keyword"):
        generate("drops", 10, colour="red")
    with pytest.raises(EnsembleError, match="size"):
        generate("drops", 10, size=8)
    with pytest.raises(EnsembleError, match="labeled fraction"):
        generate("drops", 10, labeled_fraction=1.5)


@pytest.mark.parametrize(
    ("name", "options"), [("drops", {}), ("channels", {**FAST_CHANNELS, "burn_in": 50})]
)
def test_same_seed_same_ensemble_other_seed_differs(name, options):
    first = generate(name, 40, 32, 0.5, seed=11, **options)
    again = generate(name, 40, 32, 0.5, seed=11, **options)
    other = generate(name, 40, 32, 0.5, seed=12, **options)
    np.testing.assert_array_equal(first.fields, again.fields)
    np.testing.assert_array_equal(first.labels, again.labels)
    for key in first.metadata:
        np.testing.assert_array_equal(first.metadata[key], again.metadata[key])
    assert not np.array_equal(first.fields, other.fields)


def test_drops_shapes_classes_and_labels(drops_run):
    ensemble, info = drops_run
    assert ensemble.fields.shape == (140, 1, 48, 48)
    assert ensemble.fields.dtype == np.float32
    assert 0.0 <= ensemble.fields.min() and ensemble.fields.max() <= 1.0
    regime, physical = ensemble.metadata["regime"], ensemble.metadata["parameter_regime"]
    # Balanced by default: 140 / 7 = 20 per parameter regime; the classes say what the field
    # shows, which differs only between crown and crown_splash.
    assert np.bincount(physical, minlength=7).tolist() == [20] * 7
    assert info.stats["parameter_class_counts"] == dict.fromkeys(dr.CLASS_NAMES, 20)
    assert info.stats["class_counts"] == dict(
        zip(dr.CLASS_NAMES, np.bincount(regime, minlength=7).tolist())
    )
    differ = regime != physical
    assert set(regime[differ]) | set(physical[differ]) <= {dr.CROWN, dr.SPLASH}
    labeled = ensemble.labels != UNLABELED
    assert labeled.sum() == 14
    np.testing.assert_array_equal(ensemble.labels[labeled], regime[labeled])
    # Each regime renders something different from the empty film: liquid above the film.
    assert (ensemble.fields.reshape(140, -1).std(axis=1) > 0.05).all()
    np.testing.assert_array_equal(
        dr.regime_of(
            ensemble.metadata["weber"],
            ensemble.metadata["ohnesorge"],
            ensemble.metadata["film_ratio"],
        ),
        physical,
    )


def test_drops_class_is_crown_splash_exactly_when_the_field_shows_the_splash():
    """A late splash on a thin film whose droplets have left the window is drawn as a crown and
    labelled one; the same impact early shows its droplets and is crown_splash."""
    oh, delta = np.full(2, 1e-2), np.full(2, 0.03)
    weber = np.full(2, 2.0 * dr.splash_threshold(0.03) * 1e-2**0.4)  # K = 2 K_splash
    params = {"weber": weber, "ohnesorge": oh, "delta": delta, "tau": np.array([0.3, 0.8])}
    params["regime"] = dr.regime_of(weber, oh, delta)
    assert params["regime"].tolist() == [dr.SPLASH, dr.SPLASH]
    jitter = np.full((2, dr.JITTER_COLUMNS), 0.5)
    fields = dr.render_drops(params, jitter, 64)
    assert dr.splash_shown(params, jitter, fields).tolist() == [True, False]
    assert dr.shown_regime(params, jitter, fields).tolist() == [dr.SPLASH, dr.CROWN]
    # Without the splash the early field loses its fingers and droplets: many pixels change.
    plain = dr.render_drops({**params, "no_splash": np.ones(2, dtype=bool)}, jitter, 64)
    assert (np.abs(fields[0] - plain[0]) > 0.5).sum() >= 8


def test_drops_regime_boundaries_follow_the_documented_thresholds():
    oh = np.full(8, 1e-2)  # Oh^-0.4 = 6.31
    k_factor = oh[0] ** -0.4
    k_splash_thin = dr.splash_threshold(0.05)
    weber = np.array(
        [
            5,
            30,
            500 / k_factor,
            0.6 * k_splash_thin / k_factor,
            1.2 * k_splash_thin / k_factor,
            4 * k_splash_thin / k_factor,
            200,
            4 * dr.splash_threshold(1.0) / k_factor,
        ]
    )
    delta = np.array([0.05, 0.05, 0.05, 0.05, 0.05, 0.05, 1.0, 1.0])
    expected = [
        dr.BOUNCING,
        dr.COALESCENCE,
        dr.LAMELLA,
        dr.CROWN,
        dr.SPLASH,
        dr.PROMPT,
        dr.JET,
        dr.SPLASH,
    ]
    assert dr.regime_of(weber, oh, delta).tolist() == expected


def test_drops_change_smoothly_across_the_splash_boundary():
    """Members just either side of K_splash look alike; far apart they differ more."""
    delta = np.full(3, 0.1)
    oh = np.full(3, 1e-2)
    k_splash = dr.splash_threshold(0.1)
    weber = np.array([0.97, 1.03, 2.5]) * k_splash * oh**0.4  # 3.0 would sit on PROMPT_FACTOR
    params = {"weber": weber, "ohnesorge": oh, "delta": delta, "tau": np.full(3, 0.6)}
    params["regime"] = dr.regime_of(weber, oh, delta)
    assert params["regime"].tolist() == [dr.CROWN, dr.SPLASH, dr.SPLASH]
    fields = dr.render_drops(params, np.full((3, dr.JITTER_COLUMNS), 0.5), 64)
    near = np.abs(fields[0] - fields[1]).sum()
    far = np.abs(fields[1] - fields[2]).sum()
    assert near < far / 3


def test_drops_time_moves_the_crown_outward():
    params = {
        "weber": np.full(2, 300.0),
        "ohnesorge": np.full(2, 1e-2),
        "delta": np.full(2, 0.1),
        "tau": np.array([0.2, 0.9]),
    }
    params["regime"] = dr.regime_of(params["weber"], params["ohnesorge"], params["delta"])
    fields = dr.render_drops(params, np.full((2, dr.JITTER_COLUMNS), 0.5), 64)
    above_film = fields[:, :60, 32:]  # right half, above the film (z > 0.3 D)
    columns = np.arange(32)
    mean_r = [(f.sum(axis=0) * columns).sum() / f.sum() for f in above_film]
    assert mean_r[1] > mean_r[0] + 3


def test_channels_shapes_classes_labels_and_parameters(channel_run):
    ensemble, info = channel_run
    assert ensemble.fields.shape == (200, 1, 32, 32)
    assert ensemble.fields.dtype == np.float32
    assert set(np.unique(ensemble.fields)) <= {0.0, 1.0}
    regime = ensemble.metadata["regime"]
    assert set(regime.tolist()) == set(range(5)), info.stats["class_counts"]
    labeled = ensemble.labels != UNLABELED
    assert labeled.sum() == 50
    np.testing.assert_array_equal(ensemble.labels[labeled], regime[labeled])
    meta = ensemble.metadata
    theta = np.radians(meta["theta_deg"])
    np.testing.assert_array_equal(
        ch.regime_of(theta, meta["sinuosity"], meta["visible_channels"]), regime
    )
    np.testing.assert_array_equal(
        ch.regime_of(theta, meta["sinuosity"], meta["n_channels"]), meta["parameter_regime"]
    )
    assert np.all(meta["visible_channels"] <= meta["n_channels"])
    assert np.all((meta["n_channels"] >= 1) & (meta["n_channels"] <= 4))
    assert np.all((meta["width"] >= 0.04) & (meta["width"] <= 0.12))
    assert info.options["burn_in"] == 300 and "--burn-in 300" in info.command()


def test_channels_class_counts_the_channels_the_map_shows():
    """Three channels: the third on top of the first, or the second hidden between the others:
    the map shows two, and so does the class; three apart show three."""
    state = np.zeros((3, ch.N_CONTINUOUS))
    state[:, 0], state[:, 1], state[:, 2], state[:, 3] = 0.0, 0.3, 0.6, 0.08  # straight, east
    state[:, ch.OFFSET_COLUMNS[:3]] = [[-0.25, 0.25, -0.25], [-0.04, 0.0, 0.04], [-0.3, 0.0, 0.3]]
    n_channels = np.array([3, 3, 3])
    fields, visible = ch.render_facies_and_visible(state, n_channels, 64)
    assert visible.tolist() == [2, 2, 3]
    np.testing.assert_array_equal(fields, ch.render_facies(state, n_channels, 64))
    assert ch.regime_of(state[:, 0], state[:, 1], visible).tolist() == [0, 0, 4]


def test_channels_sampler_accepts_in_a_sane_band_and_chains_move(channel_run):
    ensemble, info = channel_run
    assert 0.1 < info.stats["acceptance_rate"] < 0.6
    assert 0.05 < info.stats["swap_acceptance"] < 0.95
    meta = ensemble.metadata
    keys = ["theta_deg", "sinuosity", "wavelength", "width", "n_channels"]
    keys += [f"offset_{k}" for k in range(ch.MAX_CHANNELS)]
    changes = []
    for chain in np.unique(meta["chain"]):
        mine = np.flatnonzero(meta["chain"] == chain)
        states = np.stack([meta[key][mine] for key in keys], axis=1)
        moved = np.any(np.diff(states, axis=0) != 0, axis=1)
        assert moved.sum() >= 3, f"chain {chain} barely moves"
        changes.append(moved.mean())
    assert np.mean(changes) > 0.5


def test_channels_posterior_matches_the_borehole_logs_better_than_the_prior():
    rng = np.random.default_rng(0)
    problem = ch.make_problem(0, wells=4, rng=rng)
    likelihood = ch.ChannelLikelihood([problem], np.zeros(16 * 3, dtype=int))
    state, n_channels = ch.sample_prior(16 * 3, rng)
    temperatures = ch.temperature_ladder(3, 20.0)
    samples = ch.run_chains(likelihood, state, n_channels, temperatures, 20, 5, 400, rng)

    def log_match(states, counts):
        distance = ch.channel_distance(states, problem.log_points[None])
        active = np.arange(ch.MAX_CHANNELS)[None, :, None] < counts[:, None, None]
        sand = ((distance < states[:, 3, None, None] / 2) & active).any(axis=1)
        return (sand == (problem.log_facies > 0.5)).mean()

    posterior = log_match(samples.state.reshape(-1, ch.N_CONTINUOUS), samples.n_channels.ravel())
    prior = log_match(*ch.sample_prior(320, rng))
    assert posterior > 0.85
    assert posterior > prior + 0.15, (posterior, prior)


def test_channels_sampler_without_data_samples_the_uniform_prior():
    """With a flat likelihood every move must be accepted and the chains must mix over the prior.

    This checks the proposal symmetry (wrapping, reflection, birth/death with swaps): a biased
    proposal would skew the marginals away from uniform.
    """
    rng = np.random.default_rng(1)
    chains = 64
    problem = ch.make_problem(0, wells=2, rng=rng)
    flat = ch.ChannelLikelihood([problem], np.zeros(chains, dtype=int), data=False)
    state, n_channels = ch.sample_prior(chains, rng)
    state[:, 0] = 0.0  # start every chain at theta = 0 and n = 1: they must spread out
    n_channels[:] = 1
    samples = ch.run_chains(flat, state, n_channels, np.ones(1), 150, 5, 100, rng)
    assert samples.acceptance.mean() > 0.8  # only n out of 1..4 is rejected
    theta = samples.state[..., 0].ravel()
    quarters = np.histogram(theta, bins=4, range=(-np.pi / 2, np.pi / 2))[0] / theta.size
    np.testing.assert_allclose(quarters, 0.25, atol=0.03)
    counts = np.bincount(samples.n_channels.ravel(), minlength=5)[1:] / theta.size
    np.testing.assert_allclose(counts, 0.25, atol=0.04)
    for column in (1, 3):  # sinuosity and width: bounded, reflected at the prior bounds
        values = samples.state[..., column].ravel()
        low, high = ch.LOW[column], ch.HIGH[column]
        assert ((values > low) & (values < high)).all()
        fifths = np.histogram(values, bins=5, range=(low, high))[0] / values.size
        np.testing.assert_allclose(fifths, 0.2, atol=0.03)
    assert ch.gelman_rubin(samples.state[..., 3]) < 1.1


THETA_MODES = np.array([-0.8, 0.8])
THETA_WEIGHTS = np.array([0.3, 0.7])
THETA_WIDTH = 0.05


def _two_modes_of_theta(state: np.ndarray, n_channels: np.ndarray) -> np.ndarray:
    """Log likelihood with two narrow modes in the orientation (``THETA_MODES``, weights
    ``THETA_WEIGHTS``), too far apart for the random walk to cross."""
    gaps = (state[:, 0, None] - THETA_MODES) / THETA_WIDTH
    return np.logaddexp.reduce(np.log(THETA_WEIGHTS) - 0.5 * gaps**2, axis=1)


@pytest.mark.parametrize("jump_every", [0, 1])
def test_differential_evolution_jumps_keep_the_posterior_and_change_modes(jump_every):
    """Start 300 problems of 4 chains each from exact draws of a two-mode posterior: a kernel
    that keeps the posterior keeps 70 % of the chains in the heavier mode, with the mode's own
    width, while the jumps move many chains from one mode to the other (the random walk, with
    no burn-in to grow its step, moves none). A biased or asymmetric jump drifts the share."""
    rng = np.random.default_rng(3)
    chains = 300 * 4
    state, n_channels = ch.sample_prior(chains, rng)
    start_mode = rng.random(chains) < THETA_WEIGHTS[1]
    state[:, 0] = THETA_MODES[start_mode.astype(int)] + rng.normal(size=chains) * THETA_WIDTH
    samples = ch.run_chains(
        _two_modes_of_theta, state, n_channels, np.ones(1), 1, 60, 0, rng,
        show_progress=False, jump_every=jump_every, chains_per_problem=4,
    )  # fmt: skip
    theta = samples.state[-1, :, 0]
    end_mode = theta > 0
    switched = np.mean(end_mode != start_mode)
    if jump_every == 0:
        assert samples.jump_acceptance is None
        assert switched == 0
        return
    assert 0.05 < samples.jump_acceptance < 0.9
    assert switched > 0.15
    assert end_mode.mean() == pytest.approx(THETA_WEIGHTS[1], abs=0.04)
    spread = np.abs(theta) - THETA_MODES[1]
    assert spread.std() == pytest.approx(THETA_WIDTH, rel=0.15)


def test_differential_evolution_jumps_need_four_chains_per_problem():
    with pytest.raises(EnsembleError, match="chains_per_problem >= 4"):
        generate("channels", 20, 16, 0.5, chains_per_problem=3, jump_every=10)


@pytest.mark.parametrize("scheme", ch.SWAP_SCHEMES)
def test_cached_likelihood_gives_exactly_the_chains_of_the_plain_evaluation(scheme):
    """The sampler's incremental likelihood (``LikelihoodTracker``: only changed channel slots
    recomputed, tempering swaps exchange its caches) must reproduce, bit for bit, the chains
    run with the plain ``ChannelLikelihood.__call__`` on every proposal."""
    rng = np.random.default_rng(4)
    problems = [ch.make_problem(regime, wells=4, rng=rng) for regime in (2, 4)]
    chain_problem = np.repeat([0, 1], 3 * 4)  # 3 chains per problem, 4 tempering levels
    likelihood = ch.ChannelLikelihood(problems, chain_problem)
    state, n_channels = ch.sample_prior(chain_problem.size, rng)
    temperatures = ch.temperature_ladder(4, 30.0)
    runs = [
        ch.run_chains(
            model,
            state,
            n_channels,
            temperatures,
            12,
            5,
            120,
            np.random.default_rng(8),
            False,
            scheme,
        )
        for model in (likelihood, lambda s, n: likelihood(s, n))  # a callable: plain path
    ]
    cached, plain = runs
    assert cached.move_acceptance["birth_death"] > 0  # the channel count changed
    assert cached.swap_acceptance > 0
    for field in ("state", "n_channels", "log_likelihood", "step", "acceptance"):
        np.testing.assert_array_equal(getattr(cached, field), getattr(plain, field))
    assert cached.move_acceptance == plain.move_acceptance
    tracker = likelihood.tracker(state, n_channels)
    np.testing.assert_array_equal(tracker.current, likelihood(state, n_channels))


@pytest.mark.parametrize(
    ("scheme", "log_likelihood", "sinuosity", "sand_pixels"),
    [
        ("random", -2751.5255022795222, 76.10584869892719, 9934),
        ("even_odd", -2905.899000913256, 66.32038484291283, 9697),
    ],
)
def test_channels_output_for_a_seed_is_pinned(scheme, log_likelihood, sinuosity, sand_pixels):
    """Values of the generator before its likelihood was made incremental (2026-12-02): a
    seed's members must stay those recorded in bundles' provenance (``sense generate``)."""
    ensemble = generate(
        "channels",
        60,
        32,
        0.5,
        seed=11,
        burn_in=150,
        thin=4,
        tempering_levels=3,
        hottest_temperature=20.0,
        swap_scheme=scheme,
    )
    meta = ensemble.metadata
    assert meta["log_likelihood"].sum() == pytest.approx(log_likelihood, rel=1e-12)
    assert meta["sinuosity"].sum() == pytest.approx(sinuosity, rel=1e-12)
    assert int(ensemble.fields.sum()) == sand_pixels


def test_gelman_rubin_detects_chains_that_do_not_mix():
    rng = np.random.default_rng(0)
    mixed = rng.normal(size=(500, 4))
    stuck = mixed + np.array([0.0, 3.0, 6.0, 9.0])
    assert ch.gelman_rubin(mixed) < 1.02
    assert ch.gelman_rubin(stuck) > 2.0


def _synthetic_images() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    stripes = (np.sin(np.arange(300) / 4.0)[None, :] > 0).repeat(80, axis=0).astype(np.float32)
    spots = (rng.random((80, 300)) > 0.8).astype(np.float32)
    tall = np.tile(np.eye(20, dtype=np.float32), (15, 4))  # 300 x 80: cut along its height
    return [stripes, spots, tall]


def test_crops_regions_never_overlap_and_carry_the_split(tmp_path):
    images = _synthetic_images()
    from PIL import Image

    paths = []
    for i, image in enumerate(images):
        path = tmp_path / f"source_{i}.png"
        Image.fromarray((image * 255).astype(np.uint8)).save(path)
        paths.append(path)
    ensemble, info = generate_with_info("crops", None, 32, 0.3, seed=2, images=paths, per_image=40)
    assert ensemble.class_names == ("source_0", "source_1", "source_2")
    assert ensemble.fields.shape == (120, 1, 32, 32)
    meta = ensemble.metadata
    for index, image in enumerate(images):
        mine = ensemble.metadata["regime"] == index
        along = meta["column"] if image.shape[1] >= image.shape[0] else meta["row"]
        spans = {}
        for region in ("train", "validation", "test"):
            starts = along[mine & (meta["region"] == region)]
            assert starts.size > 0
            spans[region] = (starts.min(), starts.max() + 32)
        assert spans["train"][1] <= spans["validation"][0]
        assert spans["validation"][1] <= spans["test"][0]
        # Crops hold the source pixels at their recorded corner.
        first = np.flatnonzero(mine)[0]
        y, x = meta["row"][first], meta["column"][first]
        np.testing.assert_allclose(ensemble.fields[first, 0], image[y : y + 32, x : x + 32])
    unlabeled = ensemble.labels == UNLABELED
    assert set(meta["region"][unlabeled]) <= {"train"}
    assert (meta["split"][unlabeled] == "").all()
    assert abs((~unlabeled).mean() - 0.3) < 0.03
    split = split_labeled(ensemble)
    assert set(meta["region"][split.test]) == {"test"}
    assert set(meta["region"][split.train]) == {"train"}


def test_crops_refuse_an_image_too_small_for_three_regions():
    assert region_bounds(300, 32, (0.7, 0.15, 0.15)) == [(0, 210), (210, 255), (255, 300)]
    with pytest.raises(EnsembleError, match="cannot hold"):
        region_bounds(100, 40, (0.7, 0.15, 0.15))
    with pytest.raises(EnsembleError, match="needs at least one image"):
        generate("crops", 10)


def test_noise_and_blur_knobs_change_the_fields():
    clean = generate("drops", 14, 32, seed=4)
    blurred = generate("drops", 14, 32, seed=4, blur=1.5)
    noisy = generate("drops", 14, 32, seed=4, noise=0.1)
    assert (
        np.abs(np.diff(blurred.fields, axis=-1)).mean()
        < np.abs(np.diff(clean.fields, axis=-1)).mean()
    )
    assert 0.08 < (noisy.fields - clean.fields).std() < 0.12


def test_preview_writes_a_png(tmp_path, drops_run):
    from sense_core.generators.preview import write_preview

    path = write_preview(drops_run[0], tmp_path / "gallery.png", per_class=3)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_round_trip(tmp_path, capsys):
    io = pytest.importorskip("sense_core.io")
    from sense_core.generators.cli import main

    out = tmp_path / "drops.npz"
    status = main(
        [
            "drops",
            "--n",
            "21",
            "--size",
            "32",
            "--labeled-fraction",
            "0.34",
            "--seed",
            "9",
            "--out",
            str(out),
            "--preview",
            str(tmp_path / "p.png"),
        ]
    )
    assert status == 0
    printed = capsys.readouterr().out
    assert "21 members" in printed and "members/s" in printed and "crown_splash" in printed
    assert (tmp_path / "p.png").exists()
    written = io.read_ensemble(out)
    expected = generate("drops", 21, 32, 0.34, seed=9)
    np.testing.assert_array_equal(written.fields, expected.fields)
    np.testing.assert_array_equal(written.labels, expected.labels)
    assert tuple(written.class_names) == dr.CLASS_NAMES
    assert main(["drops", "--n", "5", "--out", str(out)]) == 2  # exists, no --overwrite


def test_cli_prints_the_acceptance_rate_for_channels(tmp_path, capsys):
    pytest.importorskip("sense_core.io")
    from sense_core.generators.cli import main

    status = main(
        [
            "channels",
            "--n",
            "20",
            "--size",
            "32",
            "--burn-in",
            "50",
            "--thin",
            "2",
            "--tempering-levels",
            "2",
            "--out",
            str(tmp_path / "c.npz"),
        ]
    )
    assert status == 0
    assert "acceptance rate 0." in capsys.readouterr().out
