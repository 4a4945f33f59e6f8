"""drops: droplet impact on a liquid film, 7 regimes (a procedural model, not a CFD simulation).

Each member is the liquid volume fraction on the axial cross-section of an axisymmetric impact
(width 5 D by height 5 D, D = drop diameter; the wall is the bottom edge, the film of thickness
``delta * D`` lies on it) at a random dimensionless time ``tau = t U / D`` after impact. Fields
come from *kinematic* models of each regime -- shapes placed by scaling laws -- not from solving
the Navier--Stokes equations: they are meant to look and vary like impact snapshots so that an
embedding can be tested on them, not to predict an experiment.

Dimensionless groups: Weber ``We = rho U^2 D / sigma``, Ohnesorge ``Oh = mu / sqrt(rho sigma D)``
(Reynolds ``Re = sqrt(We) / Oh``), film thickness ratio ``delta = h / D``, and the splash
parameter ``K = We Oh^-0.4`` (= We^0.8 Re^0.4) of Cossali, Coghe & Marengo (1997, Exp. Fluids 22,
463--472).

Regimes (``CLASS_NAMES``) and their boundaries, checked in this order
--------------------------------------------------------------------
0 ``bouncing``       We < 10: an air layer keeps the drop off the film; it flattens and
                     rebounds (Pan & Law 2007, J. Fluid Mech. 587, 1--22; Tang et al. 2018,
                     J. Fluid Mech. 844, 1026--1043).
1 ``coalescence``    K < 400: the drop merges with the film and drains into a spreading mound
                     (deposition; Yarin 2006, Annu. Rev. Fluid Mech. 38, 159--192).
6 ``jet_cavity``     delta >= 0.8 and K < K_splash: on a deep film a crater opens and collapses
                     into a central Worthington jet, trapping a bubble (Fedorchenko & Wang 2004,
                     Phys. Fluids 16, 1349; Oguz & Prosperetti 1990, J. Fluid Mech. 219, 143).
2 ``spreading_lamella`` K < K_crown = 0.35 K_splash: a thin lamella spreads with a low rim.
3 ``crown``          K < K_splash(delta) = 2100 + 5880 delta^1.44 (Cossali et al. 1997): a crown
                     sheet rises, its radius growing like sqrt(tau) (Yarin & Weiss 1995, J. Fluid
                     Mech. 283, 141--173), without breakup.
4 ``crown_splash``   K >= K_splash: the crown rim breaks into fingers and secondary droplets,
                     more and smaller as We grows (Wang & Chen 2000, Phys. Fluids 12, 2155; the
                     threshold stays ~2100 on very thin films).
5 ``prompt_splash``  delta < 0.2 and K >= 3 K_splash: fine droplets are ejected at the contact
                     line early, before a crown forms (Josserand & Thoroddsen 2016, Annu. Rev. Fluid
                     Mech. 48, 365--391).

The K_crown and K_prompt factors (0.35 and 3) and We = 10 are choices of this model that place
the regimes where the cited observations put them qualitatively.

Sampling: ``log10 We ~ U(0, 3.4)``, ``log10 Oh ~ U(-3.3, -1.3)``, ``delta`` log-uniform on
[0.02, 1.5]; by default (``balance="uniform"``) draws are kept so that every regime gets the
same number of members (n/7, remainders to the first classes); ``balance="natural"`` keeps the
prior's own regime frequencies. Feature strengths (crown height, fingers, droplets, prompt
spray) are smooth functions of ``log K`` that cross the boundaries gradually, so members near a
boundary look like their neighbours across it; with the random time this makes ``drops`` harder
to separate than ``channels``, as in the SENSE paper.

Classes say what the field shows (metadata ``regime``; the parameters' regime is
``parameter_regime``): a ``crown`` or ``crown_splash`` member is ``crown_splash`` exactly when
fingers or secondary droplets are in the field (:func:`splash_shown`). Late in a splash on a
thin film they have flown out of the window (then the member shows a crown: class ``crown``),
and just below K_splash a crown already sheds a few (class ``crown_splash``). So with
``balance="uniform"`` the parameter regimes are balanced and the shown classes nearly so
(1,500 members at 64 px, seed 0, ``times_per_simulation=1``: 175 ``crown_splash``, 253
``crown``, 214-215 each other class; with the default 8 times: 165 and 263).
"""

from __future__ import annotations

import time

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
    smoothstep,
)

CLASS_NAMES = (
    "bouncing",
    "coalescence",
    "spreading_lamella",
    "crown",
    "crown_splash",
    "prompt_splash",
    "jet_cavity",
)
BOUNCING, COALESCENCE, LAMELLA, CROWN, SPLASH, PROMPT, JET = range(7)

WE_BOUNCE = 10.0
K_COALESCENCE = 400.0
CROWN_FACTOR = 0.35
PROMPT_FACTOR = 3.0
PROMPT_MAX_DELTA = 0.2
DEEP_DELTA = 0.8

LOG_WE_RANGE = (0.0, 3.4)
LOG_OH_RANGE = (-3.3, -1.3)
DELTA_RANGE = (0.02, 1.5)
DOMAIN = 5.0  # drop diameters across and up
MAX_DROPLETS = 5  # secondary droplets per side
RENDER_CHUNK = 512
SPLASH_VISIBLE_FRACTION = 4 / 4096  # share of the pixels a splash must change to be seen
DEFAULT_TIMES_PER_SIMULATION = 8  # snapshots of each simulated impact (members per path)


def splash_threshold(delta: np.ndarray) -> np.ndarray:
    """K at the onset of crown splash, Cossali et al. (1997): 2100 + 5880 delta^1.44."""
    return 2100.0 + 5880.0 * np.asarray(delta) ** 1.44


def regime_of(weber: np.ndarray, ohnesorge: np.ndarray, delta: np.ndarray) -> np.ndarray:
    """Regime index (``CLASS_NAMES``) of each (We, Oh, delta); see the module docstring."""
    weber, ohnesorge, delta = np.broadcast_arrays(
        np.asarray(weber, float), np.asarray(ohnesorge, float), np.asarray(delta, float)
    )
    k = weber * ohnesorge**-0.4
    k_splash = splash_threshold(delta)
    regime = np.full(weber.shape, SPLASH, dtype=np.int64)
    regime[(delta < PROMPT_MAX_DELTA) & (k >= PROMPT_FACTOR * k_splash)] = PROMPT
    regime[k < k_splash] = CROWN
    regime[k < CROWN_FACTOR * k_splash] = LAMELLA
    regime[(delta >= DEEP_DELTA) & (k < k_splash)] = JET
    regime[k < K_COALESCENCE] = COALESCENCE
    regime[weber < WE_BOUNCE] = BOUNCING
    return regime


def class_quota(n: int) -> np.ndarray:
    """Members per regime of a balanced ensemble: n // 7 each, the remainder to the first."""
    quota = np.full(len(CLASS_NAMES), n // len(CLASS_NAMES))
    quota[: n % len(CLASS_NAMES)] += 1
    return quota


def sample_parameters(
    n: int, rng: np.random.Generator, balance: str = "uniform", quota: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """Draw (We, Oh, delta) for ``n`` members, class-balanced or from the prior as is.

    ``quota``: with ``balance="uniform"``, how many draws each regime gets (summing to ``n``;
    default :func:`class_quota`)."""
    if balance not in ("uniform", "natural"):
        raise EnsembleError(f"balance must be 'uniform' or 'natural', got {balance!r}")

    def draw(count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        weber = 10 ** rng.uniform(*LOG_WE_RANGE, size=count)
        ohnesorge = 10 ** rng.uniform(*LOG_OH_RANGE, size=count)
        delta = np.exp(rng.uniform(*np.log(DELTA_RANGE), size=count))
        return weber, ohnesorge, delta

    if balance == "natural":
        weber, ohnesorge, delta = draw(n)
    else:
        quota = class_quota(n) if quota is None else np.asarray(quota, dtype=np.int64)
        parts: list[tuple[np.ndarray, ...]] = []
        filled = np.zeros_like(quota)
        while (filled < quota).any():
            candidate = draw(max(4 * n, 1024))
            regime = regime_of(*candidate)
            for c in np.flatnonzero(filled < quota):
                take = np.flatnonzero(regime == c)[: quota[c] - filled[c]]
                parts.append(tuple(a[take] for a in candidate))
                filled[c] += take.size
        weber, ohnesorge, delta = (np.concatenate([p[i] for p in parts]) for i in range(3))
        order = rng.permutation(n)
        weber, ohnesorge, delta = weber[order], ohnesorge[order], delta[order]
    regime = regime_of(weber, ohnesorge, delta)
    return {"weber": weber, "ohnesorge": ohnesorge, "delta": delta, "regime": regime}


# Time windows (tau = t U / D after impact) in which each regime is shown.
TIME_WINDOWS = {
    BOUNCING: (0.0, 2.5),
    COALESCENCE: (0.0, 3.0),
    LAMELLA: (0.1, 1.0),
    CROWN: (0.1, 1.2),
    SPLASH: (0.15, 0.8),  # later, the rim and its droplets leave the 5 D window
    PROMPT: (0.03, 0.35),
    JET: (0.2, 3.0),
}


def sample_times(regime: np.ndarray, rng: np.random.Generator, times: int = 1) -> np.ndarray:
    """(count, times) increasing snapshot times of each simulation inside its regime's window:
    one uniform draw in each of ``times`` equal parts of the window (stratified), so that a
    simulation is seen from impact towards its end, and ``times=1`` is a uniform draw."""
    low = np.array([TIME_WINDOWS[r][0] for r in range(7)])[regime][:, None]
    high = np.array([TIME_WINDOWS[r][1] for r in range(7)])[regime][:, None]
    part = (np.arange(times)[None, :] + rng.random((regime.size, times))) / times
    return low + (high - low) * part


# ---------------------------------------------------------------- signed distance primitives
def _circle(r, z, cr, cz, radius):
    return np.sqrt((r - cr) ** 2 + (z - cz) ** 2) - radius


def _ellipse(r, z, cr, cz, a, b):
    return (np.sqrt(((r - cr) / a) ** 2 + ((z - cz) / b) ** 2) - 1.0) * np.minimum(a, b)


def _segment(r, z, r0, z0, r1, z1, half_thickness):
    dr, dz = r1 - r0, z1 - z0
    length2 = dr * dr + dz * dz + 1e-9
    t = np.clip(((r - r0) * dr + (z - z0) * dz) / length2, 0.0, 1.0)
    return np.sqrt((r - r0 - t * dr) ** 2 + (z - z0 - t * dz) ** 2) - half_thickness


def _smooth_union(a, b, k):
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _col(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=np.float32)[:, None, None]


class _Grid:
    """Half cross-section (r >= 0) pixel centres in drop diameters; row 0 is the top."""

    def __init__(self, size: int):
        self.size = size
        self.pixel = DOMAIN / size
        half = (size + 1) // 2
        self.r = ((np.arange(half) + 0.5 - (size % 2) * 0.5) * self.pixel).astype(np.float32)
        self.r = self.r[None, None, :]
        z = (size - np.arange(size) - 0.5) * self.pixel
        self.z = z.astype(np.float32)[None, :, None]

    def fraction(self, sdf: np.ndarray) -> np.ndarray:
        """Liquid fraction of each pixel from a signed distance (negative inside), antialiased."""
        return np.clip(0.5 - sdf / self.pixel, 0.0, 1.0)

    def mirror(self, half: np.ndarray) -> np.ndarray:
        """Full (B, H, W) image from the r >= 0 half (the axis is the middle column)."""
        left = half[:, :, ::-1]
        if self.size % 2:
            return np.concatenate([left, half[:, :, 1:]], axis=2)
        return np.concatenate([left, half], axis=2)


# ---------------------------------------------------------------- regime renderers
def _render_bouncing(grid, p, jitter):
    """Drop flattening on an air cushion, then rebounding; the film dimples under it."""
    r, z = grid.r, grid.z
    we, delta, tau = _col(p["weber"]), _col(p["delta"]), _col(p["tau"])
    contact = 0.9 * np.sqrt(np.maximum(we, 1.0)) + 0.6  # drop-film contact time
    phase = tau / contact
    squeeze = np.sin(np.pi * np.clip(phase, 0, 1)) * (0.15 + 0.08 * np.sqrt(we))
    oscillation = np.where(phase > 1, 0.12 * np.sin(4.0 * (tau - contact)), 0.0)
    aspect = 1.0 + squeeze - oscillation
    gap = 0.06 + 0.03 * jitter[:, 0, None, None]
    rebound = np.where(phase > 1, 0.25 * (tau - contact) * (1 + 0.5 * jitter[:, 1, None, None]), 0)
    half_height = 0.5 / aspect
    centre = delta + gap + half_height + rebound
    drop = _ellipse(r, z, 0.0, centre, 0.5 * np.sqrt(aspect), half_height)
    dimple = 0.6 * squeeze * np.minimum(delta, 0.3) * np.exp(-((r / 0.6) ** 2))
    film = z - (delta - dimple)
    return np.minimum(drop, film)


def _render_coalescence(grid, p, jitter):
    """Drop draining into the film through a neck; a mound spreads as the drop empties."""
    r, z = grid.r, grid.z
    delta, tau = _col(p["delta"]), _col(p["tau"])
    drained = 1.0 - np.exp(-tau / (0.9 + 0.4 * jitter[:, 0, None, None]))
    radius = 0.5 * (1.0 - drained) ** (1 / 3) + 1e-3
    drop = _circle(r, z, 0.0, delta + radius * 0.9, radius)
    spread = 0.45 + 0.55 * np.sqrt(tau)
    mound_height = 0.45 * drained / spread**2
    ripple = 0.025 * np.cos(7.0 * (r - 1.2 * tau)) * np.exp(-((r - 1.0 * tau - 0.6) ** 2))
    film = z - (delta + mound_height * np.exp(-((r / spread) ** 2)) + ripple)
    return _smooth_union(drop, film, 0.18)


def _render_crown_family(grid, p, jitter):
    """Lamella, crown, crown splash and prompt splash: one kinematic model, smooth strengths.

    Crown radius R = beta delta^-1/4 sqrt(tau) (Yarin & Weiss 1995); crown height grows with
    log K past K_crown; fingers and secondary droplets appear past K_splash, more and smaller
    at higher We; prompt spray and a still-unflattened drop appear at early times past K_prompt.
    """
    r, z = grid.r, grid.z
    we, delta, tau = p["weber"], p["delta"], p["tau"]
    k = we * p["ohnesorge"] ** -0.4
    k_splash = splash_threshold(delta)
    crown_strength = smoothstep(np.log10(k / (CROWN_FACTOR * k_splash)), -0.12, 0.12)
    splash_strength = smoothstep(np.log10(k / k_splash), -0.1, 0.12)
    if "no_splash" in p:  # the same impact without fingers and droplets (splash_shown)
        splash_strength = np.where(p["no_splash"], 0.0, splash_strength)
    prompt_strength = smoothstep(np.log10(k / (PROMPT_FACTOR * k_splash)), -0.1, 0.1) * (
        1.0 - smoothstep(delta, 0.15, 0.25)
    )
    radius = np.minimum(0.3 + 1.15 * (0.9 + 0.2 * jitter[:, 0]) * delta**-0.25 * np.sqrt(tau), 2.3)
    height = (
        crown_strength
        * (1.0 - prompt_strength)
        * np.minimum(0.25 * we**0.32 * np.sqrt(tau) * (0.85 + 0.3 * jitter[:, 1]), 2.4)
    )
    height = np.maximum(height, 0.08)
    lean = 0.25 + 0.25 * jitter[:, 2] + 0.4 * prompt_strength
    wall = np.maximum(0.05 + 0.03 * np.minimum(delta, 1.0), 0.6 * grid.pixel)
    base_z = delta + 0.02
    top_r = radius + height * lean
    top_z = base_z + height

    R, TR, TZ, W = _col(radius), _col(top_r), _col(top_z), _col(wall)
    D, B = _col(delta), _col(base_z)
    # Film thinned inside the crown (a crater on deeper films), lamella rim at the base.
    crater = _col(0.6 * smoothstep(delta, 0.3, 1.0) * np.minimum(delta, 1.0))
    inside = np.clip(1.0 - (r / R) ** 2, 0.0, 1.0)
    residual = D * (0.55 + 0.25 * _col(crown_strength)) - crater * inside
    # Without a crown the drop's liquid spreads as a lamella on top of the film.
    lamella = D + _col(1.0 - crown_strength) * (0.05 + 0.12 * inside) / (0.6 + R)
    surface = np.where(r < R, np.maximum(residual, lamella), D)
    sdf = z - surface
    sdf = np.minimum(sdf, _segment(r, z, R, B - W, TR, TZ, W))
    sdf = np.minimum(sdf, _circle(r, z, TR, TZ, 1.6 * W))
    # Fingers: jets from the rim, outward and up, longer for stronger splash.
    finger = _col(splash_strength * (0.25 + 0.2 * np.log10(np.maximum(k / k_splash, 1.0))))
    sdf = np.minimum(sdf, _segment(r, z, TR, TZ, TR + 0.6 * finger, TZ + finger, 0.7 * W))
    # Secondary droplets on ballistic paths from the rim: count grows, size shrinks with We.
    count = splash_strength * (1.5 + 2.0 * np.log10(np.maximum(k / k_splash, 1.0)) + we / 600)
    size = 0.09 * (we / 500.0) ** -0.2
    for i in range(MAX_DROPLETS):
        visible = np.clip(count - i, 0.0, 1.0)
        angle = 0.35 + 0.9 * jitter[:, 3 + i]
        travel = (0.25 + 0.45 * i / MAX_DROPLETS) * np.sqrt(tau) * 2.2
        dr_ = top_r + travel * np.cos(angle)
        dz_ = top_z + travel * np.sin(angle) - 0.3 * tau**2
        drop_radius = visible * size * (0.6 + 0.5 * jitter[:, 8 + i])
        droplet = _circle(r, z, _col(dr_), _col(dz_), _col(drop_radius))
        sdf = np.minimum(sdf, np.where(_col(drop_radius) > 0.01, droplet, np.inf))
    # Prompt splash: fine spray low and fast from the contact line, the drop still above it.
    if np.any(prompt_strength > 0):
        ps = prompt_strength
        cap_height = np.clip(0.5 * (1.0 - tau / 0.4), 0.05, 0.5)
        cap = _ellipse(r, z, 0.0, _col(delta), _col(0.5 + 0.6 * tau), _col(cap_height * ps + 1e-3))
        sdf = np.minimum(sdf, np.where(_col(ps) > 0.01, cap, np.inf))
        for i in range(2 * MAX_DROPLETS):
            reach = radius + (0.2 + 1.4 * jitter[:, (i + 3) % 13]) * (0.5 + tau)
            lift = delta + 0.06 + 0.45 * jitter[:, (i + 7) % 13] * (0.3 + tau)
            spray = ps * 0.05 * (0.7 + 0.6 * jitter[:, (i + 5) % 13])
            droplet = _circle(r, z, _col(reach), _col(lift), _col(spray))
            sdf = np.minimum(sdf, np.where(_col(spray) > 0.005, droplet, np.inf))
    return sdf


def _render_jet_cavity(grid, p, jitter):
    """Crater opening and collapsing in a deep film, then a Worthington jet and a bubble."""
    r, z = grid.r, grid.z
    we, delta, tau = p["weber"], p["delta"], p["tau"]
    max_radius = np.minimum(0.3 * we**0.28 * (0.9 + 0.2 * jitter[:, 0]), 0.9 * delta + 0.3)
    max_radius = np.minimum(max_radius, 1.6)
    collapse = 0.8 + 0.9 * max_radius
    opening = np.sin(np.pi * np.clip(tau / collapse, 0.0, 1.0))
    crater = max_radius * opening
    after = np.maximum(tau - collapse, 0.0)
    jet_height = 1.8 * max_radius * np.sqrt(after) * np.exp(-0.4 * after)
    jet_width = 0.09 + 0.04 * jitter[:, 1]

    D, C = _col(delta), _col(crater)
    rim = 0.35 * C * np.exp(-(((r - 1.1 * C - 0.1) / 0.25) ** 2))
    film = z - (D + rim)
    cavity = _circle(r, z, 0.0, D + 0.1 * C, C + 1e-3)
    sdf = np.maximum(film, -cavity)
    jet_top = delta + jet_height
    jet = _segment(r, z, 0.0, D, 0.0, _col(jet_top), _col(jet_width))
    jet = np.where(_col(jet_height) > 0.05, jet, np.inf)
    sdf = np.minimum(sdf, jet)
    # Rayleigh--Plateau: a drop pinches off the top of a tall jet.
    pinch = jet_height > 0.9
    tip = _circle(r, z, 0.0, _col(jet_top + 0.25), _col(np.where(pinch, 1.6 * jet_width, 0.0)))
    sdf = np.minimum(sdf, tip)
    # Bubble entrapped at the bottom of the collapsed crater.
    bubble_radius = np.where(after > 0, 0.1 + 0.06 * jitter[:, 2], 0.0)
    bubble_z = delta - 0.3 * max_radius - 0.1
    bubble = _circle(r, z, 0.0, _col(bubble_z), _col(bubble_radius))
    return np.maximum(sdf, -bubble)


RENDERERS = {
    BOUNCING: _render_bouncing,
    COALESCENCE: _render_coalescence,
    LAMELLA: _render_crown_family,
    CROWN: _render_crown_family,
    SPLASH: _render_crown_family,
    PROMPT: _render_crown_family,
    JET: _render_jet_cavity,
}
JITTER_COLUMNS = 13


def render_drops(params: dict[str, np.ndarray], jitter: np.ndarray, size: int) -> np.ndarray:
    """Liquid volume fraction fields (B, size, size) float32 for the given parameters."""
    grid = _Grid(size)
    count = params["regime"].size
    half = np.empty((count, size, grid.r.shape[-1]), dtype=np.float32)
    family = {id(f): f for f in RENDERERS.values()}
    for renderer in family.values():
        members = np.flatnonzero(
            np.isin(params["regime"], [k for k, f in RENDERERS.items() if f is renderer])
        )
        for part in chunks(members.size, RENDER_CHUNK):
            rows = members[part]
            sub = {key: value[rows] for key, value in params.items()}
            half[rows] = grid.fraction(renderer(grid, sub, jitter[rows]))
    return grid.mirror(half)


def splash_shown(
    params: dict[str, np.ndarray], jitter: np.ndarray, fields: np.ndarray
) -> np.ndarray:
    """Whether each member's field (B, size, size) shows its crown's splash: at least
    ``SPLASH_VISIBLE_FRACTION`` of the pixels (4 of 64 x 64) change by more than half when the
    same impact is drawn without fingers and secondary droplets. Late in a splash they have left
    the window, and just below K_splash a crown already sheds a few."""
    size = fields.shape[-1]
    plain = render_drops({**params, "no_splash": np.ones(len(fields), dtype=bool)}, jitter, size)
    changed = (np.abs(fields - plain) > 0.5).reshape(len(fields), -1).sum(axis=1)
    return changed >= max(1, int(round(SPLASH_VISIBLE_FRACTION * size * size)))


def shown_regime(
    params: dict[str, np.ndarray], jitter: np.ndarray, fields: np.ndarray
) -> np.ndarray:
    """The class each field shows: its parameters' regime, except that a ``crown`` or
    ``crown_splash`` member is ``crown_splash`` exactly when its splash is in the field
    (:func:`splash_shown`)."""
    regime = np.array(params["regime"], dtype=np.int64)
    crowns = np.flatnonzero(np.isin(regime, (CROWN, SPLASH)))
    if crowns.size:
        sub = {key: value[crowns] for key, value in params.items()}
        shown = splash_shown(sub, jitter[crowns], fields[crowns])
        regime[crowns] = np.where(shown, SPLASH, CROWN)
    return regime


def generate_drops(
    n: int,
    size: int = 64,
    labeled_fraction: float = 0.05,
    seed: int = 0,
    *,
    balance: str = "uniform",
    times_per_simulation: int = DEFAULT_TIMES_PER_SIMULATION,
    noise: float = 0.0,
    blur: float = 0.0,
    progress_bar: bool | None = None,
) -> tuple[Ensemble, GenerationInfo]:
    """``n`` impact snapshots (see the module docstring); returns the ensemble and run info.

    Members come from ``ceil(n / times_per_simulation)`` simulations (one parameter set and
    one set of shape jitters each), every simulation seen at ``times_per_simulation``
    increasing times (:func:`sample_times`); members are in simulation order, then time, and
    the last simulation may have fewer snapshots. Metadata ``simulation`` and ``time`` let
    ``sense paths`` draw each impact's path through the map. ``times_per_simulation=1``:
    independent snapshots.
    """
    started = time.perf_counter()
    check_common_arguments(n, size, labeled_fraction)
    times = int(times_per_simulation)
    if times != times_per_simulation or times < 1:
        raise EnsembleError(
            f"times_per_simulation must be a positive integer, got {times_per_simulation!r}"
        )
    rng = np.random.default_rng(seed)
    if balance == "uniform":  # balanced members: each regime's last simulation is cut short
        member_quota = class_quota(n)
        sim_quota = -(-member_quota // times)
        sim_params = sample_parameters(int(sim_quota.sum()), rng, balance, sim_quota)
        lengths = np.full(sim_params["regime"].size, times)
        for regime, count in enumerate(member_quota):
            mine = np.flatnonzero(sim_params["regime"] == regime)
            if mine.size:
                lengths[mine[-1]] = count - (mine.size - 1) * times
    else:
        sim_params = sample_parameters(-(-n // times), rng, balance)
        lengths = np.full(sim_params["regime"].size, times)
        lengths[-1] = n - (lengths.size - 1) * times
    simulations = lengths.size
    sim_tau = sample_times(sim_params["regime"], rng, times)
    sim_jitter = rng.random((simulations, JITTER_COLUMNS))
    simulation = np.repeat(np.arange(simulations), lengths)
    snapshot = np.arange(times)[None, :] < lengths[:, None]
    params = {key: value[simulation] for key, value in sim_params.items()}
    params["tau"] = sim_tau[snapshot]
    jitter = sim_jitter[simulation]
    fields = np.empty((n, 1, size, size), dtype=np.float32)
    batch = 4096
    parts = list(chunks(n, batch))
    classes = np.empty(n, dtype=np.int64)
    for part in progress(parts, len(parts), n, "drops", progress_bar):
        sub = {key: value[part] for key, value in params.items()}
        fields[part, 0] = render_drops(sub, jitter[part], size)
        classes[part] = shown_regime(sub, jitter[part], fields[part, 0])
    labels = choose_labeled(classes, labeled_fraction, rng)
    fields = add_noise_and_blur(fields, noise, blur, rng)
    weber, ohnesorge = params["weber"], params["ohnesorge"]
    metadata = {
        "weber": weber,
        "ohnesorge": ohnesorge,
        "reynolds": np.sqrt(weber) / ohnesorge,
        "film_ratio": params["delta"],
        "splash_k": weber * ohnesorge**-0.4,
        "splash_k_threshold": splash_threshold(params["delta"]),
        "time": params["tau"],
        "regime": classes,
        "parameter_regime": params["regime"],
        "simulation": simulation.astype(np.int64),
    }
    info = GenerationInfo(
        name="drops",
        n=n,
        size=size,
        labeled_fraction=labeled_fraction,
        seed=seed,
        options={
            "balance": balance,
            "times_per_simulation": times,
            "noise": noise,
            "blur": blur,
        },
        stats={
            "class_counts": class_counts(classes, CLASS_NAMES),
            "parameter_class_counts": class_counts(params["regime"], CLASS_NAMES),
            "simulations": simulations,
        },
    )
    ensemble = Ensemble(fields=fields, labels=labels, class_names=CLASS_NAMES, metadata=metadata)
    info.seconds = time.perf_counter() - started
    return ensemble, info
