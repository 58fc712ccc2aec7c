"""The evaluation protocol of issue 16 on top of ``evaluate``'s per-image log: worst case per object
over the attack ensemble, and paired bootstrap intervals of gains.

* **Worst case per object** (AutoAttack's per-sample worst case, Croce & Hein 2020): for every
  defense, image, object and evaluation prompt type, the lowest IoU with the ground truth over
  *every* attack row evaluated on that defense: white-box for the original model; transfer
  (crafted on the original model) *and* adaptive (crafted on the defense) for an adapter; every
  attack, loss, generator and crafting prompt type. The worst average attack is not the worst case.
* **Paired gains**: the difference of two defenses' pooled mIoU on the *same* objects, with a
  percentile-bootstrap interval that resamples whole images and takes both defenses' values of the
  resampled images (paired), so the images' shared difficulty cancels.
"""

from __future__ import annotations

import numpy as np

WORST_CASE = "worst-case"


def worst_case_rows(entry: dict) -> list[dict]:
    """Rows of one image's log entry (``evaluate.evaluate_images``), one per defense and evaluation
    type: per object the attacked row with the lowest IoU vs ground truth (its IoU vs the clean
    prediction comes from that same row), over every mode and attack evaluated on that defense."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in entry["attacked"]:
        groups.setdefault((row["defense"], row["evaluated_with"]), []).append(row)
    worst = []
    for (defense, evaluated_with), rows in groups.items():
        iou_gt = np.array([r["iou_gt"] for r in rows], dtype=np.float64)  # attacks x objects
        iou_clean = np.array([r["iou_clean"] for r in rows], dtype=np.float64)
        pick = iou_gt.argmin(0)
        objects = np.arange(iou_gt.shape[1])
        worst.append({"defense": defense, "mode": WORST_CASE, "attack": WORST_CASE, "crafted_with": "all",
                      "evaluated_with": evaluated_with, "iou_gt": iou_gt[pick, objects].tolist(),
                      "iou_clean": iou_clean[pick, objects].tolist(),
                      "ensemble": sorted({f"{r['mode']}:{r['attack']}@{r['crafted_with']}" for r in rows})})
    return worst


def pooled_bootstrap(sums: np.ndarray, counts: np.ndarray, seed: int, level: float = 0.95,
                     resamples: int = 1000) -> tuple[float, float, float]:
    """``sums.sum() / counts.sum()`` (per image: a sum over its objects, and their number) and its
    percentile-bootstrap interval resampling whole images (objects of one image are correlated:
    they share the perturbation). The same ``seed`` draws the same resamples for every quantity."""
    sums, counts = np.asarray(sums, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    index = np.random.default_rng(seed).integers(0, len(sums), (resamples, len(sums)))
    boot = sums[index].sum(1) / counts[index].sum(1)
    low, high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(sums.sum() / counts.sum()), float(low), float(high)


def paired_gain_ci(treated: list[list[float]], reference: list[list[float]], seed: int, level: float = 0.95,
                   resamples: int = 1000) -> tuple[float, float, float]:
    """Pooled mean of ``treated`` minus pooled mean of ``reference`` (per image: the values of the
    same objects), and its paired percentile-bootstrap interval over images."""
    if len(treated) != len(reference) or any(len(a) != len(b) for a, b in zip(treated, reference)):
        raise ValueError("A paired gain needs the same images and objects on both sides.")
    differences = [np.sum(a) - np.sum(b) for a, b in zip(treated, reference)]
    return pooled_bootstrap(np.array(differences), np.array([len(v) for v in treated]), seed, level, resamples)


def worst_case_gains(entries: list[dict], reference: str, seed: int) -> list[dict]:
    """Per defense other than ``reference`` and evaluation type: the gain of its worst-case mIoU over
    the reference's (both on the same objects), with a paired bootstrap interval over images."""
    entries = [e for e in entries if e["instances"]]
    per_image: dict[tuple[str, str], list[list[float]]] = {}
    for entry in entries:
        for row in worst_case_rows(entry):
            per_image.setdefault((row["defense"], row["evaluated_with"]), []).append(row["iou_gt"])
    gains = []
    for (defense, evaluated_with), values in per_image.items():
        if defense == reference or (reference, evaluated_with) not in per_image:
            continue
        gain, low, high = paired_gain_ci(values, per_image[(reference, evaluated_with)], seed)
        gains.append({"defense": defense, "reference": reference, "metric": "worst-case miou_gt",
                      "evaluated_with": evaluated_with, "gain": round(gain, 6),
                      "gain_ci": [round(low, 6), round(high, 6)], "images": len(values)})
    return gains


def worst_case_sweep(entries_by_eps: dict[float, list[dict]], defenses: list[str], reference: str,
                     seed: int) -> list[dict]:
    """Robustness curves of the protocol over the attack budget: for every epsilon (1/255 units) and
    defense in ``defenses``, per evaluation type, the worst-case mIoU with its bootstrap interval over
    images, and its paired gain over ``reference`` on the same objects (rows by epsilon, then in the
    order of ``defenses``). Epsilon 0 is the clean mIoU
    (no attack). ``entries_by_eps``: evaluate's per-image log entries of one run per epsilon, all on
    the same images and objects (a ValueError otherwise)."""
    runs = {eps: [e for e in entries if e["instances"]] for eps, entries in sorted(entries_by_eps.items())}
    names = {eps: [e["name"] for e in entries] for eps, entries in runs.items()}
    first = next(iter(names.values()), [])
    if any(n != first for n in names.values()):
        raise ValueError("Every epsilon of a sweep needs the same images; got " +
                         ", ".join(f"{eps:g}: {len(n)} images" for eps, n in names.items()))
    values: dict[tuple[float, str, str], list[list[float]]] = {}
    for entry in next(iter(runs.values()), []):  # the clean point: the same in every run
        for defense in defenses:
            for evaluated_with, iou in entry["clean"][defense].items():
                values.setdefault((0.0, defense, evaluated_with), []).append(iou)
    for eps, entries in runs.items():
        for entry in entries:
            for row in worst_case_rows(entry):
                if row["defense"] in defenses:
                    values.setdefault((eps, row["defense"], row["evaluated_with"]), []).append(row["iou_gt"])
    curves = []
    for (eps, defense, evaluated_with), per_image in sorted(values.items(),
                                                            key=lambda kv: (kv[0][0], defenses.index(kv[0][1]))):
        if (eps, reference, evaluated_with) not in values:
            raise ValueError(f"The sweep's run at eps {eps:g} has no {evaluated_with} rows of {reference}.")
        if any(len(v) != len(w) for v, w in zip(per_image, values[(eps, reference, evaluated_with)])):
            raise ValueError(f"Every epsilon of a sweep needs the same objects (eps {eps:g}, {defense}).")
        miou, low, high = pooled_bootstrap(np.array([np.sum(v) for v in per_image]),
                                           np.array([len(v) for v in per_image]), seed)
        row = {"eps255": eps, "defense": defense, "evaluated_with": evaluated_with, "miou_gt": round(miou, 6),
               "miou_gt_ci": [round(low, 6), round(high, 6)], "images": len(per_image),
               "objects": int(sum(len(v) for v in per_image))}
        if defense != reference:
            gain, g_low, g_high = paired_gain_ci(per_image, values[(eps, reference, evaluated_with)], seed)
            row |= {"reference": reference, "gain": round(gain, 6), "gain_ci": [round(g_low, 6), round(g_high, 6)]}
        curves.append(row)
    return curves
