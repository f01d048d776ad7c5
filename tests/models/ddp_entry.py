"""Train on the Manhattan graph under torchrun and save this rank's parameters.

Run by test_ddp.py as ``torchrun --standalone --nproc-per-node 2 ddp_entry.py OUT_DIR``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))

from conftest import manhattan_tables

from mora_models.data import GraphData
from mora_models.model import ModelConfig
from mora_models.trainer import TrainConfig, fit


def main(out_dir: Path) -> None:
    edges, poi = manhattan_tables()
    graph = GraphData.from_tables(edges, {"poi": poi})
    model_config = ModelConfig(line_epochs=2, towers={"poi": "mlp"})
    train_config = TrainConfig(
        batch_size=32,
        max_epochs=3,
        device="cpu",
        inductive=False,
        checkpoint_dir=out_dir / "checkpoints",
    )
    result = fit(graph, model_config, train_config)
    rank = int(os.environ["RANK"])
    torch.save(
        {
            "state": result.model.state_dict(),
            "history": [
                {k: v for k, v in record.items() if k != "seconds"} for record in result.history
            ],
            "world_size": dist.get_world_size(),
        },
        out_dir / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
