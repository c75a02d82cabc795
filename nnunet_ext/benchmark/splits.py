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


def extend_folds(folds: List[dict], manifest: List[dict], case_ids: Sequence[str], num_val: int,
                 fractions: Sequence[float], seeds: Sequence[int]) -> Tuple[List[dict], List[dict], List[dict]]:
    """Add the (fraction, seed) folds a benchmark asks for to the folds it already has, keeping their numbers.

    Fold numbers name nnU-Net's result folders, so a benchmark continued with more fractions or seeds must
    keep every existing fold's number and content; new combinations are appended.

    Args:
        folds, manifest: the existing ``splits_final.json`` folds and their manifest (empty lists for none).
        case_ids, num_val, fractions, seeds: as in :func:`label_efficiency_folds`.

    Returns:
        ``(folds, manifest, requested)``: all folds, the manifest of all of them, and the manifest entries of
        the requested combinations (in seed-major order).

    Raises:
        ValueError: an existing fold differs from what its (fraction, seed) makes with these cases and
            ``num_val`` (other data or validation size), or the manifest does not describe ``folds``.
    """
    if len(manifest) != len(folds) or [m["fold"] for m in manifest] != list(range(len(folds))):
        raise ValueError(f"the manifest lists folds {[m.get('fold') for m in manifest]} but the splits have "
                         f"{len(folds)} folds")
    folds, manifest = list(folds), [dict(m) for m in manifest]
    for entry in manifest:  # every existing fold must still be what its (fraction, seed) makes
        (expected,), _ = label_efficiency_folds(case_ids, num_val, [entry["fraction"]], [entry["seed"]])
        if folds[entry["fold"]] != expected:
            raise ValueError(f"fold {entry['fold']} ({entry['fraction']:.0%} labels, seed {entry['seed']}) differs "
                             f"from what these cases and {num_val} validation cases make")
    known = {(m["fraction"], m["seed"]): m for m in manifest}
    requested = []
    new_folds, new_manifest = label_efficiency_folds(case_ids, num_val, fractions, seeds)
    for fold, entry in zip(new_folds, new_manifest):
        key = (entry["fraction"], entry["seed"])
        if key not in known:
            known[key] = dict(entry, fold=len(folds))
            folds.append(fold)
            manifest.append(known[key])
        requested.append(known[key])
    return folds, manifest, requested
