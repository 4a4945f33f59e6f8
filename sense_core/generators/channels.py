"""channels: an MCMC posterior ensemble of channelised subsurface facies (5 regime classes).

Physics and statistics
----------------------
A fluvial reservoir seen from above is mud (facies 0) crossed by sinuous sand channels
(facies 1). The object-based model (in the spirit of Deutsch & Wang 1996, "Hierarchical
object-based stochastic modeling of fluvial reservoirs", Math. Geol. 28) describes it with a few
parameters shared by all channels of a realisation -- orientation ``theta`` (measured from east,
counter-clockwise), sinuosity ``s`` (largest slope of the centre line, so the meander amplitude is
``s * wavelength / 2 pi``), meander ``wavelength`` and channel ``width`` (fractions of the domain)
-- plus, per channel, a lateral ``offset`` and a meander ``phase``, and the number of channels
``n`` (1 to 4).

As in Bayesian subsurface inversion (e.g. Laloy et al. 2018, "Training-image based geostatistical
inversion using a spatial generative adversarial neural network", Water Resour. Res. 54), the
ensemble is a *posterior*: a hidden "true" field is drawn, observed sparsely -- facies logged along
a few vertical boreholes (each log wrong with a small probability) and a noisy global sand
proportion (as from seismic) -- and Metropolis--Hastings chains sample the parameters given those
observations. Thinned chain states, rendered as binary facies maps, are the members.

The sampler is a real MCMC: uniform priors (periodic for angles, reflecting bounds otherwise),
symmetric random-walk proposals on a block of parameters (global shape, or the offset and phase
of one channel), and birth/death moves on ``n`` whose new channel is drawn from the prior (so the
acceptance ratio is the likelihood ratio; Green 1995 reversible jump in its simplest form). Step
sizes are adapted per chain during burn-in only, then frozen. All chains of all inverse problems
run together as one vectorised array.

Regime classes (``CLASS_NAMES``), from a member's own parameters
----------------------------------------------------------------
0 ``straight_ew``   n <= 2, s < 0.9, orientation within 45 degrees of east-west
1 ``straight_ns``   n <= 2, s < 0.9, orientation within 45 degrees of north-south
2 ``meandering_ew`` n <= 2, s >= 0.9, east-west
3 ``meandering_ns`` n <= 2, s >= 0.9, north-south
4 ``multi_channel`` n >= 3 (any orientation and sinuosity)

``n`` here is the number of channels the map *shows* (metadata ``visible_channels``): a channel
counts when 20 of 64 x 64 pixels (``VISIBLE_CHANNEL_FRACTION``) are sand because of it alone
(two channels on top of each other count once).
A state with three channels, one hidden under another, is drawn as two channels and labelled as
two; metadata ``parameter_regime`` keeps the class of the state's own ``n``.

Class balance: the inverse problems cycle through the 5 regimes (problem ``p`` hides a true
field of regime ``p mod 5``, drawn a margin away from the regime edges), with the same number of
chains and samples each, so with ``problems`` a multiple of 5 the classes are roughly balanced.
Posterior samples that cross a regime edge (diagonal orientations, sinuosity near 0.9, a channel
too many or too few) take the class of their own parameters, so members near the regime
boundaries exist, as in real posteriors; exact counts are reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sense_core.ensemble import Ensemble
from sense_core.errors import EnsembleError
from sense_core.generators.common import (
    GenerationInfo,
    add_noise_and_blur,
    check_common_arguments,
    choose_labeled,
    chunks,
    class_counts,
    progress,
)
from sense_core.generators.convergence import convergence_table
from sense_core.generators.convergence import gelman_rubin as gelman_rubin  # re-exported

CLASS_NAMES = ("straight_ew", "straight_ns", "meandering_ew", "meandering_ns", "multi_channel")
MAX_CHANNELS = 4
SINUOSITY_THRESHOLD = 0.9

# Columns of the continuous state: 4 global parameters, then offsets, then phases.
GLOBAL_NAMES = ("theta", "sinuosity", "wavelength", "width")
N_GLOBAL = len(GLOBAL_NAMES)
OFFSET_COLUMNS = np.arange(N_GLOBAL, N_GLOBAL + MAX_CHANNELS)
PHASE_COLUMNS = np.arange(N_GLOBAL + MAX_CHANNELS, N_GLOBAL + 2 * MAX_CHANNELS)
N_CONTINUOUS = N_GLOBAL + 2 * MAX_CHANNELS

# Prior: uniform on [low, high); theta (period pi, axial) and phases (2 pi) wrap around.
LOW = np.array([-np.pi / 2, 0.0, 0.35, 0.04] + [-0.4] * MAX_CHANNELS + [0.0] * MAX_CHANNELS)
HIGH = np.array([np.pi / 2, 2.5, 1.0, 0.12] + [0.4] * MAX_CHANNELS + [2 * np.pi] * MAX_CHANNELS)
PERIODIC = np.zeros(N_CONTINUOUS, dtype=bool)
PERIODIC[0] = True
PERIODIC[PHASE_COLUMNS] = True
# Random-walk step of each parameter before the per-chain adaptive scale.
BASE_STEP = np.array([0.08, 0.12, 0.04, 0.006] + [0.025] * MAX_CHANNELS + [0.25] * MAX_CHANNELS)

# Move probabilities: global block, one channel's offset+phase, birth/death of a channel.
MOVE_GLOBAL, MOVE_CHANNEL, MOVE_DIMENSION = 0, 1, 2
MOVE_PROBABILITIES = (0.45, 0.40, 0.15)
TARGET_ACCEPTANCE = 0.3
ADAPT_EVERY = 25
SWAP_EVERY = 2  # "random" swap scheme: one random neighbour pair per group every 2 steps
# Swap schemes: "random" (the scheme above, reversible) or "even_odd": every step, all pairs
# (l, l+1) with l even, then all with l odd, alternately (deterministic even-odd swaps, the
# non-reversible parallel tempering of Syed, Bouchard-Cote, Deligiannidis & Doucet 2022, JRSS B
# 84, 321-350): a state crosses the ladder in O(levels) instead of O(levels^2) swap rounds.
SWAP_SCHEMES = ("random", "even_odd")
# Differential-evolution jumps between the chains of one inverse problem (ter Braak 2006, "A
# Markov chain Monte Carlo version of the genetic algorithm Differential Evolution", Stat.
# Comput. 16, 239-249), every ``jump_every`` steps when asked: a chain proposes x + (x_a - x_b),
# a and b two other chains of its problem and temperature level. With the difference of two
# chains in different modes the proposal lands in the other mode ("gamma = 1", ter Braak's
# mode-jumping step), which random walks and tempering swaps reach only rarely. The chains are
# updated in two halves (even and odd chains of the problem), each taking its differences from
# the other, fixed half, so the move keeps the posterior (the order of a and b is random, hence
# the proposal is symmetric, also through the wrapping and reflecting at the prior bounds).
JUMP_NOISE = 0.1  # Gaussian jitter added to a jump, in units of the random-walk base step

# Observation model.
WELL_SAMPLES = 32  # facies logged at this many depths per borehole
LOG_ERROR = 0.03  # probability that a borehole log reads the wrong facies (likelihood)
PROPORTION_GRID = 16  # sand proportion is evaluated on a PROPORTION_GRID^2 grid
PROPORTION_SIGMA = 0.03  # standard deviation of the observed sand proportion
EDGE_SOFTNESS = 0.006  # soft channel edge (domain units) that makes the likelihood smooth
RENDER_CHUNK = 128
# A channel counts towards a member's class when this share of the pixels (20 of 64 x 64) is
# sand because of it alone: the class says what the map shows.
VISIBLE_CHANNEL_FRACTION = 20 / 4096


def regime_of(theta: np.ndarray, sinuosity: np.ndarray, n_channels: np.ndarray) -> np.ndarray:
    """Class index (see ``CLASS_NAMES``) of each parameter set."""
    theta = np.asarray(theta)
    east_west = np.abs(theta) < np.pi / 4
    sinuous = np.asarray(sinuosity) >= SINUOSITY_THRESHOLD
    single = np.where(sinuous, 2, 0) + np.where(east_west, 0, 1)
    return np.where(np.asarray(n_channels) >= 3, 4, single).astype(np.int64)


def sample_prior(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` independent draws from the prior: continuous states (count, D) and n (count,)."""
    state = rng.uniform(LOW, HIGH, size=(count, N_CONTINUOUS))
    n_channels = rng.integers(1, MAX_CHANNELS + 1, size=count)
    return state, n_channels


def channel_distance(state: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Distance from each point to each channel centre line, (B, K, M).

    ``state`` (B, D); ``points`` (B or 1, M, 2) as (X east, Y north) with the domain centre at 0
    and the domain [-0.5, 0.5]^2. The distance to the sine centre line ``v = offset + A sin(k u +
    phase)`` is approximated by the vertical gap divided by sqrt(1 + slope^2).
    """
    theta = state[:, 0:1]
    sinuosity = state[:, 1, None, None]
    wavenumber = (2 * np.pi / state[:, 2])[:, None, None]
    cos_t, sin_t = np.cos(theta), np.sin(theta)
    x, y = points[..., 0], points[..., 1]
    along = x * cos_t + y * sin_t  # (B, M)
    across = -x * sin_t + y * cos_t
    angle = wavenumber * along[:, None, :] + state[:, PHASE_COLUMNS, None]  # (B, K, M)
    centre = state[:, OFFSET_COLUMNS, None] + (sinuosity / wavenumber) * np.sin(angle)
    slope = sinuosity * np.cos(angle)
    return np.abs(across[:, None, :] - centre) / np.sqrt(1.0 + slope * slope)


def sand_probability(state: np.ndarray, n_channels: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Smooth sand indicator (B, M): 1 inside any active channel, 0 outside, soft edges."""
    distance = channel_distance(state, points)
    half_width = state[:, 3, None, None] / 2
    inside = 0.5 * (1.0 + np.tanh((half_width - distance) / (2 * EDGE_SOFTNESS)))
    active = np.arange(MAX_CHANNELS)[None, :] < n_channels[:, None]
    inside = inside * active[:, :, None]
    return 1.0 - np.prod(1.0 - inside, axis=1)


def render_facies(state: np.ndarray, n_channels: np.ndarray, size: int) -> np.ndarray:
    """Binary facies maps (B, size, size) float32 in image order (row 0 = north)."""
    return render_facies_and_visible(state, n_channels, size)[0]


def render_facies_and_visible(
    state: np.ndarray, n_channels: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Facies maps (B, size, size) and how many channels each map shows (B,): a channel shows
    when at least ``VISIBLE_CHANNEL_FRACTION`` of the pixels are sand because of it alone
    (:func:`_count_visible`), so a channel under others or clipped to a corner of the domain does
    not count."""
    points = pixel_points(size)[None]
    out = np.empty((state.shape[0], size, size), dtype=np.float32)
    visible = np.empty(state.shape[0], dtype=np.int64)
    least = max(1, int(round(VISIBLE_CHANNEL_FRACTION * size * size)))
    for part in chunks(state.shape[0], RENDER_CHUNK):
        sub_state = state[part].astype(np.float32)
        distance = channel_distance(sub_state, points.astype(np.float32))
        active = np.arange(MAX_CHANNELS)[None, :] < n_channels[part, None]
        inside = (distance < sub_state[:, 3, None, None] / 2) & active[:, :, None]
        out[part] = inside.any(axis=1).reshape(-1, size, size)
        visible[part] = _count_visible(inside, active, least)
    return out, visible


def _count_visible(inside: np.ndarray, active: np.ndarray, least: int) -> np.ndarray:
    """Channels shown per member, from the channel masks ``inside`` (B, K, M): while a kept
    channel has fewer than ``least`` pixels that no other kept channel covers, drop the one with
    the fewest (two channels on top of each other count once; one hidden between two counts
    none); the channels left are the ones seen."""
    kept = active.copy()
    rows = np.arange(inside.shape[0])
    for _ in range(MAX_CHANNELS):
        shown = inside & kept[:, :, None]
        alone = (shown & (shown.sum(axis=1, keepdims=True) == 1)).sum(axis=2)
        hidden = kept & (alone < least)
        drop = hidden.any(axis=1)
        if not drop.any():
            break
        weakest = np.argmin(np.where(hidden, alone, np.iinfo(np.int64).max), axis=1)
        kept[rows[drop], weakest[drop]] = False
    return kept.sum(axis=1)


def pixel_points(size: int) -> np.ndarray:
    """Pixel centres of a size x size image as (X east, Y north), row 0 at the top; (M, 2)."""
    centres = (np.arange(size) + 0.5) / size - 0.5
    x, y = np.meshgrid(centres, -centres)
    return np.stack([x.ravel(), y.ravel()], axis=-1)


@dataclass
class InverseProblem:
    """Observations of one hidden true field: borehole logs and a sand proportion."""

    true_state: np.ndarray  # (D,)
    true_channels: int
    true_regime: int
    log_points: np.ndarray  # (M, 2)
    log_facies: np.ndarray  # (M,) 0/1
    proportion: float


def draw_true_parameters(
    regime: int, rng: np.random.Generator, margin: float = 0.15
) -> tuple[np.ndarray, int]:
    """A prior draw of the given regime, kept ``margin`` away from the sinuosity and 45° edges."""
    for _ in range(10_000):
        state, n_channels = sample_prior(64, rng)
        theta, sinuosity = state[:, 0], state[:, 1]
        ok = regime_of(theta, sinuosity, n_channels) == regime
        ok &= np.abs(np.abs(theta) - np.pi / 4) > margin * np.pi / 2
        ok &= np.abs(sinuosity - SINUOSITY_THRESHOLD) > margin * 2
        if regime == 4:
            ok &= n_channels == 3  # four channels of width 0.12 would fill the whole domain
        if ok.any():
            first = int(np.flatnonzero(ok)[0])
            return state[first], int(n_channels[first])
    raise RuntimeError(f"could not draw a true field of regime {regime}")  # pragma: no cover


def make_problem(
    regime: int, wells: int, rng: np.random.Generator, log_flip: float = 0.02
) -> InverseProblem:
    """Draw a true field of ``regime`` and observe it along ``wells`` boreholes."""
    true_state, true_channels = draw_true_parameters(regime, rng)
    well_x = np.sort(rng.uniform(-0.42, 0.42, size=wells))
    depths = (np.arange(WELL_SAMPLES) + 0.5) / WELL_SAMPLES - 0.5
    x, y = np.meshgrid(well_x, depths, indexing="ij")
    log_points = np.stack([x.ravel(), y.ravel()], axis=-1)
    state, count = true_state[None], np.array([true_channels])
    facies = (channel_distance(state, log_points[None]) < true_state[3] / 2)[0]
    facies = facies[:true_channels].any(axis=0).astype(np.float64)
    flips = rng.random(facies.size) < log_flip
    facies[flips] = 1.0 - facies[flips]
    true_map = render_facies(state, count, 64)
    proportion = float(true_map.mean() + rng.normal(0.0, PROPORTION_SIGMA / 2))
    return InverseProblem(
        true_state=true_state,
        true_channels=true_channels,
        true_regime=regime,
        log_points=log_points,
        log_facies=facies,
        proportion=proportion,
    )


def proportion_points() -> np.ndarray:
    return pixel_points(PROPORTION_GRID)


class ChannelLikelihood:
    """Log likelihood of every chain's state given its own problem's observations.

    With uniform priors the log posterior is this inside the prior support (up to a constant).
    ``data`` false gives a flat likelihood: the chains then sample the prior (a sampler test).
    """

    def __init__(
        self, problems: list[InverseProblem], chain_problem: np.ndarray, data: bool = True
    ):
        self.points = np.stack([p.log_points for p in problems])[chain_problem]
        self.facies = np.stack([p.log_facies for p in problems])[chain_problem]
        self.proportion = np.array([p.proportion for p in problems])[chain_problem]
        self.grid = proportion_points()[None]
        self.data = data

    def __call__(self, state: np.ndarray, n_channels: np.ndarray) -> np.ndarray:
        if not self.data:
            return np.zeros(state.shape[0])
        p_sand = sand_probability(state, n_channels, self.points)
        p_read = LOG_ERROR + (1 - 2 * LOG_ERROR) * p_sand
        logs = np.where(self.facies > 0.5, np.log(p_read), np.log1p(-p_read)).sum(axis=1)
        proportion = sand_probability(state, n_channels, self.grid).mean(axis=1)
        seismic = -0.5 * ((proportion - self.proportion) / PROPORTION_SIGMA) ** 2
        return logs + seismic

    def tracker(self, state: np.ndarray, n_channels: np.ndarray) -> LikelihoodTracker:
        """An incremental evaluator started at the chains' current ``state`` (see
        ``LikelihoodTracker``); a flat likelihood needs none and gets the plain one."""
        if not self.data:
            return PlainTracker(self, state, n_channels)
        return LikelihoodTracker(self, state, n_channels)


class PlainTracker:
    """Evaluates every proposal in full with ``likelihood(state, n_channels)``: the tracker
    interface of ``run_chains`` for any callable likelihood (and the reference for the cached
    ``LikelihoodTracker``, which must give the same values)."""

    def __init__(self, likelihood, state: np.ndarray, n_channels: np.ndarray):
        self.likelihood = likelihood
        self.current = likelihood(state, n_channels)

    def propose(self, proposal: np.ndarray, n_channels: np.ndarray, valid: np.ndarray):
        """Log likelihood of every proposal (-inf where not ``valid``)."""
        return np.where(valid, self.likelihood(proposal, n_channels), -np.inf)

    def accept(self, accepted: np.ndarray) -> None:
        """Nothing to keep: every proposal is evaluated afresh."""

    def swap(self, a: np.ndarray, b: np.ndarray) -> None:
        """Nothing cached to exchange."""


def _slot_distance(
    params: np.ndarray, along: np.ndarray, across: np.ndarray, work: list[np.ndarray]
) -> np.ndarray:
    """Distance (P, M) to one channel centre line per row, with the arithmetic of
    ``channel_distance`` element for element. ``params`` (P, 5): theta, sinuosity, wavelength,
    offset, phase; ``along``/``across`` (P, M) are overwritten; ``work``: two (P, M) scratch
    arrays, the first gets the result."""
    sinuosity = params[:, 1, None]
    wavenumber = (2 * np.pi / params[:, 2])[:, None]
    angle = np.multiply(wavenumber, along, out=work[0])
    angle += params[:, 4, None]
    centre = np.sin(angle, out=work[1])
    centre *= sinuosity / wavenumber
    centre += params[:, 3, None]
    slope = np.cos(angle, out=along)
    slope *= sinuosity
    gap = np.abs(np.subtract(across, centre, out=across), out=across)
    slope *= slope
    slope += 1.0
    return np.divide(gap, np.sqrt(slope, out=slope), out=work[0])


def _slot_outside(width: np.ndarray, distance: np.ndarray, work: list[np.ndarray]) -> np.ndarray:
    """1 - the smooth sand indicator of ``sand_probability``, (P, M), for widths (P,);
    ``distance`` is overwritten; ``work``: two (P, M) scratch arrays, the second gets the
    result."""
    scaled = np.subtract(width[:, None] / 2, distance, out=distance)
    scaled /= 2 * EDGE_SOFTNESS
    inside = np.tanh(scaled, out=work[0])
    inside += 1.0
    inside *= 0.5
    return np.subtract(1.0, inside, out=work[1])


class LikelihoodTracker:
    """Incremental ``ChannelLikelihood`` for ``run_chains``.

    It caches, per chain and channel slot, the centre-line distance and the sand indicator of
    the chain's current state at its borehole log points and the proportion grid (one row of
    points per chain: logs first, then grid), and for a proposal recomputes only the (chain,
    slot) pairs whose parameters changed bit for bit -- one slot for a channel move, the new
    slot of a birth, none for a death -- and the indicator where only the width changed. It
    writes the proposal into the cache and keeps what it overwrote to restore rejected chains,
    and works in preallocated buffers: a sampler step allocates no large array (fresh
    allocations of large temporaries made page faults most of the plain evaluation's time).

    The arithmetic per element is that of ``ChannelLikelihood.__call__``, so the values, and
    the chains of ``run_chains``, are exactly those of the plain evaluation (a test pins this).
    """

    def __init__(self, likelihood: ChannelLikelihood, state: np.ndarray, n_channels: np.ndarray):
        self.likelihood = likelihood
        chains = state.shape[0]
        logs, grid = likelihood.points, likelihood.grid
        self.logs = logs.shape[1]
        points = np.concatenate(
            [
                np.broadcast_to(logs, (chains, *logs.shape[1:])),
                np.broadcast_to(grid, (chains, *grid.shape[1:])),
            ],
            axis=1,
        )
        self.x, self.y = points[..., 0].copy(), points[..., 1].copy()  # (B, M)
        size = points.shape[1]
        pairs = chains * MAX_CHANNELS  # row of a (chain, slot) pair: chain * MAX_CHANNELS + slot
        self.along = np.empty((chains, size))
        self.across = np.empty((chains, size))
        self.distance = np.empty((pairs, size))
        self.outside = np.ones((pairs, size))  # 1 - sand indicator (1 for an inactive slot)
        # What each cached value was computed from (NaN: nothing yet): the orientation of the
        # rotated coordinates, the (theta, sinuosity, wavelength, offset, phase) of each slot's
        # distances and the width of each slot's indicator (NaN too for an inactive slot).
        self.theta = np.full(chains, np.nan)
        self.slot_key = np.full((pairs, 5), np.nan)
        self.slot_width = np.full(pairs, np.nan)
        # Separate allocations: numpy computes some functions differently (last bit) when the
        # input and output are adjacent parts of one array.
        self._work = [np.empty((pairs, size)) for _ in range(4)]
        # What a proposal overwrote in the caches, to restore the chains that reject it.
        self._saved = {name: np.empty((chains, size)) for name in ("along", "across")}
        self._saved.update({name: np.empty((pairs, size)) for name in ("distance", "outside")})
        self._sand = np.empty((chains, size))
        self._logs = [np.empty((chains, self.logs)) for _ in range(3)]
        self._facies = likelihood.facies > 0.5
        everyone = np.ones(chains, dtype=bool)
        self.current = self.propose(state, n_channels, everyone)
        self.accept(everyone)

    def propose(self, proposal: np.ndarray, n_channels: np.ndarray, valid: np.ndarray):
        """Log likelihood of every proposal (-inf where not ``valid``). The proposal becomes
        the cached state until ``accept`` says which chains keep it."""
        chains = proposal.shape[0]
        key = np.empty((chains, MAX_CHANNELS, 5))
        key[:, :, 0:3] = proposal[:, None, 0:3]
        key[:, :, 3] = proposal[:, OFFSET_COLUMNS]
        key[:, :, 4] = proposal[:, PHASE_COLUMNS]
        key = key.reshape(-1, 5)
        bits = np.int64
        active = (np.arange(MAX_CHANNELS)[None, :] < n_channels[:, None]) & valid[:, None]
        active = active.ravel()
        width = np.repeat(proposal[:, 3], MAX_CHANNELS)
        moved = active & (key.view(bits) != self.slot_key.view(bits)).any(axis=1)
        redraw = active & (moved | (width.view(bits) != self.slot_width.view(bits)))
        cleared = ~active & np.repeat(valid, MAX_CHANNELS) & ~np.isnan(self.slot_width)
        rotate = np.flatnonzero(valid & (proposal[:, 0].view(bits) != self.theta.view(bits)))
        moved, redraw = np.flatnonzero(moved), np.flatnonzero(redraw | cleared)
        cleared = np.flatnonzero(cleared)
        saved = self._saved
        self._undo = (
            rotate,
            self.theta[rotate],
            moved,
            self.slot_key[moved],
            redraw,
            self.slot_width[redraw],
        )
        np.take(self.along, rotate, axis=0, out=saved["along"][: rotate.size], mode="clip")
        np.take(self.across, rotate, axis=0, out=saved["across"][: rotate.size], mode="clip")
        np.take(self.distance, moved, axis=0, out=saved["distance"][: moved.size], mode="clip")
        np.take(self.outside, redraw, axis=0, out=saved["outside"][: redraw.size], mode="clip")
        self.theta[rotate] = proposal[rotate, 0]
        self.slot_key[moved] = key[moved]
        self.slot_width[redraw] = width[redraw]
        self.slot_width[cleared] = np.nan

        w = self._work
        if rotate.size:  # along/across as channel_distance computes them
            count = rotate.size
            theta = proposal[rotate, 0:1]
            cos_t, sin_t = np.cos(theta), np.sin(theta)
            x = np.take(self.x, rotate, axis=0, out=w[0][:count], mode="clip")
            y = np.take(self.y, rotate, axis=0, out=w[1][:count], mode="clip")
            along = np.multiply(x, cos_t, out=w[2][:count])
            along += np.multiply(y, sin_t, out=w[3][:count])
            self.along[rotate] = along
            across = np.multiply(np.negative(x, out=x), sin_t, out=w[2][:count])
            across += np.multiply(y, cos_t, out=w[3][:count])
            self.across[rotate] = across
        if moved.size:
            count = moved.size
            rows = moved // MAX_CHANNELS
            along = np.take(self.along, rows, axis=0, out=w[0][:count], mode="clip")
            across = np.take(self.across, rows, axis=0, out=w[1][:count], mode="clip")
            self.distance[moved] = _slot_distance(
                key[moved], along, across, [w[2][:count], w[3][:count]]
            )
        redrawn = redraw[~np.isin(redraw, cleared, assume_unique=True)]
        if redrawn.size:
            count = redrawn.size
            distance = np.take(self.distance, redrawn, axis=0, out=w[0][:count], mode="clip")
            self.outside[redrawn] = _slot_outside(
                width[redrawn], distance, [w[1][:count], w[2][:count]]
            )
        self.outside[cleared] = 1.0

        outside = self.outside.reshape(chains, MAX_CHANNELS, -1)
        sand = np.prod(outside, axis=1, out=self._sand)
        np.subtract(1.0, sand, out=sand)
        p_read, log_read, log_miss = self._logs
        np.multiply(1 - 2 * LOG_ERROR, sand[:, : self.logs], out=p_read)
        p_read += LOG_ERROR
        np.log(p_read, out=log_read)
        np.log1p(np.negative(p_read, out=p_read), out=log_miss)
        np.copyto(log_miss, log_read, where=self._facies)
        logs = log_miss.sum(axis=1)
        proportion = sand[:, self.logs :].mean(axis=1)
        seismic = -0.5 * ((proportion - self.likelihood.proportion) / PROPORTION_SIGMA) ** 2
        return np.where(valid, logs + seismic, -np.inf)

    def accept(self, accepted: np.ndarray) -> None:
        """Keep the last proposal of the ``accepted`` chains; restore the others' caches."""
        rotate, theta, moved, key, redraw, width = self._undo
        saved, w = self._saved, self._work
        for index, rows, arrays in (
            (rotate, rotate, ((self.along, "along"), (self.across, "across"))),
            (moved, moved // MAX_CHANNELS, ((self.distance, "distance"),)),
            (redraw, redraw // MAX_CHANNELS, ((self.outside, "outside"),)),
        ):
            back = np.flatnonzero(~accepted[rows])
            for array, name in arrays:
                array[index[back]] = np.take(
                    saved[name], back, axis=0, out=w[0][: back.size], mode="clip"
                )
        back = ~accepted[rotate]
        self.theta[rotate[back]] = theta[back]
        back = ~accepted[moved // MAX_CHANNELS]
        self.slot_key[moved[back]] = key[back]
        back = ~accepted[redraw // MAX_CHANNELS]
        self.slot_width[redraw[back]] = width[back]
        self._undo = None

    def swap(self, a: np.ndarray, b: np.ndarray) -> None:
        """Exchange the caches of chains ``a`` and ``b`` (tempering swaps exchange states)."""
        slots = np.arange(MAX_CHANNELS)
        pair_a = (a[:, None] * MAX_CHANNELS + slots).ravel()
        pair_b = (b[:, None] * MAX_CHANNELS + slots).ravel()
        w = self._work
        for array, i, j in (
            (self.theta, a, b),
            (self.along, a, b),
            (self.across, a, b),
            (self.slot_key, pair_a, pair_b),
            (self.slot_width, pair_a, pair_b),
            (self.distance, pair_a, pair_b),
            (self.outside, pair_a, pair_b),
        ):
            if array.ndim == 2 and array.shape[1] == w[0].shape[1]:
                first = np.take(array, i, axis=0, out=w[0][: i.size], mode="clip")
                second = np.take(array, j, axis=0, out=w[1][: j.size], mode="clip")
            else:
                first, second = array[i], array[j]
            array[i] = second
            array[j] = first


def reflect_and_wrap(state: np.ndarray) -> np.ndarray:
    """Map a proposal back into the prior box: wrap periodic columns, reflect the others.

    Both maps keep the random-walk proposal symmetric.
    """
    span = HIGH - LOW
    offset = state - LOW
    wrapped = LOW + np.mod(offset, span)
    folded = LOW + span - np.abs(np.mod(offset, 2 * span) - span)
    return np.where(PERIODIC, wrapped, folded)


@dataclass
class ChainSamples:
    """Thinned states of the cold chains: arrays with a leading (samples, chains) shape."""

    state: np.ndarray  # (S, B, D)
    n_channels: np.ndarray  # (S, B)
    log_likelihood: np.ndarray  # (S, B)
    step: np.ndarray  # (S,)
    acceptance: np.ndarray  # (B,) after burn-in, all moves
    move_acceptance: dict[str, float]
    swap_acceptance: float
    jump_acceptance: float | None = None  # differential-evolution jumps of the cold chains


def temperature_ladder(levels: int, hottest: float) -> np.ndarray:
    """Geometric temperatures 1 ... ``hottest`` for parallel tempering (one level: just 1)."""
    if levels <= 1:
        return np.ones(1)
    return hottest ** (np.arange(levels) / (levels - 1))


def run_chains(
    likelihood: ChannelLikelihood,
    initial_state: np.ndarray,
    initial_channels: np.ndarray,
    temperatures: np.ndarray,
    samples: int,
    thin: int,
    burn_in: int,
    rng: np.random.Generator,
    show_progress: bool | None = None,
    swap_scheme: str = "random",
    jump_every: int = 0,
    chains_per_problem: int = 1,
) -> ChainSamples:
    """Vectorised Metropolis--Hastings with parallel tempering; keeps every ``thin``-th state.

    Chains are laid out as (groups, levels): chain ``g * levels + l`` of group ``g`` targets the
    likelihood raised to ``1 / temperatures[l]``. Every step each chain makes one MH move at its
    temperature; every ``SWAP_EVERY`` steps each group proposes to exchange the states of two
    neighbouring levels (Swendsen & Wang 1986; Geyer 1991), which lets the cold chain (level 0,
    the only one kept) leave local modes of the multimodal channel posterior. With
    ``jump_every`` > 0, every ``jump_every`` steps the chains of each problem (consecutive
    groups of ``chains_per_problem``, at least 4) also make differential-evolution jumps
    (:data:`JUMP_NOISE` and the comment above it); 0 draws no random number for them.
    """
    levels = temperatures.size
    chains = initial_state.shape[0]
    groups = chains // levels
    inverse_t = np.tile(1.0 / temperatures, groups)
    state = initial_state.copy()
    n_channels = initial_channels.copy()
    tracker = (
        likelihood.tracker(state, n_channels)
        if hasattr(likelihood, "tracker")
        else PlainTracker(likelihood, state, n_channels)
    )
    log_lik = tracker.current
    scale = np.ones(chains)
    window_accepted = np.zeros(chains)
    window_tried = np.zeros(chains)
    accepted_after = np.zeros(chains)
    move_accepted = np.zeros(3)
    move_tried = np.zeros(3)
    swaps_accepted = swaps_tried = 0
    jumps_accepted = jumps_tried = 0
    if jump_every > 0 and chains_per_problem < 4:
        raise EnsembleError(
            f"differential-evolution jumps (jump_every {jump_every}) need chains_per_problem >= 4,"
            f" got {chains_per_problem}"
        )
    total_steps = burn_in + samples * thin
    cold = np.arange(groups) * levels
    kept_state = np.empty((samples, groups, N_CONTINUOUS))
    kept_channels = np.empty((samples, groups), dtype=np.int64)
    kept_log_lik = np.empty((samples, groups))
    kept_step = np.empty(samples, dtype=np.int64)

    blocks = range(0, total_steps, 100)
    for block_start in progress(blocks, len(blocks), samples * groups, "MCMC", show_progress):
        for step in range(block_start, min(block_start + 100, total_steps)):
            move = rng.choice(3, size=chains, p=MOVE_PROBABILITIES)
            proposal = state.copy()
            new_channels = n_channels.copy()
            valid = np.ones(chains, dtype=bool)

            glob = move == MOVE_GLOBAL
            noise = rng.normal(size=(chains, N_GLOBAL)) * BASE_STEP[:N_GLOBAL] * scale[:, None]
            proposal[glob, :N_GLOBAL] += noise[glob]

            chan = np.flatnonzero(move == MOVE_CHANNEL)
            slot = (rng.random(chains) * n_channels).astype(np.int64)[chan]
            for columns in (OFFSET_COLUMNS, PHASE_COLUMNS):
                step_size = BASE_STEP[columns[0]] * scale[chan]
                proposal[chan, columns[slot]] += rng.normal(size=chan.size) * step_size

            dim = np.flatnonzero(move == MOVE_DIMENSION)
            _birth_death(proposal, new_channels, valid, dim, rng)

            accept = _metropolis(
                proposal, new_channels, valid, state, n_channels, log_lik, inverse_t, tracker, rng
            )

            if levels > 1 and swap_scheme == "even_odd":
                accepted, tried = _swap_levels(
                    state, n_channels, log_lik, temperatures, rng, step % 2, tracker.swap
                )
                if step >= burn_in:
                    swaps_accepted += accepted
                    swaps_tried += tried
            elif levels > 1 and step % SWAP_EVERY == 0:
                accepted, tried = _swap_levels(
                    state, n_channels, log_lik, temperatures, rng, on_swap=tracker.swap
                )
                if step >= burn_in:
                    swaps_accepted += accepted
                    swaps_tried += tried

            if jump_every > 0 and (step + 1) % jump_every == 0:
                for half in (0, 1):
                    proposal, moving = _jump_proposal(state, rng, chains_per_problem, levels, half)
                    accepted = _metropolis(
                        proposal, n_channels, moving, state, n_channels, log_lik, inverse_t,
                        tracker, rng,
                    )  # fmt: skip
                    if step >= burn_in:
                        jumps_accepted += int(accepted[cold].sum())
                        jumps_tried += int(moving[cold].sum())

            if step < burn_in:
                continuous = move != MOVE_DIMENSION
                window_accepted += accept & continuous
                window_tried += continuous
                if (step + 1) % ADAPT_EVERY == 0:
                    rate = window_accepted / np.maximum(window_tried, 1)
                    scale *= np.exp(1.5 * (rate - TARGET_ACCEPTANCE))
                    scale = np.clip(scale, 0.02, 20.0)
                    window_accepted[:] = 0
                    window_tried[:] = 0
            else:
                accepted_after += accept
                np.add.at(move_tried, move[cold], 1)
                np.add.at(move_accepted, move[cold][accept[cold]], 1)
                after = step - burn_in + 1
                if after % thin == 0:
                    index = after // thin - 1
                    kept_state[index] = state[cold]
                    kept_channels[index] = n_channels[cold]
                    kept_log_lik[index] = log_lik[cold]
                    kept_step[index] = step + 1
    steps_after = max(samples * thin, 1)
    names = ("global", "channel", "birth_death")
    return ChainSamples(
        state=kept_state,
        n_channels=kept_channels,
        log_likelihood=kept_log_lik,
        step=kept_step,
        acceptance=accepted_after[cold] / steps_after,
        move_acceptance={
            name: float(move_accepted[i] / max(move_tried[i], 1)) for i, name in enumerate(names)
        },
        swap_acceptance=float(swaps_accepted / max(swaps_tried, 1)),
        jump_acceptance=float(jumps_accepted / jumps_tried) if jumps_tried else None,
    )


def _jump_proposal(
    state: np.ndarray, rng: np.random.Generator, chains_per_problem: int, levels: int, half: int
) -> tuple[np.ndarray, np.ndarray]:
    """The differential-evolution proposal of the chains in ``half`` (0: even, 1: odd chains of
    each problem), their differences from two distinct chains of the other half at the same
    level: the proposed states (the other chains unchanged) and which chains move."""
    chains, width = state.shape
    problems = chains // (chains_per_problem * levels)
    by_chain = state.reshape(problems, chains_per_problem, levels, width)
    own = np.arange(half, chains_per_problem, 2)
    other = np.arange(1 - half, chains_per_problem, 2)
    shape = (problems, own.size, levels)
    first = rng.integers(0, other.size, size=shape)
    second = (first + rng.integers(1, other.size, size=shape)) % other.size
    index = np.arange(problems)[:, None, None], np.arange(levels)[None, None, :]
    difference = (
        by_chain[index[0], other[first], index[1]] - by_chain[index[0], other[second], index[1]]
    )
    span = HIGH - LOW  # periodic columns: the shorter way round
    difference = np.where(PERIODIC, (difference + span / 2) % span - span / 2, difference)
    jitter = rng.normal(size=difference.shape) * BASE_STEP * JUMP_NOISE
    moving = np.zeros((problems, chains_per_problem, levels), dtype=bool)
    moving[:, own] = True
    moving = moving.ravel()
    proposal = state.copy()
    proposal.reshape(problems, chains_per_problem, levels, width)[:, own] += difference + jitter
    return proposal, moving


def _metropolis(
    proposal: np.ndarray,
    new_channels: np.ndarray,
    valid: np.ndarray,
    state: np.ndarray,
    n_channels: np.ndarray,
    log_lik: np.ndarray,
    inverse_t: np.ndarray,
    tracker,
    rng: np.random.Generator,
) -> np.ndarray:
    """Accept or refuse the (``valid``) proposals of a symmetric move, tempered by
    ``inverse_t``, after mapping them into the prior box; updates state, channel counts and log
    likelihoods in place and returns which chains accepted."""
    proposal = reflect_and_wrap(proposal)
    new_log_lik = tracker.propose(proposal, new_channels, valid)
    log_ratio = inverse_t * (new_log_lik - log_lik)
    accept = np.log(rng.random(state.shape[0])) < np.where(valid, log_ratio, -np.inf)
    tracker.accept(accept)
    state[accept] = proposal[accept]
    n_channels[accept] = new_channels[accept]
    log_lik[accept] = new_log_lik[accept]
    return accept


def _swap_levels(
    state: np.ndarray,
    n_channels: np.ndarray,
    log_lik: np.ndarray,
    temperatures: np.ndarray,
    rng: np.random.Generator,
    parity: int | None = None,
    on_swap: Callable[[np.ndarray, np.ndarray], None] | None = None,
) -> tuple[int, int]:
    """Propose, in every group, to exchange the states of levels l and l+1: one random l
    (``parity`` None), or every l with ``l % 2 == parity`` at once (disjoint pairs). ``on_swap(a,
    b)`` is told which chains exchanged states (to exchange caches). Returns (accepted,
    proposed)."""
    levels = temperatures.size
    groups = state.shape[0] // levels
    if parity is None:
        lower = np.arange(groups) * levels + rng.integers(0, levels - 1, size=groups)
    else:
        pairs = np.arange(parity, levels - 1, 2)
        if pairs.size == 0:
            return 0, 0
        lower = (np.arange(groups)[:, None] * levels + pairs[None, :]).ravel()
    upper = lower + 1
    beta = 1.0 / np.tile(temperatures, groups)
    log_ratio = (beta[lower] - beta[upper]) * (log_lik[upper] - log_lik[lower])
    accept = np.log(rng.random(lower.size)) < log_ratio
    a, b = lower[accept], upper[accept]
    for array in (state, n_channels, log_lik):
        array[a], array[b] = array[b].copy(), array[a].copy()
    if on_swap is not None:
        on_swap(a, b)
    return int(accept.sum()), int(lower.size)


def _birth_death(
    proposal: np.ndarray,
    n_channels: np.ndarray,
    valid: np.ndarray,
    rows: np.ndarray,
    rng: np.random.Generator,
) -> None:
    """Propose n +- 1 in place for ``rows``; the changed channel slot is redrawn from the prior.

    Birth adds a prior-drawn channel at a uniformly chosen position among the active slots;
    death removes a uniformly chosen active channel. Both directions are chosen with probability
    1/2, so (with a uniform prior on n and on the slot parameters) the Hastings ratio is 1 and
    the acceptance ratio is the likelihood ratio. Proposals outside 1..MAX_CHANNELS are invalid.
    """
    if rows.size == 0:
        return
    direction = np.where(rng.random(rows.size) < 0.5, -1, 1)
    current = n_channels[rows]
    target = current + direction
    ok = (target >= 1) & (target <= MAX_CHANNELS)
    valid[rows[~ok]] = False
    rows, current, target, direction = rows[ok], current[ok], target[ok], direction[ok]
    fresh_offset = rng.uniform(LOW[OFFSET_COLUMNS[0]], HIGH[OFFSET_COLUMNS[0]], size=rows.size)
    fresh_phase = rng.uniform(0.0, 2 * np.pi, size=rows.size)
    # Birth: the new channel enters slot `current`, then swaps with a random slot 0..current.
    # Death: a random active slot swaps with the last active slot, which is then dropped.
    last = np.where(direction > 0, current, current - 1)
    swap_with = (rng.random(rows.size) * np.where(direction > 0, current + 1, current)).astype(int)
    birth = direction > 0
    proposal[rows[birth], OFFSET_COLUMNS[last[birth]]] = fresh_offset[birth]
    proposal[rows[birth], PHASE_COLUMNS[last[birth]]] = fresh_phase[birth]
    for columns in (OFFSET_COLUMNS, PHASE_COLUMNS):
        a = proposal[rows, columns[last]].copy()
        b = proposal[rows, columns[swap_with]].copy()
        proposal[rows, columns[last]] = b
        proposal[rows, columns[swap_with]] = a
    death = ~birth
    proposal[rows[death], OFFSET_COLUMNS[last[death]]] = fresh_offset[death]
    proposal[rows[death], PHASE_COLUMNS[last[death]]] = fresh_phase[death]
    n_channels[rows] = target


def convergence_summaries(
    samples: ChainSamples, sand_fraction: np.ndarray
) -> dict[str, np.ndarray]:
    """Scalar summaries of every kept cold-chain state, each (samples, chains), for R-hat/ESS:
    the log-likelihood (the sampler's energy), the sand fraction of the rendered member, the
    axial orientation cos(2 theta), the sinuosity and the channel count."""
    return {
        "log_likelihood": samples.log_likelihood,
        "sand_fraction": sand_fraction,
        "orientation": np.cos(2 * samples.state[..., 0]),
        "sinuosity": samples.state[..., 1],
        "n_channels": samples.n_channels.astype(np.float64),
    }


def generate_channels(
    n: int,
    size: int = 64,
    labeled_fraction: float = 0.05,
    seed: int = 0,
    *,
    problems: int = 5,
    chains_per_problem: int | None = None,
    wells: int = 4,
    thin: int = 10,
    burn_in: int = 1000,
    temperature: float = 1.0,
    tempering_levels: int = 6,
    hottest_temperature: float = 50.0,
    swap_scheme: str = "random",
    jump_every: int = 0,
    noise: float = 0.0,
    blur: float = 0.0,
    progress_bar: bool | None = None,
) -> tuple[Ensemble, GenerationInfo]:
    """Sample ``n`` members from the channel posterior (see the module docstring).

    ``problems`` hidden true fields (regimes cycling 0..4) each get ``chains_per_problem``
    chains (default grows with n, 4 to 64); each chain keeps every ``thin``-th state after
    ``burn_in`` steps. ``wells`` boreholes observe each true field; ``temperature`` > 1 widens
    the posterior. Each kept chain is the cold end of a parallel-tempering ladder of
    ``tempering_levels`` chains up to ``hottest_temperature`` (1 level: plain MH), whose
    neighbours swap states by ``swap_scheme`` (``SWAP_SCHEMES``: "random" or "even_odd").
    ``jump_every`` > 0 adds differential-evolution jumps between the chains of a problem every
    that many steps (needs 4 chains per problem or more; see :data:`JUMP_NOISE`).
    Returns the ensemble and the run info (acceptance rates, R-hat, timing).
    """
    started = time.perf_counter()
    check_common_arguments(n, size, labeled_fraction)
    if min(problems, wells, thin, tempering_levels) < 1 or burn_in < 0:
        raise EnsembleError(
            "channels needs problems, wells, thin and tempering_levels >= 1 and burn_in >= 0"
        )
    if swap_scheme not in SWAP_SCHEMES:
        raise EnsembleError(f"swap_scheme must be one of {SWAP_SCHEMES}, got {swap_scheme!r}")
    if temperature <= 0 or hottest_temperature < 1:
        raise EnsembleError("channels needs temperature > 0 and hottest_temperature >= 1")
    if chains_per_problem is None:
        chains_per_problem = int(np.clip(np.ceil(n / (problems * 60)), 4, 64))
    chains_per_problem = int(chains_per_problem)
    if chains_per_problem < 1:
        raise EnsembleError("chains_per_problem must be >= 1")
    if jump_every < 0:
        raise EnsembleError(f"jump_every must be >= 0, got {jump_every}")
    rng = np.random.default_rng(seed)
    problem_list = [make_problem(p % len(CLASS_NAMES), wells, rng) for p in range(problems)]
    chain_problem = np.repeat(np.arange(problems), chains_per_problem)
    chains = chain_problem.size
    samples = int(np.ceil(n / chains))
    temperatures = temperature * temperature_ladder(tempering_levels, hottest_temperature)
    likelihood = ChannelLikelihood(problem_list, np.repeat(chain_problem, tempering_levels))
    initial_state, initial_channels = sample_prior(chains * tempering_levels, rng)
    result = run_chains(
        likelihood,
        initial_state,
        initial_channels,
        temperatures,
        samples,
        thin,
        burn_in,
        rng,
        progress_bar,
        swap_scheme,
        jump_every,
        chains_per_problem,
    )
    mcmc_seconds = time.perf_counter() - started

    # Members in sample-major order, so truncating to n drops the last draws of some chains.
    state = result.state.reshape(-1, N_CONTINUOUS)[:n]
    n_channels = result.n_channels.reshape(-1)[:n]
    sample_index = np.repeat(np.arange(samples), chains)[:n]
    chain_index = np.tile(np.arange(chains), samples)[:n]
    fields, visible_channels = render_facies_and_visible(state, n_channels, size)
    classes = regime_of(state[:, 0], state[:, 1], visible_channels)
    labels = choose_labeled(classes, labeled_fraction, rng)
    sand_fraction = fields.reshape(n, -1).mean(axis=1)
    fields = add_noise_and_blur(fields[:, None], noise, blur, rng)

    metadata = {
        "theta_deg": np.degrees(state[:, 0]),
        "sinuosity": state[:, 1],
        "wavelength": state[:, 2],
        "amplitude": state[:, 1] * state[:, 2] / (2 * np.pi),
        "width": state[:, 3],
        "n_channels": n_channels.astype(np.int64),
        "visible_channels": visible_channels,
        "parameter_regime": regime_of(state[:, 0], state[:, 1], n_channels),
        "sand_fraction": sand_fraction.astype(np.float64),
        "regime": classes,
        "problem": chain_problem[chain_index],
        "true_regime": np.array([p.true_regime for p in problem_list])[chain_problem][chain_index],
        "chain": chain_index,
        "step": result.step[sample_index],
        "log_likelihood": result.log_likelihood.reshape(-1)[:n],
        "chain_acceptance": result.acceptance[chain_index],
    }
    for k in range(MAX_CHANNELS):
        metadata[f"offset_{k}"] = state[:, OFFSET_COLUMNS[k]]
        metadata[f"phase_{k}"] = state[:, PHASE_COLUMNS[k]]

    # Convergence over the complete rows of kept states (every chain has the same samples).
    full = n // chains
    sand_rows = sand_fraction[: full * chains].reshape(full, chains).astype(np.float64)
    kept = ChainSamples(
        state=result.state[:full],
        n_channels=result.n_channels[:full],
        log_likelihood=result.log_likelihood[:full],
        step=result.step[:full],
        acceptance=result.acceptance,
        move_acceptance=result.move_acceptance,
        swap_acceptance=result.swap_acceptance,
    )
    convergence = convergence_table(convergence_summaries(kept, sand_rows), chain_problem)
    member_problem = chain_problem[chain_index]
    metadata["problem_r_hat"] = np.asarray(convergence["r_hat"])[member_problem]
    metadata["problem_ess"] = np.asarray(convergence["ess"])[member_problem]
    info = GenerationInfo(
        name="channels",
        n=n,
        size=size,
        labeled_fraction=labeled_fraction,
        seed=seed,
        options={
            "problems": problems,
            "chains_per_problem": chains_per_problem,
            "wells": wells,
            "thin": thin,
            "burn_in": burn_in,
            "temperature": temperature,
            "tempering_levels": tempering_levels,
            "hottest_temperature": hottest_temperature,
            "swap_scheme": swap_scheme,
            "jump_every": jump_every or None,
            "noise": noise,
            "blur": blur,
        },
        stats={
            "acceptance_rate": float(result.acceptance.mean()),
            "acceptance_by_move": result.move_acceptance,
            "swap_acceptance": result.swap_acceptance,
            "jump_acceptance": result.jump_acceptance,
            "chains": chains,
            "samples_per_chain": samples,
            "mcmc_steps": burn_in + samples * thin,
            "mcmc_seconds": mcmc_seconds,
            "r_hat": convergence["r_hat"],
            "ess": convergence["ess"],
            "convergence_by_summary": convergence["by_summary"],
            "true_regimes": [CLASS_NAMES[p.true_regime] for p in problem_list],
            "class_counts": class_counts(classes, CLASS_NAMES),
        },
    )
    ensemble = Ensemble(
        fields=fields,
        labels=labels,
        class_names=CLASS_NAMES,
        metadata=metadata,
    )
    info.seconds = time.perf_counter() - started
    return ensemble, info
