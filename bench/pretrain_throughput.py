"""Pretraining throughput against the limits of this machine, measured side by side in one run.

    python bench/pretrain_throughput.py [--steps 30] [--batch-size 64] [--device auto]
                                        [--precision fp32|bf16] [--channels-last]
                                        [--compile] [--model quickstart|baseline]
                                        [--cache DIR] [--skip-data-path]

Same model (the quickstart's CFN + 3x3 jigsaw head, or with ``--model baseline`` the one of
experiments/baseline.yaml), same batch size throughout:

(a) model only: forward + backward + optimizer step on puzzles already on the device —
    the limit for this model here;
(b) jigsawkit end to end: the real training engine reading the decoded-image cache
    (loader, on-device tiling, model, optimizer), training images/s;
(c) the data path alone, no model: jigsawkit batches (tiles, permutations, targets ready on
    the device) per second vs a reference per-sample PIL pipeline as classic jigsaw loaders
    do it (decode JPEG, crop, nine tile crops, per-tile to-tensor and normalise, stack) in a
    torch DataLoader with the same number of workers.

Also prints the model's FLOPs per image and the achieved FLOP/s against a measured matmul
peak. The last two lines are `end_to_end/model_only: X.XX` (target >= 0.90 on CPU) and
`data_path/reference: X.XX` (target >= 3; not measured with ``--skip-data-path``).
``--compile`` compiles the task's forward in place (``nn.Module.compile``) for (a) and (b)
alike; ``--cache DIR`` keeps the decoded synthetic images between runs (bench/gpu_figures.sh).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

QUICKSTART_BACKBONE = {
    "channels": [32, 64, 128],
    "kernel_sizes": [3, 3, 3],
    "tile_fc": 256,
    "input_size": 24,
}
QUICKSTART_JIGSAW = {
    "grid": 3,
    "crop": 96,
    "tile": 24,
    "head_hidden": 512,
    "permutations": {"count": 64, "selection": "maximal", "seed": 0},
}
IMAGE_SIZE = 96
ROOT = Path(__file__).resolve().parent.parent


def model_settings(model: str) -> tuple[dict, dict]:
    """(backbone params, jigsaw params) of ``model``: the quickstart's, or those of
    experiments/<model>.yaml (its ``backbone`` must be a CFN, its ``pretext`` a jigsaw)."""
    if model == "quickstart":
        return QUICKSTART_BACKBONE, QUICKSTART_JIGSAW
    import yaml

    config = yaml.safe_load((ROOT / "experiments" / f"{model}.yaml").read_text())
    backbone, pretext = dict(config["backbone"]), dict(config["pretext"])
    if backbone.pop("name") != "cfn" or pretext.pop("name") != "jigsaw":
        raise SystemExit(f"error: --model {model}: experiments/{model}.yaml is not a CFN jigsaw")
    return backbone, pretext


def build_task(
    device: torch.device, channels_last: bool, model: str = "quickstart", compile: str = ""
) -> torch.nn.Module:
    """The model's jigsaw task on ``device``; ``compile`` names a torch.compile backend
    (``inductor``; ``eager`` checks the compile path quickly) or is empty."""
    from jigsawkit.registry import registry

    backbone_params, jigsaw_params = model_settings(model)
    torch.manual_seed(0)
    backbone = registry("backbone").build("cfn", **backbone_params)
    task = registry("pretext").build("jigsaw", backbone=backbone, **jigsaw_params)
    task = task.to(device)
    if channels_last:
        task = task.to(memory_format=torch.channels_last)
    if compile:
        task.compile(backend=compile)  # in place: state_dict keys and the engine unchanged
    return task


def synthetic_split(count: int, cache_dir: Path, image_size: int = IMAGE_SIZE):
    from jigsawkit.registry import registry

    held_out = min(64, count)  # val/test: what the engine evaluates after the epoch
    dataset = registry("dataset").build(
        "synthetic", seed=0, train_size=count, val_size=held_out, test_size=held_out
    )
    return {s: dataset.load(s, image_size, cache_dir) for s in ("train", "val", "test")}


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def model_only(task, images, device, precision, steps, batch_size) -> float:
    """(a) images/s of forward+backward+step on puzzles already prepared on the device.

    Every step gets a different prepared batch (cycled from a pool): training on one batch
    over and over saturates the softmax, and the denormal gradients that follow make a
    CPU several times slower than real training.
    """
    from jigsawkit.training.optim import build_optimizer

    optimizer = build_optimizer(task, {"name": "adam", "lr": 1e-3, "weight_decay": 0.0})
    generator = torch.Generator(device=device).manual_seed(0)
    pool = []
    for start in range(0, images.shape[0] - batch_size + 1, batch_size):
        batch = images[start : start + batch_size].to(device)
        pool.append(task.prepare(batch, generator, True))
    task.train()

    def step(index: int) -> None:
        inputs, targets = pool[index % len(pool)]
        with autocast(device, precision):
            logits = task(inputs)
        loss = task.loss(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for index in range(5):
        step(index)
    sync(device)
    start = time.perf_counter()
    for index in range(steps):
        step(index)
    sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def end_to_end(task, splits, device, precision, steps, batch_size, run_dir: Path) -> float:
    """(b) the real engine's training images/s, reading the cache through BatchLoader."""
    from jigsawkit.data.loader import BatchLoader
    from jigsawkit.training.engine import pretrain
    from jigsawkit.training.settings import PretrainSettings

    def make_loader(split: str, epoch: int):
        loader = BatchLoader(
            splits[split],
            batch_size=batch_size,
            shuffle=split == "train",
            seed=0,
            device=device,
            drop_last=split == "train",
        )
        loader.set_epoch(epoch)
        return loader

    def run(steps_: int, out: Path) -> float:
        settings = PretrainSettings(
            epochs=1,
            optimizer={"name": "adam", "lr": 1e-3, "weight_decay": 0.0},
            schedule={"name": "constant"},
            precision=precision,
            seed=0,
            max_steps_per_epoch=steps_,
        )
        metrics = pretrain(
            task,
            make_loader,
            settings,
            device=device,
            run_dir=out,
            log=lambda metrics, step=None: None,
            progress=False,
        )
        return float(metrics["images_per_second"])

    run(3, run_dir / "warmup")
    return run(steps, run_dir / "measure")


def jigsaw_data_path(task, split, device, steps, batch_size) -> float:
    """(c) jigsawkit batches/s: loader + on-device tiling, no model."""
    from jigsawkit.data.loader import BatchLoader

    generator = torch.Generator(device=device).manual_seed(0)
    loader = BatchLoader(
        split, batch_size=batch_size, shuffle=True, seed=0, device=device, drop_last=True
    )
    done = 0
    start = None
    while done < steps + 2:
        for images, _ in loader:
            inputs, targets = task.prepare(images, generator, True)
            done += 1
            if done == 2:  # exclude the first batches: thread start-up
                sync(device)
                start = time.perf_counter()
            if done >= steps + 2:
                break
    sync(device)
    return steps / (time.perf_counter() - start)


class ReferenceJigsawDataset(torch.utils.data.Dataset):
    """Classic per-sample jigsaw loading with PIL, as most public jigsaw code does it."""

    def __init__(self, files: list[str], perms: np.ndarray, grid: int, crop: int, tile: int):
        self.files, self.perms, self.grid, self.crop, self.tile = files, perms, grid, crop, tile

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        from PIL import Image
        from torchvision.transforms import functional as TF

        rng = np.random.default_rng(index)
        image = Image.open(self.files[index]).convert("RGB")
        width, height = image.size
        left = int(rng.integers(0, width - self.crop + 1))
        top = int(rng.integers(0, height - self.crop + 1))
        image = image.crop((left, top, left + self.crop, top + self.crop))
        cell = self.crop // self.grid
        tiles = []
        for row in range(self.grid):
            for col in range(self.grid):
                dy, dx = (int(v) for v in rng.integers(0, cell - self.tile + 1, size=2))
                y, x = row * cell + dy, col * cell + dx
                piece = TF.to_tensor(image.crop((x, y, x + self.tile, y + self.tile)))
                mean = piece.mean(dim=(1, 2)).tolist()
                std = (piece.std(dim=(1, 2)) + 1e-5).tolist()
                tiles.append(TF.normalize(piece, mean, std))
        label = int(rng.integers(0, len(self.perms)))
        order = self.perms[label]
        return torch.stack([tiles[i] for i in order]), label


def reference_data_path(
    split, perms, steps, batch_size, workers, tmp: Path, device, jigsaw: dict
) -> float:
    from PIL import Image

    files = []
    for i in range(min(len(split), (steps + 2) * batch_size)):
        path = tmp / f"img_{i:06d}.jpg"
        Image.fromarray(np.asarray(split.images[i])).save(path, quality=90)
        files.append(str(path))
    dataset = ReferenceJigsawDataset(
        files, perms, grid=jigsaw["grid"], crop=jigsaw["crop"], tile=jigsaw["tile"]
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    done = 0
    start = None
    for tiles, labels in loader:
        tiles, labels = tiles.to(device), labels.to(device)
        done += 1
        if done == 2:
            sync(device)
            start = time.perf_counter()
        if done >= steps + 2:
            break
    sync(device)
    return (done - 2) / (time.perf_counter() - start)


def flops_per_image(task, device) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    generator = torch.Generator(device=device).manual_seed(0)
    size = int(task.image_size)
    images = torch.rand(2, 3, size, size, device=device)
    inputs, targets = task.prepare(images, generator, True)
    counter = FlopCounterMode(display=False)
    with counter:
        loss = task.loss(task(inputs), targets)
        loss.backward()
    task.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def matmul_peak(device, precision) -> float:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    n = 2048 if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--model", choices=["quickstart", "baseline"], default="quickstart")
    parser.add_argument(
        "--compile",
        nargs="?",
        const="inductor",
        default="",
        metavar="BACKEND",
        help="torch.compile the task (backend: inductor by default; eager for a quick check)",
    )
    parser.add_argument("--cache", default=None, help="decoded-image cache to reuse")
    parser.add_argument("--skip-data-path", action="store_true", help="leave out (c)")
    parser.add_argument(
        "--images", type=int, default=None, help="train images (default: enough for --steps)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of (a), (b)")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="reference DataLoader workers (jigsawkit uses one prefetch thread)",
    )
    args = parser.parse_args()

    from jigsawkit.errors import UserError
    from jigsawkit.training.seeding import resolve_device

    try:
        device = resolve_device(args.device)
    except UserError as error:
        parser.error(f"--{error}")
    tmp = Path(tempfile.mkdtemp(prefix="jk-bench-"))
    try:
        count = args.images or max(args.batch_size * (args.steps + 4), 512)
        task = build_task(device, args.channels_last, args.model, args.compile)
        splits = synthetic_split(count, Path(args.cache or tmp / "cache"), int(task.image_size))
        print(
            f"device: {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}),"
            f" threads {torch.get_num_threads()}, model {args.model}, precision {args.precision}, "
            f"channels_last {'on' if args.channels_last else 'off'}, "
            f"compile {args.compile or 'off'}, batch {args.batch_size}"
        )

        images = (
            torch.from_numpy(np.array(splits["train"].images[: args.batch_size * 16]))
            .permute(0, 3, 1, 2)
            .float()
            .div(255)
        )
        # (a) and (b) alternate for --rounds rounds; each keeps its best round, so a burst of
        # load from other processes on this shared machine hits neither figure alone.
        a = b = 0.0
        for round_ in range(args.rounds):
            a = max(
                a, model_only(task, images, device, args.precision, args.steps, args.batch_size)
            )
            b = max(
                b,
                end_to_end(
                    task,
                    splits,
                    device,
                    args.precision,
                    args.steps,
                    args.batch_size,
                    tmp / f"round{round_}",
                ),
            )
        ours = ref = None
        if not args.skip_data_path:
            ours = jigsaw_data_path(task, splits["train"], device, args.steps, args.batch_size)
            perms = task.permutations.cpu().numpy()
            jigsaw = model_settings(args.model)[1]
            ref = reference_data_path(
                splits["train"], perms, min(args.steps, 20), args.batch_size, args.workers, tmp,
                device, jigsaw,
            )  # fmt: skip
        flops = flops_per_image(task, device)
        peak = matmul_peak(device, args.precision)

        print(f"(a) model only:            {a:9.1f} images/s")
        print(f"(b) jigsawkit end to end:  {b:9.1f} images/s")
        if ours is not None and ref is not None:
            print(
                f"(c) data path, jigsawkit:  {ours:9.2f} batches/s "
                f"({ours * args.batch_size:.0f} images/s)"
            )
            print(
                f"(c) data path, reference:  {ref:9.2f} batches/s "
                f"({ref * args.batch_size:.0f} images/s, PIL per sample, {args.workers} worker(s))"
            )
        print(f"model FLOPs per image (forward+backward): {flops / 1e9:.3f} GFLOP")
        print(
            f"achieved: {a * flops / 1e9:.1f} GFLOP/s model-only, {b * flops / 1e9:.1f} GFLOP/s "
            f"end to end; matmul peak {peak / 1e9:.1f} GFLOP/s "
            f"({100 * a * flops / peak:.0f}% of peak)"
        )
        print(f"end_to_end/model_only: {b / a:.2f}")
        if ours is not None and ref is not None:
            print(f"data_path/reference: {ours / ref:.2f}")
        sys.stdout.flush()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    from jigsawkit.progress import progress_bars

    with progress_bars(False):  # figures only, no bars
        main()
