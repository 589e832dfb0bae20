"""Probe val/test images that pretraining saw are found by content before the run starts:
refused (exit 2, nothing written) or, with ``allow_overlap: true``, counted in the summary."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from PIL import Image

from jigsawkit.cli import main
from jigsawkit.config.experiment import load_experiment
from jigsawkit.data import overlap
from jigsawkit.data.overlap import SeenImages, image_fingerprints
from jigsawkit.errors import UserError
from jigsawkit.evaluators.overlap import check_probe_overlap
from jigsawkit.runner import build_component, run_experiment


def random_images(count: int, size: int = 12, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def test_fingerprints_tell_images_apart_and_find_copies():
    images = random_images(300)
    hashes = image_fingerprints(images)
    assert len(np.unique(hashes)) == 300
    one_pixel = images[:1].copy()
    one_pixel[0, 5, 5, 1] ^= 1
    assert image_fingerprints(one_pixel)[0] != hashes[0]
    seen = SeenImages(images[:200])
    probe = np.concatenate([images[150:250], random_images(20, seed=1)])
    assert seen.count_seen(probe) == 50  # images 150..199
    assert seen.count_seen(random_images(0)) == 0


def test_odd_sized_images_are_padded_to_whole_words():
    images = random_images(40, size=5)  # 75 bytes: not a multiple of 8
    assert SeenImages(images).count_seen(images[::2]) == 20


def test_a_hash_collision_is_not_counted(monkeypatch):
    """Matches are confirmed on the pixels: with every hash equal, only true copies count."""
    monkeypatch.setattr(
        overlap, "image_fingerprints", lambda images: np.zeros(len(images), dtype=np.uint64)
    )
    images = random_images(30)
    assert SeenImages(images[:10]).count_seen(images[5:30]) == 5


def test_images_of_another_size_are_refused():
    with pytest.raises(ValueError, match="cannot be compared"):
        SeenImages(random_images(4, 12)).count_seen(random_images(4, 16))


@pytest.fixture
def folder(tmp_path):
    """120 distinct 24 px images in two classes."""
    root = tmp_path / "images"
    for index, image in enumerate(random_images(120, size=24, seed=7)):
        cls = root / f"c{index % 2}"
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(cls / f"{index:03d}.png")
    return root


def experiment(tmp_path, pretrain_data: str, probe_data: str, extra: str = "") -> str:
    path = tmp_path / "exp.yaml"
    path.write_text(
        f"""\
name: overlap
seed: 0
device: cpu
cache_dir: {tmp_path / "cache"}
trackers: [console]
backbone: {{name: cfn, channels: [8, 16], kernel_sizes: [3, 3], tile_fc: 16, input_size: 10}}
pretext: {{name: jigsaw, grid: 2, crop: 24, tile: 10, permutations: {{count: 4}}}}
pretrain:
  data: {pretrain_data}
  epochs: 1
  max_steps_per_epoch: 2
  batch_size: 16
  precision: fp32
evaluate:
  - name: knn
    data: {probe_data}
    image_size: 24
    k: 3
{extra}"""
    )
    return str(path)


def test_same_folder_split_with_two_seeds_is_refused_before_any_work(tmp_path, folder, capsys):
    exp = experiment(
        tmp_path,
        f"{{name: image_folder, root: {folder}, seed: 0}}",
        f"{{name: image_folder, root: {folder}, seed: 1}}",
    )
    out = tmp_path / "run"
    assert main(["run", exp, "--out", str(out)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "evaluate.knn.data:" in lines[0] and "allow_overlap" in lines[0]
    # 12 val and 12 test images per seed; most of seed 1's were in seed 0's 96 train images
    assert " val " in lines[0] and " test " in lines[0] and "of 12" in lines[0]
    assert not out.exists()


def test_counts_are_exact(tmp_path, folder):
    """The counts equal the overlap of the two seeded file lists."""
    from jigsawkit.data.splits import split_indices

    pre = build_component("dataset", {"name": "image_folder", "root": str(folder), "seed": 0})
    seen = pre.load("train", 24, tmp_path / "cache" / "images")
    probe = {"name": "image_folder", "root": str(folder), "seed": 1}
    summary = check_probe_overlap(
        [{"name": "knn", "data": probe, "allow_overlap": True}],
        seen,
        tmp_path / "cache",
        lambda data: build_component("dataset", data),
    )
    # both seeds shuffle the same sorted file list of 120 files
    train0 = set(split_indices(120, [0.8, 0.1, 0.1], 0)["train"].tolist())
    cut1 = split_indices(120, [0.8, 0.1, 0.1], 1)
    assert summary == {
        "probe.knn.overlap.val_images": len(train0 & set(cut1["val"].tolist())),
        "probe.knn.overlap.test_images": len(train0 & set(cut1["test"].tolist())),
    }
    assert summary["probe.knn.overlap.val_images"] > 0


def test_allow_overlap_warns_and_records_the_counts(tmp_path, folder, capsys):
    exp = experiment(
        tmp_path,
        f"{{name: image_folder, root: {folder}, seed: 0}}",
        f"{{name: image_folder, root: {folder}, seed: 1}}",
        "    allow_overlap: true\n",
    )
    result = run_experiment(load_experiment(exp), out=tmp_path / "run", progress=False)
    assert "warning: evaluate.knn.data:" in capsys.readouterr().err
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["probe.knn.overlap.val_images"] > 0
    assert summary["probe.knn.overlap.test_images"] > 0
    assert "probe.knn.test_top1" in summary


def test_same_split_of_the_same_folder_does_not_overlap(tmp_path, folder):
    data = f"{{name: image_folder, root: {folder}, seed: 0}}"
    config = load_experiment(experiment(tmp_path, data, data))
    config["pretrain"]["epochs"] = 1
    result = run_experiment(config, out=tmp_path / "run", progress=False)
    assert result.summary["probe.knn.overlap.val_images"] == 0
    assert result.summary["probe.knn.overlap.test_images"] == 0


@pytest.mark.slow
def test_quickstart_data_does_not_overlap(tmp_path):
    """Synthetic seed 0 (pretraining) vs seed 1 (probe), the quickstart's sizes (slow only
    because the 7,000 synthetic images are generated; the check itself takes ~1 s)."""
    pre = build_component("dataset", {"name": "synthetic", "seed": 0})
    seen = pre.load("train", 96, tmp_path / "images")
    probe = {"name": "synthetic", "seed": 1}
    build = lambda data: build_component("dataset", data)  # noqa: E731
    check_probe_overlap([{"name": "knn", "data": probe}], seen, tmp_path, build)  # caches val/test
    started = time.perf_counter()
    summary = check_probe_overlap(
        [{"name": "linear_probe", "data": probe}, {"name": "knn", "data": probe}],
        seen,
        tmp_path,
        build,
    )
    elapsed = time.perf_counter() - started
    assert summary == {
        "probe.linear_probe.overlap.val_images": 0,
        "probe.linear_probe.overlap.test_images": 0,
        "probe.knn.overlap.val_images": 0,
        "probe.knn.overlap.test_images": 0,
    }
    assert elapsed < 20  # hashing 7,000 images of 96 px; about a second alone


def test_checkpoint_runs_state_why_they_skip(tmp_path):
    summary = check_probe_overlap(
        [
            {"name": "knn", "data": {"name": "synthetic"}},
            {"name": "linear_probe", "data": {"name": "synthetic"}, "checkpoint": "x.pt"},
        ],
        None,
        tmp_path,
        lambda data: pytest.fail("no dataset is read"),
        skip_reason="no pretraining here",
    )
    assert summary == {
        "probe.knn.overlap.skipped": "no pretraining here",
        "probe.linear_probe.overlap.skipped": "no pretraining here",
    }
    seen = build_component("dataset", {"name": "synthetic", "train_size": 8}).load(
        "train", 16, tmp_path / "images"
    )
    summary = check_probe_overlap(
        [{"name": "linear_probe", "data": {"name": "synthetic"}, "checkpoint": "x.pt"}],
        seen,
        tmp_path,
        lambda data: pytest.fail("no dataset is read"),
    )
    assert "checkpoint" in summary["probe.linear_probe.overlap.skipped"]


def test_a_refusal_names_evaluator_split_and_count():
    with pytest.raises(UserError) as info:
        from jigsawkit.evaluators.overlap import _refuse_or_warn

        _refuse_or_warn("evaluate.linear_probe", {"val": (0, 10), "test": (3, 50)}, False)
    message = str(info.value)
    assert message.startswith("evaluate.linear_probe.data: 3 of 50 test images were seen")
    assert "of 10 val" not in message
