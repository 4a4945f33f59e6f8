"""MCMC convergence diagnostics: rank-normalised split-R-hat and effective sample size.

Both follow Vehtari, Gelman, Simpson, Carpenter & Bürkner (2021), "Rank-normalization, folding,
and localization: an improved R-hat for assessing convergence of MCMC", Bayesian Analysis 16:

- each chain is split in half (so a drifting chain disagrees with itself), the draws of all
  half-chains are replaced by the normal scores of their ranks (robust to heavy tails and to
  discrete summaries such as a channel count), and R-hat is the classic potential scale
  reduction of Gelman & Rubin (1992) on those scores; the reported R-hat is the larger of the
  "bulk" value and the "tail" value computed on the folded draws ``|x - median|``;
- the bulk effective sample size uses the same scores, the multi-chain autocorrelation
  estimate and Geyer's (1992) initial monotone sequence.

Chains that never leave their own mode give R-hat well above 1.1 (Vehtari et al. recommend
trusting a sample only below 1.01 for final inference; 1.1 is the traditional threshold used
here for a visual ensemble).
"""

from __future__ import annotations

import numpy as np


def _check(draws: np.ndarray) -> np.ndarray:
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim != 2:
        raise ValueError(f"draws must be shaped (samples, chains), got shape {draws.shape}")
    return draws


def split_chains(draws: np.ndarray) -> np.ndarray:
    """(samples, chains) -> (samples // 2, 2 * chains): each chain's first and second half."""
    draws = _check(draws)
    half = draws.shape[0] // 2
    return np.concatenate([draws[:half], draws[draws.shape[0] - half :]], axis=1)


def rank_normalise(draws: np.ndarray) -> np.ndarray:
    """Normal scores of the pooled ranks (ties averaged), ``Phi^-1((r - 3/8) / (S + 1/4))``."""
    from scipy.stats import norm, rankdata

    draws = _check(draws)
    ranks = rankdata(draws, method="average").reshape(draws.shape)
    return norm.ppf((ranks - 0.375) / (draws.size + 0.25))


def gelman_rubin(draws: np.ndarray) -> float:
    """Classic potential scale reduction R-hat of one scalar, ``draws`` (samples, chains)."""
    draws = _check(draws)
    samples = draws.shape[0]
    if samples < 2 or draws.shape[1] < 2:
        return float("nan")
    within = draws.var(axis=0, ddof=1).mean()
    between = samples * draws.mean(axis=0).var(ddof=1)
    if within <= 0:
        return float("inf") if between > 0 else 1.0
    pooled = (samples - 1) / samples * within + between / samples
    return float(np.sqrt(pooled / within))


def split_r_hat(draws: np.ndarray) -> float:
    """Rank-normalised split-R-hat (the larger of bulk and tail), NaN with < 4 samples or 1
    chain."""
    draws = _check(draws)
    if draws.shape[0] < 4 or draws.shape[1] < 1:
        return float("nan")
    split = split_chains(draws)
    bulk = gelman_rubin(rank_normalise(split))
    folded = np.abs(split - np.median(split))
    tail = gelman_rubin(rank_normalise(folded))
    return float(np.nanmax([bulk, tail]))


def _autocovariance(chain: np.ndarray) -> np.ndarray:
    """Biased autocovariance of one chain at every lag (FFT)."""
    count = chain.size
    centred = chain - chain.mean()
    size = 1 << (2 * count - 1).bit_length()
    spectrum = np.fft.rfft(centred, size)
    return np.fft.irfft(spectrum * np.conj(spectrum), size)[:count] / count


def effective_sample_size(draws: np.ndarray) -> float:
    """Bulk effective sample size of rank-normalised split chains (Geyer's initial monotone
    sequence on the multi-chain autocorrelation), at most ``samples * chains`` times
    ``log10(samples * chains)`` (antithetic chains); NaN with < 4 samples."""
    draws = _check(draws)
    if draws.shape[0] < 4:
        return float("nan")
    z = rank_normalise(split_chains(draws))
    samples, chains = z.shape
    total = samples * chains
    acov = np.stack([_autocovariance(z[:, c]) for c in range(chains)])  # (chains, lags)
    within = acov[:, 0].mean() * samples / (samples - 1)
    var_plus = within * (samples - 1) / samples
    if chains > 1:
        var_plus += z.mean(axis=0).var(ddof=1)
    if var_plus <= 0:
        return float("nan")
    rho = 1.0 - (within - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    # Geyer: sums of adjacent pairs, kept while positive, made monotone non-increasing.
    pairs = rho[: 2 * (samples // 2)].reshape(-1, 2).sum(axis=1)
    positive = np.flatnonzero(pairs <= 0)
    pairs = pairs[: positive[0]] if positive.size else pairs
    pairs = np.minimum.accumulate(pairs)
    tau = -1.0 + 2.0 * pairs.sum() if pairs.size else 1.0
    tau = max(tau, 1.0 / np.log10(max(total, 10)))
    return float(total / tau)


def convergence_table(summaries: dict[str, np.ndarray], groups: np.ndarray) -> dict[str, list]:
    """Per group (inverse problem) of chains: R-hat and ESS of each scalar summary, and the
    worst of them. ``summaries``: name -> (samples, chains); ``groups``: (chains,) group ids
    0..G-1. Returns ``{"r_hat": [worst per group], "ess": [smallest per group], "by_summary":
    {name: {"r_hat": [...], "ess": [...]}}}``."""
    count = int(np.max(groups)) + 1 if len(groups) else 0
    by_summary: dict[str, dict[str, list[float]]] = {}
    for name, draws in summaries.items():
        by_summary[name] = {
            "r_hat": [split_r_hat(draws[:, groups == g]) for g in range(count)],
            "ess": [effective_sample_size(draws[:, groups == g]) for g in range(count)],
        }
    with np.errstate(invalid="ignore"):
        r_hat = np.array([v["r_hat"] for v in by_summary.values()]).reshape(-1, count)
        ess = np.array([v["ess"] for v in by_summary.values()]).reshape(-1, count)
        worst = [
            float(np.nanmax(col)) if np.isfinite(col).any() else float("nan") for col in r_hat.T
        ]
        smallest = [
            float(np.nanmin(col)) if np.isfinite(col).any() else float("nan") for col in ess.T
        ]
    return {"r_hat": worst, "ess": smallest, "by_summary": by_summary}


def convergence_from_metadata(metadata) -> dict | None:
    """Per-problem R-hat and ESS read back from an ensemble's member metadata (columns
    ``problem``, ``problem_r_hat``, ``problem_ess`` that ``sense generate channels`` writes),
    or None when the ensemble has none: ``{"problems": [...], "r_hat": [...], "ess": [...]}``."""
    needed = ("problem", "problem_r_hat", "problem_ess")
    if not all(name in metadata for name in needed):
        return None
    problem = np.asarray(metadata["problem"])
    r_hat = np.asarray(metadata["problem_r_hat"], dtype=np.float64)
    ess = np.asarray(metadata["problem_ess"], dtype=np.float64)
    problems, first = np.unique(problem, return_index=True)
    return {
        "problems": problems.tolist(),
        "r_hat": r_hat[first].tolist(),
        "ess": ess[first].tolist(),
    }
