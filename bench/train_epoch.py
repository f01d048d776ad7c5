"""Time training epochs of a region's model on its published tables.

The region must have run up to the features stage (``mora features CONFIG``).
The script builds the model of one variant from those tables with a random
starting table (an epoch's cost does not depend on where the table came
from, so LINE is skipped), runs one warm-up epoch, then times ``--epochs``
epochs: the training steps and the validation pass, as the trainer runs
them. It prints wall and CPU seconds per epoch, the torch thread count, the
1-minute load average and the losses, which are the same at any thread
count for one seed. Run::

    MORA_OUTPUT_ROOT=outputs python bench/train_epoch.py configs/us_counties.yaml --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

import torch

from mora_models import trainer
from mora_models.data import GraphData
from mora_models.distributed import DistributedContext
from mora_models.model import MoRA
from pipelines import training
from pipelines.config import load_config
from pipelines.context import StageContext


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", type=Path, help="region config whose features are published")
    parser.add_argument("--variant", default="mora", choices=sorted(training.VARIANTS))
    parser.add_argument("--epochs", type=int, default=3, help="epochs timed after the warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    context = StageContext(config)
    variant = training.VARIANTS[args.variant]
    edges, features = training.load_inputs(context, variant)
    data = GraphData.from_tables(edges, features)
    model_config, train_config = training.model_settings(context, variant, features)
    model = MoRA.from_data(data, replace(model_config, init="random"), train_config.seed)
    train_cells, validation_cells = trainer._split_cells(
        data, model.mobility.degree > 0, train_config
    )
    optimizer = trainer._build_optimizer(model, train_config)
    loss_module = trainer._LossModule(model)
    device = DistributedContext(0, 0, 1, torch.device("cpu"))

    def run_epoch(epoch: int) -> tuple[dict, dict]:
        metrics = trainer._train_epoch(
            loss_module, optimizer, data, train_cells, epoch, train_config, device
        )
        validation = trainer._evaluate(model, data, validation_cells, train_config, epoch, device)
        return metrics, validation

    run_epoch(0)
    rows = []
    for epoch in range(1, args.epochs + 1):
        wall, cpu = time.perf_counter(), time.process_time()
        metrics, validation = run_epoch(epoch)
        rows.append(
            {
                "epoch": epoch,
                "wall_s": round(time.perf_counter() - wall, 3),
                "cpu_s": round(time.process_time() - cpu, 3),
                "train_loss": round(float(metrics["train_loss"]), 6),
                "validation_loss": round(float(validation["val_loss"]), 6),
                "load_average_1m": round(os.getloadavg()[0], 2),
            }
        )
        print(json.dumps(rows[-1]))
    context.close()
    summary = {
        "region": config.name,
        "variant": args.variant,
        "cells": int(data.num_nodes),
        "edges": len(edges),
        "train_cells": len(train_cells),
        "validation_cells": len(validation_cells),
        "batch_size": train_config.batch_size,
        "threads": torch.get_num_threads(),
        "best_wall_s": min(row["wall_s"] for row in rows),
        "best_cpu_s": min(row["cpu_s"] for row in rows),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
