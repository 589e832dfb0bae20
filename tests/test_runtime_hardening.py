"""Issue 14, classes 3, 8 and 9 beyond the one-line corpus: what a failed run records,
plugin tracebacks on request, transactional plugin files, plugin folders recorded in the
resolved config, streams read once, listings not cut when piped, symlink loops in image
folders, and caches that verify what they load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from cli_process import run_jigsawkit

from jigsawkit.cli import main
from jigsawkit.registry import registry

ROOT = Path(__file__).resolve().parent.parent

CFN = {"channels": [8, 16, 16], "kernel_sizes": [3, 3, 3], "tile_fc": 32, "input_size": 24}


def exported(tmp_path: Path) -> Path:
    from jigsawkit.training.export import export_feature_extractor

    model = registry("backbone").build("cfn", **CFN)
    return export_feature_extractor(
        model, tmp_path / "fe.pt", {"backbone": {"name": "cfn", "params": CFN}}
    )


RAISING_EVALUATOR = """\
from jigsawkit import register_evaluator


class Fails:
    def evaluate(self, ctx):
        raise ValueError("probe exploded")


@register_evaluator("fails_late")
def fails_late(**params):
    '''Builds fine, fails while evaluating.'''
    return Fails()
"""


def test_a_run_failing_after_it_started_is_recorded_as_failed(
    tmp_path, capsys, monkeypatch, clean_registries
):
    """Preflight cannot foresee a plugin failing mid-run: the run directory then says so
    (run.state: failed, run.error), and the CLI names the plugin file and line."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "late.py").write_text(RAISING_EVALUATOR)
    experiment = tmp_path / "e.yaml"
    experiment.write_text(
        f"name: t\ndevice: cpu\ntrackers: [console]\npretrain: null\ncheckpoint: {exported(tmp_path)}\n"
        "evaluate: [fails_late]\n"
    )
    run_dir = tmp_path / "run"
    assert main(["run", str(experiment), "--out", str(run_dir)]) == 2
    err = capsys.readouterr().err
    (line,) = [x for x in err.splitlines() if x.startswith("error:")]
    assert f"{(plugins / 'late.py').resolve()}:6 (in evaluate)" in line
    assert "ValueError: probe exploded" in line and "Traceback" not in err
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run.state"] == "failed"
    assert summary["run.error"] == "ValueError: probe exploded"

    monkeypatch.setenv("JIGSAWKIT_TRACEBACK", "1")
    assert main(["run", str(experiment), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and 'raise ValueError("probe' in err


BOOM_FACTORY = """\
from jigsawkit import register_backbone


@register_backbone("boom")
def boom(**params):
    '''Fails when built.'''
    return helper()


def helper():
    raise RuntimeError("inside the plugin")
"""


@pytest.mark.parametrize("how", ["flag-before", "flag-after", "environment"])
def test_traceback_on_request_shows_the_plugins_frames(
    how, tmp_path, capsys, monkeypatch, clean_registries
):
    plugins = tmp_path / "p"
    plugins.mkdir()
    (plugins / "boom.py").write_text(BOOM_FACTORY)
    args = ["run", str(ROOT / "experiments/quickstart.yaml"), "--set", "backbone=boom"]
    args += ["--plugins", str(plugins), "--out", str(tmp_path / "out")]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (
        f"error: plugin {(plugins / 'boom.py').resolve()}: backbone 'boom' factory raised "
        "RuntimeError: inside the plugin (--traceback or JIGSAWKIT_TRACEBACK=1 shows the "
        "traceback)"
    )
    if how == "flag-before":
        args = ["--traceback", *args]
    elif how == "flag-after":
        args = [*args, "--traceback"]
    else:
        monkeypatch.setenv("JIGSAWKIT_TRACEBACK", "1")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert "in helper" in err and err.splitlines()[-1].startswith("error: plugin ")
    assert not (tmp_path / "out").exists()


def test_a_plugin_file_that_fails_half_way_registers_nothing(tmp_path, capsys, clean_registries):
    folder = tmp_path / "p"
    folder.mkdir()
    (folder / "half.py").write_text(
        "from jigsawkit import register_backbone, register_evaluator\n\n"
        "@register_evaluator('half_eval')\ndef half_eval():\n    '''First.'''\n\n"
        "@register_backbone('half_backbone', schema={'properties': {'w': {'type': 'nope'}}})\n"
        "def half_backbone():\n    '''Second, with a broken schema.'''\n"
    )
    assert main(["list-components", "--json", "--plugins", str(folder)]) == 0
    out, err = capsys.readouterr()
    names = {(row["kind"], row["name"]) for row in json.loads(out)}
    assert ("evaluator", "half_eval") not in names and ("backbone", "half_backbone") not in names
    (line,) = err.splitlines()
    assert line.startswith(f"warning: plugin {(folder / 'half.py').resolve()} failed to import: ")
    assert "backbone 'half_backbone'" in line and "properties/w/type" in line


def test_the_resolved_config_records_every_plugin_folder(tmp_path, capsys, clean_registries):
    """The plugins/ folder next to the file and --plugins folders land in the resolved
    config as absolute paths, so the run directory's config.yaml validates anywhere."""
    work = tmp_path / "project"
    (work / "plugins").mkdir(parents=True)
    (work / "plugins" / "near.py").write_text(
        "from jigsawkit import register_evaluator\n\n"
        "@register_evaluator('near_eval')\ndef near():\n    '''Found next to the file.'''\n"
    )
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "far.py").write_text(
        "from jigsawkit import register_tracker\n\n"
        "@register_tracker('far_tracker')\ndef far(**kw):\n    '''From --plugins.'''\n"
    )
    experiment = work / "e.yaml"
    experiment.write_text("name: t\nevaluate: [near_eval]\ntrackers: [far_tracker]\n")
    assert main(["validate", str(experiment), "--plugins", str(extra)]) == 0
    resolved = capsys.readouterr().out
    saved = tmp_path / "elsewhere" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text(resolved)
    import yaml

    assert yaml.safe_load(resolved)["plugins"] == [
        str((work / "plugins").resolve()),
        str(extra.resolve()),
    ]
    # A fresh process: nothing loaded, only what config.yaml says.
    done = run_jigsawkit(
        "validate", str(saved), "--quiet", env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{saved}: OK"


def test_validate_reads_a_pipe_once(capsys):
    """`jigsawkit validate <(cat f)`: the command looks at the file twice (sweep file or
    experiment?) but a pipe can be read once."""
    text = (ROOT / "experiments" / "quickstart.yaml").read_text()
    read, write = os.pipe()

    def feed() -> None:
        with os.fdopen(write, "w") as handle:
            handle.write(text)

    threading.Thread(target=feed, daemon=True).start()
    assert main(["validate", f"/dev/fd/{read}"]) == 0, capsys.readouterr().err
    assert "name: quickstart" in capsys.readouterr().out


def test_list_components_piped_keeps_whole_rows(tmp_path):
    """Piped into a file or another program (no terminal, no COLUMNS), no column is cut."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "jigsawkit", "list-components", "--kind", "evaluator"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    description = registry("evaluator").get("linear_probe").description
    assert any(description in line for line in done.stdout.splitlines()), done.stdout
    assert "\x1b[" not in done.stdout


# -- image folders: symlink loops, unusual files ------------------------------------------


def image_tree(root: Path) -> None:
    from PIL import Image

    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / name / f"{i}.png")
    (root / "cat" / "loop").symlink_to("..")  # back to the root: dog's images again
    (root / "cat" / "self").symlink_to(".")
    (root / "dog" / "twin.png").symlink_to("../cat/0.png")  # the same file in two classes
    (root / "dog" / "broken.png").write_text("not an image")
    (root / "dog" / "dangling.png").symlink_to("nowhere.png")
    os.mkfifo(root / "dog" / "fifo.png")


def test_a_symlink_loop_counts_each_image_once_and_never_in_two_splits(tmp_path):

    root = tmp_path / "images"
    image_tree(root)
    for labelled in (True, False):
        dataset = registry("dataset").build(
            "image_folder", root=str(root), labelled=labelled, splits=[0.5, 0.25, 0.25]
        )
        paths, labels, classes = dataset._scan()
        real = [os.path.realpath(p) for p in paths]
        assert len(real) == len(set(real)) == 15  # 12 images + 3 unreadable dog files
        if labelled:
            assert classes == ["cat", "dog"]
            assert list(np.bincount(labels)) == [6, 9], "each image stays in its own class"
        seen: dict[str, str] = {}
        total = skipped = 0
        for split in ("train", "val", "test"):
            data = dataset.load(split, 8, tmp_path / f"cache-{labelled}")
            total += len(data)
            skipped += data.skipped
            for path in dataset_split_files(dataset, split):
                assert seen.setdefault(os.path.realpath(path), split) == split
        assert (total, skipped) == (12, 3), "unreadable files are skipped and counted"


def dataset_split_files(dataset, split: str) -> list[str]:
    from jigsawkit.data.splits import split_indices

    paths = dataset._scan()[0]
    return [paths[i] for i in split_indices(len(paths), dataset.splits, dataset.seed)[split]]


# -- caches and run directories verify what they read -------------------------------------


def test_a_damaged_feature_cache_entry_is_recomputed_not_trusted(tmp_path):
    import torch

    from jigsawkit.data.base import ImageSplit
    from jigsawkit.evaluators.features import cached_features

    backbone = registry("backbone").build("cfn", **CFN)
    images = np.random.default_rng(0).integers(0, 255, (4, 24, 24, 3), dtype=np.uint8)
    split = ImageSplit(images=images, labels=None, key="k1")

    def features() -> dict:
        return cached_features(
            backbone,
            split,
            ["conv"],
            24,
            "cpu",
            checkpoint_id="c",
            cache_dir=tmp_path,
            progress=False,
        )

    first = features()["conv"]
    (entry,) = (tmp_path / "features").glob("*.pt")
    stored = torch.load(entry, weights_only=True)
    stored["features"]["conv"][0, 0] += 1.0  # same shape, wrong numbers
    torch.save(stored, entry)
    assert torch.equal(features()["conv"], first), "the damaged entry was trusted"
    torch.save({**stored, "meta": json.dumps({"checkpoint": "other"})}, entry)
    assert torch.equal(features()["conv"], first), "an entry of other weights was trusted"


def test_a_half_written_metrics_line_is_cut_before_a_resumed_run_appends(tmp_path):
    from jigsawkit.rundir import RunDirectory

    run = RunDirectory(tmp_path)
    run.log({"a": 1.0}, 1)
    with open(run.metrics_path, "a") as handle:
        handle.write('{"step": 2, "a"')  # the process died here
    RunDirectory(tmp_path).log({"a": 3.0}, 3)
    rows = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 3]


def test_wandb_gets_the_experiments_mode_whatever_the_shell_says(tmp_path, monkeypatch):
    """An empty (or stray) WANDB_MODE in the environment made wandb refuse its settings
    after the run directory existed; the tracker now sets the mode it was given."""

    monkeypatch.setenv("WANDB_MODE", "")
    tracker = registry("tracker").build("wandb", run_dir=tmp_path, mode="offline")
    assert tracker._environment()["WANDB_MODE"] == "offline"
    tracker.preflight()  # offline: no key needed, the package is there
