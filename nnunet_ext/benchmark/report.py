"""Benchmark tables (CSV, Markdown: mean ± std over seeds) and the Dice-vs-labeled-fraction plot."""
import csv
import math
from collections import defaultdict
from typing import Dict, List, Sequence

import numpy as np

CASE_FIELDS = ("trainer", "fraction", "seed", "num_labeled", "case", "label", "dice", "hd95")


def _nanmean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _mean_std(values):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    # one seed has no spread: NaN, shown as the mean alone rather than a misleading "± 0.0"
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def run_means(rows: Sequence[dict]) -> Dict[tuple, dict]:
    """Per run (trainer, fraction, seed): mean Dice/HD95 over cases and labels, and per-label mean Dice."""
    grouped = defaultdict(list)
    for row in rows:
        grouped[(row["trainer"], float(row["fraction"]), int(row["seed"]))].append(row)
    result = {}
    for key, run_rows in grouped.items():
        per_label, hd95_per_label = defaultdict(list), defaultdict(list)
        for row in run_rows:
            per_label[int(row["label"])].append(float(row["dice"]))
            hd95_per_label[int(row["label"])].append(float(row["hd95"]))
        result[key] = {
            "num_labeled": int(run_rows[0]["num_labeled"]),
            "dice": _nanmean(float(r["dice"]) for r in run_rows),
            "hd95": _nanmean(float(r["hd95"]) for r in run_rows),
            "dice_per_label": {label: _nanmean(v) for label, v in sorted(per_label.items())},
            "hd95_per_label": {label: _nanmean(v) for label, v in sorted(hd95_per_label.items())},
        }
    return result


def summarise(rows: Sequence[dict]) -> List[dict]:
    """Mean ± std over seeds for every (trainer, fraction), with per-label Dice."""
    runs = run_means(rows)
    grouped, seed_lists = defaultdict(list), defaultdict(list)
    for (trainer, fraction, seed), values in sorted(runs.items()):
        grouped[(trainer, fraction)].append(values)
        seed_lists[(trainer, fraction)].append(seed)
    summary = []
    for (trainer, fraction), seeds in grouped.items():
        seed_ids = seed_lists[(trainer, fraction)]
        dice_mean, dice_std = _mean_std([s["dice"] for s in seeds])
        hd_mean, hd_std = _mean_std([s["hd95"] for s in seeds])
        labels = sorted(seeds[0]["dice_per_label"])
        summary.append({
            "trainer": trainer, "fraction": fraction, "num_labeled": seeds[0]["num_labeled"],
            "num_seeds": len(seeds), "seed_dice": {seed: values["dice"] for seed, values in zip(seed_ids, seeds)},
            "dice_mean": dice_mean, "dice_std": dice_std,
            "hd95_mean": hd_mean, "hd95_std": hd_std,
            "dice_per_label": {label: _mean_std([s["dice_per_label"][label] for s in seeds]) for label in labels},
        })
    return summary


def write_case_csv(rows: Sequence[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CASE_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row[k] for k in CASE_FIELDS})


def write_summary_csv(summary: Sequence[dict], label_names: Dict[int, str], path: str) -> None:
    labels = sorted(label_names)
    fields = ["trainer", "fraction", "num_labeled", "num_seeds", "dice_mean", "dice_std", "hd95_mean", "hd95_std"]
    fields += [f"dice_{label_names[label]}" for label in labels]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(fields)
        for s in summary:
            writer.writerow([s[k] for k in fields[:8]] + [s["dice_per_label"][label][0] for label in labels])


def _pm(mean, std, scale=1.0, digits=1):
    if math.isnan(mean):
        return "n/a"
    if math.isnan(std):
        return f"{mean * scale:.{digits}f}"
    return f"{mean * scale:.{digits}f} ± {std * scale:.{digits}f}"


def paired_gain(method: dict, baseline: dict) -> tuple:
    """(mean over the seeds both have run of the method's Dice minus the baseline's, those seeds); (nan, []) if
    they share none. Equal to the difference of the means when both have run the same seeds."""
    common = sorted(set(method["seed_dice"]) & set(baseline["seed_dice"]))
    if not common:
        return math.nan, []
    return float(np.mean([method["seed_dice"][s] - baseline["seed_dice"][s] for s in common])), common


def per_case_dice(rows: Sequence[dict], trainer: str, fraction: float, seed: int) -> Dict[str, float]:
    """One run's Dice per test case: the mean over the organs of that case (an organ absent from both the
    prediction and the reference has NaN Dice and does not count)."""
    per_case = defaultdict(list)
    for row in rows:
        if row["trainer"] == trainer and float(row["fraction"]) == fraction and int(row["seed"]) == seed:
            per_case[row["case"]].append(float(row["dice"]))
    return {case: _nanmean(values) for case, values in per_case.items()}


def paired_case_comparison(rows: Sequence[dict], trainer: str, baseline: str, fraction: float,
                           seeds: Sequence[int], confidence: float = 0.95, n_resamples: int = 10000,
                           random_seed: int = 0) -> dict:
    """How far the test set alone supports a gain: per test case, the method's Dice minus the baseline's
    (each averaged over ``seeds``, which both trainers have run), a bootstrap confidence interval of the mean
    difference over the cases (BCa, cases resampled) and the Wilcoxon signed-rank p-value.

    The interval covers the sampling of test cases, not the spread over training seeds (the std over seeds
    does): with one seed it says whether that run's difference is more than test-case noise.

    Returns:
        ``{"num_cases", "mean", "low", "high", "p_value", "wins"}``; ``wins`` counts the cases the method
        improves. NaN where undefined (fewer than 2 cases, all differences equal, no common case).
    """
    from scipy import stats

    differences = defaultdict(list)
    for seed in seeds:
        method_cases = per_case_dice(rows, trainer, fraction, seed)
        baseline_cases = per_case_dice(rows, baseline, fraction, seed)
        for case in sorted(set(method_cases) & set(baseline_cases)):
            d = method_cases[case] - baseline_cases[case]
            if not math.isnan(d):
                differences[case].append(d)
    # only the cases that every seed has, so each case weighs the same
    values = np.array([np.mean(v) for v in differences.values() if len(v) == len(seeds)], dtype=float)
    values = np.round(values, 12)  # a tie averaged over seeds stays a tie, not a rounding error of either sign
    result = {"num_cases": int(values.size), "mean": float(values.mean()) if values.size else math.nan,
              "low": math.nan, "high": math.nan, "p_value": math.nan, "wins": int((values > 0).sum())}
    if values.size < 2 or np.ptp(values) == 0:
        return result
    interval = stats.bootstrap((values,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                               method="BCa", rng=np.random.default_rng(random_seed)).confidence_interval
    result["low"], result["high"] = float(interval.low), float(interval.high)
    if np.any(values != 0):
        result["p_value"] = float(stats.wilcoxon(values).pvalue)
    return result


def _seeds(seeds: Sequence[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(str(s) for s in seeds)


def markdown(summary: Sequence[dict], trainers: Sequence[str], label_names: Dict[int, str], baseline: str,
             rows: Sequence[dict] = ()) -> str:
    """Tables: Dice (×100) and HD95 (mm) per trainer and labeled fraction, gain over the baseline, per organ;
    with the per-case ``rows``, also the paired test-case comparison of every gain (:func:`paired_case_comparison`).

    A benchmark run piece by piece can have more seeds of one trainer than of another: cells then name their
    number of seeds, and gains compare the seeds both trainers have run (paired)."""
    by_key = {(s["trainer"], s["fraction"]): s for s in summary}
    uneven = len({s["num_seeds"] for s in summary}) > 1
    fractions = sorted({s["fraction"] for s in summary})
    header = "| trainer | " + " | ".join(
        f"{f:.0%} ({by_key[next(k for k in by_key if k[1] == f)]['num_labeled']} labeled)" for f in fractions) + " |"
    rule = "|---|" + "---|" * len(fractions)
    lines = ["Mean Dice over organs and test cases (×100), mean ± std over seeds (no ± with one seed):", "",
             header, rule]
    for t in trainers:
        cells = [_pm(by_key[(t, f)]["dice_mean"], by_key[(t, f)]["dice_std"], 100)
                 + (f" ({_seeds(sorted(by_key[(t, f)]['seed_dice']))})" if uneven else "") if (t, f) in by_key
                 else "—" for f in fractions]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    lines += ["", f"Gain over {baseline} in Dice points (mean over seeds of the paired difference; the seeds are "
              f"named where either trainer has run others too):", "", header, rule]
    for t in trainers:
        if t == baseline:
            continue
        cells = []
        for f in fractions:
            gain, common = (paired_gain(by_key[(t, f)], by_key[(baseline, f)])
                            if (t, f) in by_key and (baseline, f) in by_key else (math.nan, []))
            if not common:
                cells.append("—")
                continue
            seen = max(by_key[(t, f)]["num_seeds"], by_key[(baseline, f)]["num_seeds"])
            cells.append(f"{100 * gain:+.1f}" + (f" ({_seeds(common)})" if len(common) < seen else ""))
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    if rows:
        lines += _case_comparison_lines(summary, trainers, baseline, rows, by_key, fractions)
    lines += ["", "HD95 (mm) over organs and test cases, mean ± std over seeds (cases where an organ is missed "
              "in the prediction have no HD95 and are left out; their Dice of 0 counts above):", "", header, rule]
    for t in trainers:
        cells = [_pm(by_key[(t, f)]["hd95_mean"], by_key[(t, f)]["hd95_std"]) if (t, f) in by_key else "—"
                 for f in fractions]
        lines.append(f"| {t} | " + " | ".join(cells) + " |")
    labels = sorted(label_names)
    for f in fractions:
        lines += ["", f"Dice per organ (×100) at {f:.0%} labels:", "",
                  "| trainer | " + " | ".join(label_names[label] for label in labels) + " |",
                  "|---|" + "---|" * len(labels)]
        for t in trainers:
            if (t, f) in by_key:
                per = by_key[(t, f)]["dice_per_label"]
                lines.append(f"| {t} | " + " | ".join(_pm(*per[label], 100) for label in labels) + " |")
    if rows:
        lines += organ_gain_lines(rows, trainers, baseline, label_names)
    return "\n".join(lines) + "\n"


def organ_gain_lines(rows: Sequence[dict], trainers: Sequence[str], baseline: str,
                     label_names: Dict[int, str]) -> List[str]:
    """Per labeled fraction, each trainer's gain over the baseline organ by organ, in Dice and in HD95: the mean
    over the seeds both have run of the paired difference in the organ's mean over the test cases (Dice ×100;
    HD95 in mm over the cases where the organ is found), and on how many of those seeds the method is better
    (higher Dice, lower HD95). Where a method gains or loses, which the spread over seeds of the per-organ table
    hides; [] when no trainer shares a seed with the baseline."""
    runs = run_means(rows)
    labels = sorted(label_names)
    lines = []
    for f in sorted({fraction for _, fraction, _ in runs}):
        base = {seed: v for (t, ff, seed), v in runs.items() if t == baseline and ff == f}
        for key, what, scale, sign in (("dice_per_label", "Dice points", 100, 1),
                                       ("hd95_per_label", "HD95 in mm, lower is better", 1, -1)):
            table = []
            for t in trainers:
                own = {seed: v for (tt, ff, seed), v in runs.items() if tt == t and ff == f}
                common = sorted(set(own) & set(base))
                if t == baseline or not common:
                    continue
                cells = []
                for label in labels:
                    diffs = [own[s][key].get(label, math.nan) - base[s][key].get(label, math.nan) for s in common]
                    diffs = [d for d in diffs if not math.isnan(d)]
                    cells.append(f"{scale * np.mean(diffs):+.1f} ({sum(sign * d > 0 for d in diffs)}/{len(diffs)})"
                                 if diffs else "n/a")
                table.append(f"| {t} | {', '.join(str(s) for s in common)} | " + " | ".join(cells) + " |")
            if table:
                lines += ["", f"Gain per organ over {baseline} at {f:.0%} labels ({what}; mean over the seeds both "
                          "have run of the paired difference; in brackets on how many of those seeds the method is "
                          "better):", "", "| trainer | seeds | " + " | ".join(label_names[label] for label in labels)
                          + " |", "|---|---|" + "---|" * len(labels)] + table
    return lines


def validation_lines(results: Sequence[dict], trainers: Sequence[str], baseline: str) -> List[str]:
    """Table of nnU-Net's own final validation (mean Dice over organs on the fold's validation cases, ×100) per
    trainer and labeled fraction: mean ± std over seeds, and the paired gain over the baseline on the seeds both
    have. ``results`` are the runs' metrics with ``validation_dice`` where known; [] when no run has one.

    These cases, not the test cases, are where a user of nnU-Net compares and chooses trainers."""
    known = {(r["trainer"], float(r["fraction"]), int(r["seed"])): float(r["validation_dice"])
             for r in results if r.get("validation_dice") is not None}
    if not known:
        return []
    fractions = sorted({f for _, f, _ in known})
    lines = ["", "nnU-Net's final validation (mean Dice over organs on the validation cases, ×100; mean ± std over "
             f"seeds; in brackets the paired gain over {baseline} on the seeds both have):", "",
             "| trainer | " + " | ".join(f"{f:.0%}" for f in fractions) + " |", "|---|" + "---|" * len(fractions)]
    for t in trainers:
        cells = []
        for f in fractions:
            seeds = {s: d for (tt, ff, s), d in known.items() if tt == t and ff == f}
            if not seeds:
                cells.append("—")
                continue
            cell = _pm(*_mean_std(list(seeds.values())), 100)
            base = {s: d for (tt, ff, s), d in known.items() if tt == baseline and ff == f}
            gain, common = paired_gain({"seed_dice": seeds}, {"seed_dice": base})
            if t != baseline and common:
                cell += f" ({100 * gain:+.1f})"
            cells.append(cell)
        if any(c != "—" for c in cells):
            lines.append(f"| {t} | " + " | ".join(cells) + " |")
    return lines


def _case_comparison_lines(summary, trainers, baseline, rows, by_key, fractions) -> List[str]:
    lines = ["", f"Is the gain more than test-case noise? Per test case, Dice minus {baseline}'s (×100, mean over "
             "the seeds both have run), 95 % bootstrap interval of the mean over cases (BCa, 10,000 resamples), "
             "Wilcoxon signed-rank p, cases improved. The interval ignores the spread over seeds:", "",
             "| trainer | labeled | seeds | gain | 95 % interval | p | cases improved |", "|---|---|---|---|---|---|---|"]
    for t in trainers:
        for f in fractions:
            if t == baseline or (t, f) not in by_key or (baseline, f) not in by_key:
                continue
            _, common = paired_gain(by_key[(t, f)], by_key[(baseline, f)])
            if not common:
                continue
            c = paired_case_comparison(rows, t, baseline, f, common)
            interval = "n/a" if math.isnan(c["low"]) else f"{100 * c['low']:+.1f} to {100 * c['high']:+.1f}"
            p_value = "n/a" if math.isnan(c["p_value"]) else f"{c['p_value']:.3f}"
            lines.append(f"| {t} | {f:.0%} | {', '.join(str(s) for s in common)} | {100 * c['mean']:+.1f} | "
                         f"{interval} | {p_value} | {c['wins']} of {c['num_cases']} |")
    return lines


def plot(summary: Sequence[dict], trainers: Sequence[str], path: str, title: str = "") -> None:
    """Dice against labeled fraction, one line per trainer, error bars = std over seeds."""
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in trainers:
        points = sorted((s["fraction"], s["dice_mean"], s["dice_std"]) for s in summary if s["trainer"] == t)
        if points:
            x, y, e = zip(*points)
            errors = [0.0 if math.isnan(v) else 100 * v for v in e]
            ax.errorbar([100 * v for v in x], [100 * v for v in y], yerr=errors, marker="o", capsize=3, label=t)
    ax.set_xlabel("labeled training cases (%)")
    ax.set_ylabel("mean Dice over organs (×100)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
