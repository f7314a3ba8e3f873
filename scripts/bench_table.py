#!/usr/bin/env python3
"""Runs `cggm bench train --against-torch` for every preset and prints the README's table.

Each preset is one command: ours (joint, cggm) and the PyTorch eager copy alternate round by
round in it, so the ratios are taken under the same machine load. Usage:

    scripts/with-torch.sh python3 scripts/bench_table.py [--binary target/release/cggm]
        [--presets cpu-small,paper,...] [--json-dir DIR]
"""

import argparse
import json
import os
import subprocess
import sys

# preset -> extra arguments (sizes that fit a 2-core, 24 GiB machine in about a minute each)
PRESETS = {
    "cpu-small": ["--steps", "3", "--rounds", "3"],
    "paper": ["--batch-size", "2", "--crop", "64", "--steps", "2", "--rounds", "3"],
    "cpu-features": ["--steps", "20", "--rounds", "5"],
    "paper-mosi": ["--steps", "3", "--rounds", "3"],
    "paper-iemocap": ["--steps", "3", "--rounds", "3"],
    "paper-food101": ["--steps", "10", "--rounds", "3"],
}


def gib(b):
    if b is None:
        return "n/a"
    return f"{b / 2**30:.2f} GiB" if b >= 2**30 else f"{b / 2**20:.0f} MiB"


def peak_alone(report):
    """Our peak memory for one method in a process of its own (the larger of joint and cggm), as
    the PyTorch side has one runner at a time; older binaries report only the timing process."""
    alone = [v.get("peak_rss_bytes") or 0 for v in report.get("alone", {}).values()]
    return max(alone) if alone else report["peak_rss_bytes"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--binary", default="target/release/cggm")
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json-dir", help="keep each preset's JSON report here")
    # passive: idle OpenMP threads sleep (on a shared machine a spinning side would steal the
    # other side's cores). spin-then-sleep: libgomp's default (spin ~ms, then sleep), what a job
    # alone on its cores gets. Not `active`: its threads spin forever, also while the other side's
    # round runs, and so slow down the other side.
    ap.add_argument("--omp-wait-policy", default=os.environ.get("OMP_WAIT_POLICY", "passive"),
                    choices=["passive", "spin-then-sleep", "active"])
    ap.add_argument("--precision", default="fp32",
                    help="ours: fp32 or bf16 (on a CPU PyTorch stays fp32, the baseline)")
    args = ap.parse_args()
    env = dict(os.environ)
    if args.omp_wait_policy == "spin-then-sleep":
        env.pop("OMP_WAIT_POLICY", None)
    else:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy
    rows, peaks = [], []
    for preset in args.presets.split(","):
        if preset not in PRESETS:
            sys.exit(f"unknown preset {preset!r}: use some of {', '.join(PRESETS)}")
        cmd = [args.binary, "bench", "train", "--against-torch", "--preset", preset,
               "--methods", "joint,cggm", "--device", args.device,
               "--precision", args.precision] + PRESETS[preset]
        print("$", " ".join(cmd), file=sys.stderr, flush=True)
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, check=True, text=True).stdout
        report = json.loads(out)
        if args.json_dir:
            os.makedirs(args.json_dir, exist_ok=True)
            with open(os.path.join(args.json_dir, f"{preset}.json"), "w") as f:
                f.write(out)
        ours, torch = report["seconds_per_step"], report["torch"]["seconds_per_step"]
        size = (f"b{report['batch_size']} crop {report['crop']}" if report.get("crop")
                else f"b{report['batch_size']}")
        u = report.get("utilisation")
        if u:
            peak = dict(u["peak"], gemm=u["gemm_flops_per_second"])
            mfu = (f"{u['flops_per_step']['joint'] / 1e9:.2f} / {u['flops_per_step']['cggm'] / 1e9:.2f} "
                   f"| {100 * u['mfu']['ours']['joint']:.1f} / {100 * u['mfu']['ours']['cggm']:.1f} % "
                   f"({100 * u['mfu']['torch']['joint']:.1f} / {100 * u['mfu']['torch']['cggm']:.1f} %)")
        else:
            peak, mfu = None, "n/a | n/a"
        if peak:
            peaks.append(peak)
        rows.append(
            f"| {preset}, {size} | {ours['joint']:.4f} / {ours['cggm']:.4f} "
            f"| {torch['joint']:.4f} / {torch['cggm']:.4f} "
            f"| {report['ratio_joint_over_torch']:.2f} / {report['ratio_cggm_over_torch']:.2f} "
            f"| {report['ratio_cggm_over_joint']:.2f} ({report['torch']['ratio_cggm_over_joint']:.2f}) "
            f"| {report['params']['model']:,} + {report['params']['classifiers']:,} "
            f"| {gib(peak_alone(report))} / {gib(report['torch']['peak_rss_bytes'])} | {mfu} |")
        print(rows[-1], file=sys.stderr, flush=True)
    print("| preset | ours joint / cggm (s/step) | PyTorch joint / cggm | ours/PyTorch joint / cggm "
          "| cggm/joint ours (PyTorch) | params model + classifiers "
          "| peak RSS ours (one method alone) / PyTorch | GFLOP/step joint / cggm "
          "| MFU ours joint / cggm (PyTorch) |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    for who in ("ours", "torch") if peaks else ():
        p = peaks[-1][who]
        print(f"\nPeak for {who}: {p['flops_per_second'] / 1e9:.1f} GFLOP/s {p['precision']} "
              f"= {p['derivation']}; a large {p['precision']} matrix product measured "
              f"{peaks[-1]['gemm'][who] / 1e9:.1f} GFLOP/s")


if __name__ == "__main__":
    main()
