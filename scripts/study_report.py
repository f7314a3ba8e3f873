"""Tables and a figure for scripts/study.sh: per-method test scores over seeds, paired differences
against joint training with 95 % t intervals, per-modality classifier Dice and how often the CGGM
balance guard fired. Usage: study_report.py RUNS_OUT DOCS_DIR METHOD... (joint first is best)."""

import glob
import json
import math
import os
import sys

from scipy import stats

out, docs, methods = sys.argv[1], sys.argv[2], sys.argv[3:]
MODALITIES = ["flair", "t1ce", "t1", "t2"]
REGIONS = ["wt", "tc", "et", "mean"]


def runs_of(method):
    found = {}
    for path in sorted(glob.glob(f"{out}/runs/{method.replace(':', '-')}-s*/metrics.json")):
        seed = int(path.rsplit("-s", 1)[1].split("/")[0])
        with open(path) as f:
            m = json.load(f)
        if m.get("test"):
            found[seed] = m
    return found


def ci(xs):
    """Mean and half-width of the 95 % t interval (nan half-width for one value)."""
    n = len(xs)
    mean = sum(xs) / n
    if n < 2:
        return mean, float("nan")
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n)


def fmt(mean, half, digits=3):
    if math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


runs = {m: runs_of(m) for m in methods}
lines = []
seeds = sorted(set().union(*[set(r) for r in runs.values()])) if runs else []
n_test = sorted({len(r["test"]["cases"]) for rs in runs.values() for r in rs.values()})
lines.append(f"Seeds: {', '.join(map(str, seeds))}; test cases per seed: {', '.join(map(str, n_test))}. "
             "Scores are 3-D, per case, on the brain-masked prediction; mean ± 95 % t interval over seeds.\n")

lines.append("### Test scores\n")
lines.append("| method | seeds | Dice WT | Dice TC | Dice ET | Dice mean | lesion-wise Dice mean | HD95 mean (mm) |")
lines.append("|---|---|---|---|---|---|---|---|")
for m in methods:
    rs = list(runs[m].values())
    if not rs:
        continue
    cells = [fmt(*ci([r["test"]["dice"][k] for r in rs])) for k in REGIONS]
    lesion = fmt(*ci([r["test"].get("lesion_dice", {}).get("mean", float("nan")) for r in rs]))
    hd = fmt(*ci([r["test"]["hd95"]["mean"] for r in rs]), 1)
    lines.append(f"| {m} | {len(rs)} | {' | '.join(cells)} | {lesion} | {hd} |")

def paired_table(reference):
    """Paired differences of every other method against `reference` (same seed, same split)."""
    found = {}
    if not runs.get(reference):
        return found
    lines.append(f"\n### Paired differences against {reference} (same seed, same split)\n")
    lines.append("| method | pairs | Δ Dice WT | Δ Dice TC | Δ Dice ET | Δ Dice mean | Δ lesion-wise Dice mean | mean Δ > 0 on seeds |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for m in methods:
        if m == reference:
            continue
        common = sorted(set(runs[m]) & set(runs[reference]))
        if not common:
            continue
        row = []
        for k in REGIONS:
            d = [runs[m][s]["test"]["dice"][k] - runs[reference][s]["test"]["dice"][k] for s in common]
            row.append(fmt(*ci(d)))
            if k == "mean":
                found[m] = (ci(d), d)
        ld = [runs[m][s]["test"].get("lesion_dice", {}).get("mean", float("nan"))
              - runs[reference][s]["test"].get("lesion_dice", {}).get("mean", float("nan")) for s in common]
        wins = sum(1 for x in found[m][1] if x > 0)
        lines.append(f"| {m} | {len(common)} | {' | '.join(row)} | {fmt(*ci(ld))} | {wins}/{len(common)} |")
    return found


diffs = paired_table("joint")
# The learning-rate-matched control (issue 20): CGGM's mean B lowers the encoders' effective SGD
# learning rate, so "beats joint" must also be "beats joint with that lower rate".
paired_table("joint-lr-matched")

lines.append("\n### Per-modality classifier Dice (test, mean of WT/TC/ET)\n")
lines.append("| method | " + " | ".join(MODALITIES) + " |")
lines.append("|---|" + "---|" * len(MODALITIES))
for m in methods:
    rs = list(runs[m].values())
    if not rs:
        continue
    cells = []
    for name in MODALITIES:
        xs = [r["test"]["modality_dice"][name]["mean"] for r in rs if name in r["test"].get("modality_dice", {})]
        cells.append(fmt(*ci(xs)) if xs else "–")
    lines.append(f"| {m} | " + " | ".join(cells) + " |")

lines.append("\n### Balance guard (share of steps; CGGM's B measured in every run with classifiers)\n")
lines.append("| method | steps | all B_i set to neutral | some B_i pinned at 0 or rho |")
lines.append("|---|---|---|---|")
for m in methods:
    rs = list(runs[m].values())
    st = [r.get("balance_stats") or {} for r in rs]
    steps = sum(s.get("steps", 0) for s in st)
    if steps:
        g = sum(s.get("guarded_steps", 0) for s in st) / steps
        c = sum(s.get("clamped_steps", 0) for s in st) / steps
        lines.append(f"| {m} | {steps} | {g:.1%} | {c:.1%} |")

lines.append("\n### Does B_i carry a signal? (issue 20: z = mean / SD of sum_k d_k per step; about 0 = batch noise)\n")
lines.append("| method | z (mean over seeds) | t over the run | lag-1 autocorrelation of d_i (mean over modalities) | mean B (over modalities) |")
lines.append("|---|---|---|---|---|")
for m in methods:
    ds = [r.get("balance_diagnostics") for r in runs[m].values()]
    ds = [d for d in ds if d and d.get("total_improvement_z") is not None]
    if not ds:
        continue
    z = fmt(*ci([d["total_improvement_z"] for d in ds]), digits=3)
    t = fmt(*ci([d.get("total_improvement_t") or float("nan") for d in ds]), digits=2)
    lag = [sum(v for v in d["improvement_lag1_autocorrelation"].values() if v is not None)
           / max(1, sum(v is not None for v in d["improvement_lag1_autocorrelation"].values())) for d in ds]
    b = [sum(v for v in d["balance_mean"].values() if v is not None)
         / max(1, sum(v is not None for v in d["balance_mean"].values())) for d in ds]
    lines.append(f"| {m} | {z} | {t} | {fmt(*ci(lag))} | {fmt(*ci(b))} |")

os.makedirs(docs, exist_ok=True)
table = "\n".join(lines) + "\n"
with open(os.path.join(docs, "study.md"), "w") as f:
    f.write("# Study: CGGM vs joint training vs the fixed-B control\n\n"
            "Produced by `scripts/study.sh` (see the README's Study section for the command and "
            "what the numbers say).\n\n" + (os.environ.get("STUDY_NOTE", "") + "\n\n" if os.environ.get("STUDY_NOTE") else "") + table + "\n![paired differences](study.png)\n")
print(table)


def figure(path):
    """Paired Δ mean Dice against joint per method: one dot per seed, mean and 95 % interval."""
    from PIL import Image, ImageDraw, ImageFont

    names = [m for m in methods if m in diffs]
    # Wide enough for every method's name (eight arms in study v2).
    width, height, left, right, top, bottom = max(720, 90 + 30 + 150 * len(names)), 420, 90, 30, 50, 70
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:
        font = ImageFont.load_default()
    values = [x for m in names for x in diffs[m][1]]
    values += [diffs[m][0][0] + s * (diffs[m][0][1] if not math.isnan(diffs[m][0][1]) else 0)
               for m in names for s in (-1, 1)]
    span = max([abs(v) for v in values] + [0.01]) * 1.15
    y_of = lambda v: top + (height - top - bottom) * (span - v) / (2 * span)
    draw.text((left, 12), "Test mean Dice, paired difference against joint (per seed; mean, 95 % CI)",
              fill="black", font=font)
    draw.line([(left, y_of(0)), (width - right, y_of(0))], fill=(120, 120, 120), width=1)
    for tick in (-span / 1.15, -span / 2.3, 0.0, span / 2.3, span / 1.15):
        y = y_of(tick)
        draw.line([(left - 5, y), (left, y)], fill="black")
        draw.text((8, y - 8), f"{tick:+.3f}", fill="black", font=font)
    draw.line([(left, top), (left, height - bottom)], fill="black")
    slot = (width - left - right) / max(len(names), 1)
    for i, m in enumerate(names):
        cx = left + slot * (i + 0.5)
        (mean, half), xs = diffs[m]
        for j, x in enumerate(xs):
            px = cx - 30 + 60 * (j + 0.5) / len(xs)
            draw.ellipse([px - 4, y_of(x) - 4, px + 4, y_of(x) + 4], fill=(70, 130, 200))
        if not math.isnan(half):
            draw.line([(cx + 45, y_of(mean - half)), (cx + 45, y_of(mean + half))], fill="black", width=2)
            for v in (mean - half, mean + half):
                draw.line([(cx + 39, y_of(v)), (cx + 51, y_of(v))], fill="black", width=2)
        draw.rectangle([cx + 41, y_of(mean) - 4, cx + 49, y_of(mean) + 4], fill=(200, 60, 50))
        # Names alternate between two rows so that long ones never overlap.
        draw.text((cx - 55, height - bottom + 12 + 22 * (i % 2)), m, fill="black", font=font)
    img.save(path)


if diffs:
    try:
        figure(os.path.join(docs, "study.png"))
    except ImportError:
        print("pillow is missing (it comes with brats-evaluation's scikit-image): no figure", file=sys.stderr)
