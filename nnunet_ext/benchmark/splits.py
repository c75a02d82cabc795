"""Few-label splits for the label-efficiency benchmark, in nnU-Net's ``splits_final.json`` format."""
from typing import List, Sequence, Tuple

import numpy as np

VALIDATION_SEED = 12345


def label_efficiency_folds(case_ids: Sequence[str], num_val: int, fractions: Sequence[float],
                           seeds: Sequence[int]) -> Tuple[List[dict], List[dict]]:
    """One nnU-Net fold per (labeled fraction, seed), all sharing one fixed validation set.

    The validation cases are drawn once (fixed seed) and never trained on; the remaining cases form the
    labeled pool. For each seed the pool is permuted once and a fraction ``f`` keeps the first
    ``max(1, round(f * len(pool)))`` cases, so smaller labeled sets are nested in larger ones of the same seed
    (less variance between fractions than independent draws).

    Args:
        case_ids: identifiers of all training cases (``imagesTr``).
        num_val: number of validation cases.
        fractions: labeled fractions of the pool, each in (0, 1].
        seeds: one labeled subset per seed and fraction.

    Returns:
        ``(folds, manifest)``: ``folds[k] = {"train": [...], "val": [...], "unlabeled": [...]}`` for
        ``splits_final.json`` (``unlabeled``: the rest of the pool, for semi-supervised trainers), and
        ``manifest[k] = {"fold": k, "fraction": f, "seed": s, "num_labeled": n}``.
    """
    ids = sorted(case_ids)
    if not 0 < num_val < len(ids):
        raise ValueError(f"num_val must be between 1 and {len(ids) - 1} for {len(ids)} cases, got {num_val}")
    bad = [f for f in fractions if not 0 < f <= 1]
    if bad:
        raise ValueError(f"labeled fractions must lie in (0, 1], got {bad}")
    order = np.random.default_rng(VALIDATION_SEED).permutation(len(ids))
    val = sorted(ids[i] for i in order[:num_val])
    pool = sorted(ids[i] for i in order[num_val:])
    folds, manifest = [], []
    for seed in seeds:
        permuted = [pool[i] for i in np.random.default_rng(seed).permutation(len(pool))]
        for fraction in fractions:
            n = max(1, int(round(fraction * len(pool))))
            manifest.append({"fold": len(folds), "fraction": float(fraction), "seed": int(seed), "num_labeled": n})
            # the pool's other cases are the fold's unlabeled cases (labels never read by training)
            folds.append({"train": sorted(permuted[:n]), "val": val, "unlabeled": sorted(permuted[n:])})
    return folds, manifest
