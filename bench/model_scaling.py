"""Epoch time, LINE time, peak memory and LightGCN memory traffic vs graph size.

Each size runs in its own process so its peak resident memory is its own.
Every phase is timed twice: wall-clock seconds, and CPU seconds of this
process. On a machine shared with other jobs the wall time grows with their
load, while the CPU time of a single-threaded run (``--threads 1``) stays
close to the wall time the phase would take on an idle core.

    python bench/model_scaling.py --threads 1                       # default sizes
    python bench/model_scaling.py --threads 1 --sizes 3000:130000   # nodes:trip draws
    python bench/model_scaling.py --threads 1 --sizes 1000000:130000000 \\
        --propagation subgraph --fanout 10 --epochs 0 --steps 5 --line-epochs 0

Prints one JSON line per size, then a Markdown table. Record the machine
and the command with the numbers.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import os
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from model_synthetic import power_law_graph

from mora_models.data import GraphData
from mora_models.graph import (
    NormalizedAdjacency,
    estimate_spmm_bytes,
    normalized_adjacency,
    propagate,
    top_k_sparsify,
)
from mora_models.line import train_line
from mora_models.model import ModelConfig, MoRA
from mora_models.trainer import TrainConfig, fit

logger = logging.getLogger("bench.model_scaling")

DEFAULT_SIZES = "3000:130000,10000:1300000,100000:13000000"
COPY_BYTES = 1 << 30
REPEATS = 3
# fit() holds out this share of the cells for validation by default.
VAL_SHARE = 0.1

Record = dict[str, Any]


def measure_copy_bandwidth(num_bytes: int = COPY_BYTES, repeats: int = REPEATS) -> float:
    """Return the best numpy copy rate in GB/s, counting the read and the write."""
    source = np.ones(num_bytes // 4, dtype=np.float32)
    target = np.empty_like(source)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - started)
    return 2 * num_bytes / best / 1e9


def timed(record: Record, name: str, work: Callable[[], Any]) -> Any:
    """Run ``work``, store its wall and CPU seconds as ``<name>_s`` and ``<name>_cpu_s``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = work()
    record[f"{name}_s"] = time.perf_counter() - wall
    record[f"{name}_cpu_s"] = time.process_time() - cpu
    return result


def run_one(args: argparse.Namespace) -> Record:
    """Benchmark one size in this process and return its measurements."""
    record: Record = {"nodes": args.nodes, "draws": args.draws}
    data = timed(record, "generate", lambda: power_law_graph(args.nodes, args.draws, args.seed))
    record["edges"] = data.num_edges
    logger.info("generated %d edges in %.1f s", data.num_edges, record["generate_s"])

    index, weight = timed(
        record,
        "sparsify",
        lambda: top_k_sparsify(data.edge_index, data.edge_weight, data.num_nodes),
    )
    adjacency = timed(
        record, "adjacency", lambda: normalized_adjacency(index, weight, data.num_nodes)
    )
    record["kept_edges"] = index.shape[1]
    record["nnz"] = adjacency.nnz
    logger.info("sparsified to %d edges, %d entries in Â", index.shape[1], adjacency.nnz)

    time_layer(record, adjacency, data.num_nodes)
    if args.line_epochs > 0:
        line = timed(
            record,
            "line",
            lambda: train_line(
                index,
                weight,
                data.num_nodes,
                128,
                epochs=args.line_epochs,
                batch_size=args.line_batch_size,
            ),
        )
        record["line_epoch_s"] = min(line.epoch_seconds)
        record["line_epoch_cpu_s"] = record["line_cpu_s"] / args.line_epochs
        logger.info("LINE epoch %.1f s", record["line_epoch_s"])
    # Free the kept edges before training; the operator is all training needs.
    index = weight = None

    model_config = ModelConfig(
        init="random", towers={"poi": "mlp"}, propagation=args.propagation, fanout=args.fanout
    )
    if args.epochs > 0:
        time_fit(record, data, model_config, args)
    else:
        time_steps(record, data, adjacency, model_config, args)
    record["propagation"] = args.propagation
    record["fanout"] = args.fanout or 0
    record["peak_rss_GB"] = peak_resident_bytes() / 1e9
    record["threads"] = torch.get_num_threads()
    record["load_average"] = os.getloadavg()[0]
    return record


def time_layer(record: Record, adjacency: NormalizedAdjacency, num_nodes: int) -> None:
    """Time one exact LightGCN layer ``Â X`` at d = 128 (best of REPEATS)."""
    table = torch.randn(num_nodes, 128)
    operator = adjacency.to_sparse_csr()
    best: Record = {"layer_s": math.inf}
    with torch.no_grad():
        for _ in range(REPEATS):
            attempt: Record = {}
            timed(attempt, "layer", lambda: propagate(operator, table, num_layers=1))
            if attempt["layer_s"] < best["layer_s"]:
                best = attempt
    record.update(best)
    record["layer_bytes"] = estimate_spmm_bytes(num_nodes, adjacency.nnz, 128)
    record["layer_GBps"] = record["layer_bytes"] / record["layer_s"] / 1e9
    record["layer_cpu_GBps"] = record["layer_bytes"] / record["layer_cpu_s"] / 1e9


def time_fit(
    record: Record, data: GraphData, model_config: ModelConfig, args: argparse.Namespace
) -> None:
    """Run :func:`fit` and keep its fastest epoch, in wall and CPU seconds."""
    train_config = TrainConfig(
        batch_size=args.batch_size, max_epochs=args.epochs, device="cpu", inductive=False
    )
    cpu_marks: list[float] = []
    result = timed(
        record,
        "fit",
        lambda: fit(
            data,
            model_config,
            train_config,
            on_epoch=lambda _: cpu_marks.append(time.process_time()),
        ),
    )
    # on_epoch runs at the end of each epoch. The first interval would also
    # cover model building, so CPU seconds come from the later epochs only.
    record["epoch_cpu_s"] = min(
        (later - earlier for earlier, later in itertools.pairwise(cpu_marks)),
        default=math.nan,
    )
    record["epoch_s"] = min(entry["seconds"] for entry in result.history)
    record["epoch_measured"] = "yes"


def time_steps(
    record: Record,
    data: GraphData,
    adjacency: NormalizedAdjacency,
    model_config: ModelConfig,
    args: argparse.Namespace,
) -> None:
    """Time ``args.steps`` training steps and estimate an epoch from their mean.

    A step is what :func:`fit` runs per batch: the star InfoNCE loss of
    ``batch_size`` cells, its backward pass and an AdamW step over all
    parameters. The epoch estimate is the steps of one epoch (90% of the
    cells) times the mean step, plus one exact propagation for validation.
    The model reuses the benchmark's operator instead of sparsifying again,
    and starts from a random table.
    """
    shapes = {name: modality.feature_shape for name, modality in data.modalities.items()}
    model = MoRA(model_config, data.num_nodes, adjacency, shapes)
    poi = data.modalities["poi"]
    model.tower("poi").standardize.fit(poi.features[poi.mask])
    model.mobility.reset_parameters(torch.Generator().manual_seed(args.seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3)
    generator = torch.Generator().manual_seed(args.seed)
    order = torch.randperm(data.num_nodes, generator=generator)

    def step(number: int) -> None:
        nodes = order[number * args.batch_size : (number + 1) * args.batch_size]
        mask = poi.mask[nodes]
        optimizer.zero_grad(set_to_none=True)
        model.loss(nodes, {"poi": (poi.features[nodes[mask]], mask)}, generator).total.backward()
        optimizer.step()

    step(0)  # the first step pays for first-touch allocation
    timed(record, "steps", lambda: [step(number) for number in range(1, args.steps + 1)])
    timed(record, "embed", model.embed)
    steps_per_epoch = math.ceil((1 - VAL_SHARE) * data.num_nodes / args.batch_size)
    for clock in ("", "_cpu"):
        record[f"step{clock}_s"] = record[f"steps{clock}_s"] / args.steps
        record[f"epoch{clock}_s"] = (
            steps_per_epoch * record[f"step{clock}_s"] + record[f"embed{clock}_s"]
        )
    record["epoch_measured"] = f"estimate from {args.steps} steps"
    logger.info("step %.2f s (%.2f s CPU)", record["step_s"], record["step_cpu_s"])


def peak_resident_bytes() -> int:
    """Return this process's peak resident memory (VmHWM).

    ``getrusage``'s ``ru_maxrss`` survives ``execve`` on Linux, so a child
    would report its parent's peak; VmHWM belongs to the new address space.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def print_table(rows: list[Record], bandwidth: float) -> None:
    """Print the measurements as a Markdown table: wall seconds, CPU seconds in brackets."""

    def both(row: Record, name: str, digits: int = 2) -> str:
        wall, cpu = row.get(f"{name}_s", math.nan), row.get(f"{name}_cpu_s", math.nan)
        return f"{wall:.{digits}f} ({cpu:.{digits}f})"

    print(
        "| nodes | edges | kept | nnz(Â) | propagation | sparsify s | LINE epoch s "
        "| epoch s | layer s | layer GB | layer GB/s | peak RSS GB | load |"
    )
    print("|" + "---|" * 13)
    for row in rows:
        propagation = row["propagation"] + (f", fanout {row['fanout']}" if row["fanout"] else "")
        estimate = "" if row["epoch_measured"] == "yes" else " est."
        print(
            f"| {row['nodes']:,} | {row['edges']:,} | {row['kept_edges']:,} | {row['nnz']:,} "
            f"| {propagation} | {both(row, 'sparsify')} | {both(row, 'line_epoch', 1)} "
            f"| {both(row, 'epoch')}{estimate} | {both(row, 'layer', 3)} "
            f"| {row['layer_bytes'] / 1e9:.2f} "
            f"| {row['layer_GBps']:.1f} ({row['layer_cpu_GBps']:.1f}) "
            f"| {row['peak_rss_GB']:.2f} | {row['load_average']:.1f} |"
        )
    print(f"\nnumpy copy bandwidth: {bandwidth:.1f} GB/s (read + write, best of {REPEATS})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated nodes:draws")
    parser.add_argument("--propagation", default="full", choices=["full", "subgraph"])
    parser.add_argument("--fanout", type=int, default=None, help="subgraph neighbours per node")
    parser.add_argument("--batch-size", type=int, default=4096, help="cells per training step")
    parser.add_argument(
        "--epochs",
        type=int,
        default=2,
        help="training epochs per size; 0 times --steps steps and estimates an epoch",
    )
    parser.add_argument("--steps", type=int, default=10, help="steps timed when --epochs is 0")
    parser.add_argument("--line-batch-size", type=int, default=4096, help="edges per LINE step")
    parser.add_argument(
        "--line-epochs", type=int, default=2, help="LINE epochs per size; 0 skips LINE"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads per size; fewer threads than free cores avoids "
        "OpenMP spin-waiting on a shared machine",
    )
    parser.add_argument("--nodes", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--draws", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.nodes is not None:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args)), flush=True)
        return

    logging.basicConfig(level=logging.WARNING)
    rows = []
    for size in args.sizes.split(","):
        nodes, draws = (int(part) for part in size.split(":"))
        command = [
            sys.executable, __file__, "--nodes", str(nodes), "--draws", str(draws),
            "--propagation", args.propagation, "--batch-size", str(args.batch_size),
            "--epochs", str(args.epochs), "--steps", str(args.steps),
            "--line-batch-size", str(args.line_batch_size),
            "--line-epochs", str(args.line_epochs), "--seed", str(args.seed),
        ]  # fmt: skip
        if args.fanout:
            command += ["--fanout", str(args.fanout)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        completed = subprocess.run(command, capture_output=True, text=True)
        if completed.returncode != 0:
            print(f"size {size} failed:\n{completed.stderr[-3000:]}", file=sys.stderr)
            continue
        record = json.loads(completed.stdout.strip().splitlines()[-1])
        print(json.dumps(record), flush=True)
        rows.append(record)

    # Measured after the sizes, so the 2 GiB of copy buffers do not count
    # towards any child's memory.
    bandwidth = measure_copy_bandwidth()
    machine = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "copy_GBps": bandwidth,
    }
    print(json.dumps(machine), flush=True)
    print()
    print_table(rows, bandwidth)


if __name__ == "__main__":
    main()
