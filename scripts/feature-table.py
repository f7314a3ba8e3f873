#!/usr/bin/env python3
"""Joint vs CGGM vs unimodal on the synthetic imbalanced feature data, over several seeds.

For each seed: `cggm synth --task TASK --seed S`, then `cggm train --preset cpu-features` with
joint, cggm and unimodal:<m> for every modality. Prints a Markdown table of the test metric
(mean +- std over seeds), per-modality classifier accuracy (the paper's Table 5 view), CGGM's mean
B_i, and the step-time ratio CGGM / joint (median `step_seconds` of the same runs' events).

  scripts/with-torch.sh python3 scripts/feature-table.py --cggm target/debug/cggm --seeds 5
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def run(cmd):
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{result.stderr[-3000:]}")


def mean_std(values):
    if not values:
        return "-"
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.3f} ± {s:.3f}"


def report(args, results, step_times, seeds, modalities, methods, metric):
    """Prints the table over the seeds done so far."""
    def test(m, key=metric):
        return [r["test"]["metrics"][key] for r in results[m]]

    def modality(m, mod, key=metric):
        return [r["test"]["modality_metrics"][mod][key] for r in results[m] if mod in r["test"]["modality_metrics"]]

    print(f"\nSynthetic {args.task}, {seeds} seeds, preset cpu-features; test {metric} (mean ± std)\n")
    print("| method | fused | " + " | ".join(f"{m} classifier" for m in modalities) + " |")
    print("|---|---|" + "---|" * len(modalities))
    for method in methods:
        cells = [mean_std(modality(method, m)) for m in modalities]
        print(f"| {method} | {mean_std(test(method))} | " + " | ".join(cells) + " |")
    best = max((f"unimodal:{m}" for m in modalities), key=lambda u: statistics.mean(test(u)))
    print(f"\nbest unimodal: {best} ({mean_std(test(best))})")
    balance = {m: statistics.mean(r["mean_balance"][m] for r in results["cggm"]) for m in modalities}
    print("CGGM mean B_i over training: " + ", ".join(f"{m} {b:.3f}" for m, b in balance.items()))
    j, c = statistics.median(step_times["joint"]), statistics.median(step_times["cggm"])
    print(f"median step time: joint {j * 1000:.1f} ms, cggm {c * 1000:.1f} ms, ratio cggm/joint {c / j:.2f}")
    sys.stdout.flush()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cggm", default="target/debug/cggm", help="the cggm binary (or target/debug/examples/trainer_cli)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--task", default="classification", choices=("classification", "regression"))
    ap.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    ap.add_argument("--work", type=Path, default=None, help="keep runs here (default: a temp dir)")
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="cggm-table-"))
    modalities = ["text", "audio", "vision"]
    methods = ["joint", "cggm"] + [f"unimodal:{m}" for m in modalities]
    metric = "accuracy" if args.task == "classification" else "acc2"
    results = {m: [] for m in methods}
    step_times = {"joint": [], "cggm": []}
    for seed in range(args.seeds):
        data = work / f"data-{seed}"
        run([args.cggm, "synth", "--task", args.task, "--seed", seed, "--out", data])
        for method in methods:
            out = work / f"{method.replace(':', '-')}-{seed}"
            cmd = [args.cggm, "train", "--data", data, "--preset", "cpu-features", "--method", method,
                   "--seed", seed, "--device", "cpu", "--out", out, "--events", out.with_suffix(".jsonl")]
            if args.epochs:
                cmd += ["--epochs", args.epochs]
            run(cmd)
            results[method].append(json.loads((out / "metrics.json").read_text()))
            if method in step_times:
                for line in out.with_suffix(".jsonl").read_text().splitlines():
                    event = json.loads(line)
                    if event["event"] == "step":
                        step_times[method].append(event["step_seconds"])
        print(f"seed {seed} done", file=sys.stderr)
        report(args, results, step_times, seed + 1, modalities, methods, metric)

if __name__ == "__main__":
    main()
