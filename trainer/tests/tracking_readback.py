"""Reads a tracked run back with MLflow's own client and TensorBoard's own event reader (the
tracking test, trainer/tests/tracking.rs): prints one JSON object.

usage: tracking_readback.py MLFLOW_URI RUN_ID TENSORBOARD_RUN_DIR
"""
import json
import sys

from mlflow.tracking import MlflowClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

uri, run_id, tb_dir = sys.argv[1:4]
client = MlflowClient(uri)
run = client.get_run(run_id)


def history(key):
    points = client.get_metric_history(run_id, key)
    return sorted([p.step, p.value] for p in points)


accumulator = EventAccumulator(tb_dir)
accumulator.Reload()
tags = accumulator.Tags()["scalars"]
experiment = client.get_experiment(run.info.experiment_id)
print(json.dumps({
    "status": run.info.status,
    "run_name": run.info.run_name,
    "experiment": experiment.name,
    "params": run.data.params,
    "metrics": run.data.metrics,
    "loss": history("loss"),
    "val_dice_mean": history("val/dice_mean"),
    "tb_tags": tags,
    "tb_loss": [[e.step, e.value] for e in accumulator.Scalars("loss")] if "loss" in tags else [],
    "tb_val_dice_mean": [[e.step, e.value] for e in accumulator.Scalars("val/dice_mean")]
    if "val/dice_mean" in tags else [],
}))
