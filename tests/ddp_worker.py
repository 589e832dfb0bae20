"""One pretraining run on the real engine and loader, under torchrun or as one process.

Used by tests/test_distributed.py: ``python tests/ddp_worker.py OUT MODE EPOCHS SYNC_BN RUN_DIR
[resume]``. MODE ``fixed``: the target of an image is a function of its pixels (no random
draws), so a 2-process and a 1-process run take exactly the same optimizer steps; ``random``:
targets drawn from the task's generator (per-rank streams, what a resume must restore).
Rank 0 saves the final parameters and metrics to OUT.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jigsawkit.data.base import ImageSplit
from jigsawkit.data.loader import BatchLoader
from jigsawkit.training import distributed
from jigsawkit.training.engine import pretrain
from jigsawkit.training.settings import PretrainSettings

SIZE, BATCH = 16, 16


class Task(nn.Module):
    """Which quarter turn was applied (``random``) or a pixel-derived class (``fixed``)."""

    num_classes = 4
    image_size = SIZE

    def __init__(self, mode: str, batch_norm: bool):
        super().__init__()
        self.mode = mode
        norm = nn.BatchNorm2d(8) if batch_norm else nn.Identity()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), norm, nn.ReLU(), nn.AdaptiveAvgPool2d(2)
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(32, 4))

    def prepare(self, images, generator, train):
        if self.mode == "fixed":
            return images, (images.sum(dim=(1, 2, 3)) * 100).long() % 4
        k = torch.randint(0, 4, (images.shape[0],), generator=generator)
        turns = torch.stack([torch.rot90(images, r, dims=(2, 3)) for r in range(4)], dim=1)
        return turns[torch.arange(images.shape[0]), k], k

    def forward(self, inputs):
        return self.head(self.backbone(inputs))

    def loss(self, logits, targets):
        return F.cross_entropy(logits, targets)


def split(count: int, seed: int) -> ImageSplit:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 255, (count, SIZE, SIZE, 3), dtype=np.uint8)
    images[:, : SIZE // 2] //= 3  # an 'up' for the rotation task
    return ImageSplit(images, None, None, None, key=f"ddp-worker-{seed}-{count}")


def main() -> None:
    out, mode, epochs, sync_bn, run_dir = sys.argv[1:6]
    resume = len(sys.argv) > 6
    torch.set_num_threads(1)
    world, device = distributed.init_from_env(torch.device("cpu"))
    splits = {"train": split(160, 1), "val": split(40, 2), "test": split(40, 3)}

    def make_loader(name: str, epoch: int) -> BatchLoader:
        loader = BatchLoader(
            splits[name],
            BATCH,
            shuffle=name == "train",
            seed=5,
            device=device,
            drop_last=name == "train",
            rank=world.rank,
            world_size=world.size,
        )
        loader.set_epoch(epoch)
        return loader

    torch.manual_seed(0)
    task = Task(mode, batch_norm=sync_bn == "1" or mode == "random")
    settings = PretrainSettings(
        epochs=int(epochs),
        optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 0.0},
        schedule={"name": "cosine"},
        precision="fp32",
        seed=3,
        sync_batchnorm=sync_bn == "1",
    )
    metrics = pretrain(
        task,
        make_loader,
        settings,
        device=device,
        run_dir=run_dir,
        log=lambda metrics, step: None,
        resume_from=Path(run_dir) / "checkpoints" / "last.pt" if resume else None,
        progress=False,
    )
    if world.is_main:
        params = {k: v.detach().clone() for k, v in task.state_dict().items()}
        torch.save({"params": params, "metrics": metrics}, out)
    distributed.barrier()  # leave the group together
    distributed.shutdown()


if __name__ == "__main__":
    main()
