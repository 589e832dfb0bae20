"""``jigsawkit report``: figures and report.md from fake run and sweep directories."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import yaml
from PIL import Image

from jigsawkit.cli import main
from jigsawkit.evaluators.linear_probe import HeadResult
from jigsawkit.rundir import write_json
from jigsawkit.tracking.report import (
    PRETRAINED,
    RANDOM_INIT,
    build_report,
    load_grid,
    split_restarts,
    stage_of,
    stage_series,
)

LRS = [1e-4, 1e-3, 1e-2, 1e-1]


def make_run(path: Path, seed: int, probe_file: bool = True, epochs: int = 3) -> Path:
    """A run directory in the core's layout, with metrics that change from run to run."""
    rng = random.Random(seed)
    path.mkdir(parents=True)
    rows, step = [], 0
    for epoch in range(epochs):
        for _ in range(10):
            step += 1
            rows.append(
                {
                    "step": step,
                    "time": 1000.0 + step,
                    "pretrain/train_loss": 4.0 / step + rng.random() * 0.1,
                    "pretrain/train_top1": min(1.0, step / 40 + rng.random() * 0.05),
                    "pretrain/lr": 1e-3 * (1 - step / 40),
                    "pretrain/images_per_second": 500 + rng.random(),
                    "pretrain/epoch": step / 10,
                }
            )
        rows.append(
            {
                "step": step,
                "time": 1000.0 + step,
                "pretrain/val_loss": 3.0 / (epoch + 1),
                "pretrain/val_top1": 0.2 * (epoch + 1),
                "pretrain/epoch": epoch + 1.0,
            }
        )
    for variant in ("", "random_init/"):  # the probe's epochs restart for random-init
        for epoch in range(5):
            rows.append(
                {
                    "step": epoch,
                    "time": 2000.0 + epoch,
                    f"probe/linear_probe/{variant}train_loss": 2.0 / (epoch + 1),
                    f"probe/linear_probe/{variant}val_top1": 0.3 + 0.05 * epoch,
                }
            )
    (path / "metrics.jsonl").write_text(
        "\n".join(json.dumps(r) for r in rows) + "\n" + '{"step": 99, "pretrain/tr'  # cut off
    )
    summary = {
        "pretrain.test_top1": 0.5 + seed / 100,
        "pretrain.chance": 1 / 64,
        "pretrain.export_path": str(path / "feature_extractor.pt"),
        "probe.linear_probe.test_top1": 0.6 + seed / 100,
        "probe.linear_probe.random_init.test_top1": 0.5,
        "run.wall_seconds": 12.5,
    }
    if probe_file:  # as the linear probe writes it: its heads' HeadResult.as_dict()
        heads = {
            variant: [
                HeadResult("conv5", lr, 0.0, val_top1=0.4 + i / 20 - shift, test_top1=0.39 + i / 20)
                for i, lr in enumerate(LRS)
            ]
            for variant, shift in (("pretrained", 0.0), ("random_init", 0.1))
        }
        write_json(
            path / "probe_linear_probe.json",
            {"selected_on": "val", "reported_on": "test"}
            | {variant: [h.as_dict() for h in rows] for variant, rows in heads.items()},
        )
    (path / "summary.json").write_text(json.dumps(summary))
    config = {"name": "demo", "seed": seed, "pretrain": {"epochs": epochs, "batch_size": 64}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    return path


def make_sweep(path: Path) -> Path:
    path.mkdir(parents=True)
    rng = random.Random(0)
    trials = []
    for i in range(8):
        lr = 10 ** rng.uniform(-4, -1)
        params = {"evaluate": {"0": {"lr": lr}}, "pretrain.batch_size": rng.choice([32, 64])}
        params["optimizer"] = rng.choice(["sgd", "adam"])
        trials.append({"params": params, "metric": 0.5 + 0.01 * i, "state": "finished"})
    trials.append({"params": {"pretrain.batch_size": 32}, "metric": None, "state": "failed"})
    (path / "trials.jsonl").write_text("\n".join(json.dumps(t) for t in trials) + "\n")
    (path / "sweep.yaml").write_text(
        yaml.safe_dump({"sweep": {"metric": {"name": "probe.val_top1", "goal": "maximize"}}})
    )
    return path


def assert_real_png(path: Path) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
        assert width >= 300 and height >= 200
        colours = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colours is None or len(colours) > 10  # something was drawn


def image_links(report: Path) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report.read_text())


def test_single_run_report(tmp_path):
    run = make_run(tmp_path / "runs" / "demo-1", seed=1)
    result = build_report([run], tmp_path / "out")
    names = sorted(p.name for p in result.figures)
    assert names == [
        "curves_pretrain.png",
        "curves_probe_linear_probe.png",
        "probe_layers_linear_probe.png",
        "probe_lr_linear_probe.png",
    ]
    for figure in result.figures:
        assert_real_png(figure)
    assert sorted(image_links(result.report)) == names
    text = result.report.read_text()
    assert "| pretrain.test_top1 | 0.51 |" in text
    assert "batch_size: 64" in text  # the resolved config
    assert "pretrain.images_per_second" not in text  # not a summary key, not plotted


def test_two_runs_side_by_side(tmp_path):
    a = make_run(tmp_path / "a" / "demo", seed=1)
    b = make_run(tmp_path / "b" / "demo", seed=2, probe_file=False, epochs=2)
    out = tmp_path / "compare"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    report = out / "report.md"
    text = report.read_text()
    assert "| key | a/demo | b/demo |" in text  # labels made unique by the parent folder
    assert "| pretrain.test_top1 | 0.51 | 0.52 |" in text
    assert "## Config differences" in text and "| pretrain.epochs | 3 | 2 |" in text
    links = image_links(report)
    assert {"curves_pretrain.png", "probe_lr_linear_probe.png"} <= set(links)
    for link in links:
        assert_real_png(out / link)


def test_grid_is_read_from_the_probe_file_the_linear_probe_writes(tmp_path):
    run = make_run(tmp_path / "f", seed=1)
    points = load_grid(run)
    assert {(p.variant, p.layer) for p in points} == {(PRETRAINED, "conv5"), (RANDOM_INIT, "conv5")}
    assert len(points) == 8 and all(p.evaluator == "linear_probe" for p in points)
    best = max((p for p in points if p.variant == PRETRAINED), key=lambda p: p.lr)
    assert best.metrics["val_top1"] == pytest.approx(0.55) and not best.diverged


@pytest.mark.parametrize(
    "content",
    ['{"lr_grid": [{"lr": 0.1, "val_top1": 0.5}]}', '{"pretrained": [{"val_top1": 0.5}]}', "{"],
)
def test_a_probe_file_in_another_shape_is_one_line_not_a_guess(tmp_path, capsys, content):
    """The report reads what jigsawkit writes; it used to search any JSON for lists of
    ``{"lr": ..}`` objects and guess pretrained or random-init from the keys' names."""
    run = make_run(tmp_path / "run", seed=1, probe_file=False)
    (run / "probe_linear_probe.json").write_text(content)
    code = main(["report", str(run), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    if content.startswith('{"lr_grid"'):  # no pretrained/random_init heads: nothing to draw
        assert code == 0 and not list((tmp_path / "out").glob("probe_lr_*.png"))
    else:
        assert code == 2 and len(err.splitlines()) == 1 and "probe_linear_probe.json" in err


def test_a_sweep_without_its_sweep_yaml_is_one_line(tmp_path, capsys):
    sweep = make_sweep(tmp_path / "sweep")
    (sweep / "sweep.yaml").unlink()
    assert main(["report", str(sweep), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "sweep.yaml" in err


def test_sweep_report(tmp_path):
    sweep = make_sweep(tmp_path / "sweeps" / "probe")
    result = build_report([sweep], tmp_path / "out")
    assert [p.name for p in result.figures] == ["sweep_probe.png"]
    assert_real_png(result.figures[0])
    text = result.report.read_text()
    assert "9 trials (1 failed, 8 finished)" in text
    assert "metric `probe.val_top1`, goal maximize" in text
    best_row = next(line for line in text.splitlines() if line.startswith("| 1 |"))
    assert "| 0.57 |" in best_row  # the best trial first
    assert "evaluate.0.lr" in text  # nested params flattened


def test_default_out_is_inside_a_single_run(tmp_path, capsys):
    run = make_run(tmp_path / "run", seed=3)
    assert main(["report", str(run)]) == 0
    assert (run / "report" / "report.md").is_file()
    assert str(run / "report" / "report.md") in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["missing", "empty", "file"])
def test_bad_directories_give_one_line_and_exit_2(tmp_path, capsys, kind):
    target = tmp_path / "target"
    if kind == "empty":
        target.mkdir()
    elif kind == "file":
        target.write_text("x")
    good = make_run(tmp_path / "good", seed=0)
    assert main(["report", str(good), str(target), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(target) in err
    assert not (tmp_path / "out").exists()


def test_series_helpers():
    assert stage_of("pretrain/val_top1") == ("pretrain", "val_top1")
    assert stage_of("probe/knn/random_init/test_top1") == ("probe/knn", "random_init/test_top1")
    assert split_restarts([(0, 1), (1, 2), (0, 3)]) == [[(0, 1), (1, 2)], [(0, 3)]]
    rows = [
        {"step": 5, "pretrain/train_loss": 1.0, "pretrain/epoch": 0.5},
        {"step": 10, "pretrain/val_top1": "nan", "pretrain/epoch": 1.0},
        {"step": 0, "probe/knn/val_top1": 0.5},
    ]
    series = stage_series(rows)
    assert series["pretrain"][0] == "epoch"
    assert series["pretrain"][1]["train_loss"] == [(0.5, 1.0)]
    assert series["probe/knn"] == ("step", {"val_top1": [(0.0, 0.5)]})


def _heads(layer: str, variant_shift: float) -> list[dict]:
    """Heads over four lrs; test top-1 values are all distinct from val ones."""
    heads = []
    for i, lr in enumerate(LRS):
        val = 0.4 + 0.1 * i - abs(i - 2) * 0.15 - variant_shift
        heads.append(
            {
                "layer": layer,
                "lr": lr,
                "weight_decay": 0.0,
                "val_top1": round(val, 4),
                "val_loss": 1.0 - val,
                "test_top1": round(val - 0.0123, 4),
                "diverged": False,
            }
        )
    # A diverged head that "wins" val must never be shown as the selected one.
    heads.append({**heads[0], "lr": 1.0, "val_top1": 0.99, "test_top1": 0.977, "diverged": True})
    return heads


def record_figures(monkeypatch) -> list:
    """Every matplotlib figure the report makes from now on, in order."""
    import jigsawkit.tracking.report as report

    figures = []
    make_figure = report._figure

    def recording_figure(width, height):
        figures.append(make_figure(width, height))
        return figures[-1]

    monkeypatch.setattr(report, "_figure", recording_figure)
    return figures


def test_lr_plot_shows_val_for_every_head_and_test_only_for_the_selected(tmp_path, monkeypatch):
    import jigsawkit.tracking.report as report

    run = make_run(tmp_path / "run", seed=1)
    grid = {
        "pretrained": _heads("conv", 0.0) + _heads("fc", 0.05),
        "random_init": _heads("conv", 0.1) + _heads("fc", 0.12),
    }
    (run / "probe_linear_probe.json").write_text(json.dumps(grid))
    figures = record_figures(monkeypatch)
    runs = [report.load_run(run, "run")]
    assert report.plot_probe_grid(runs, "linear_probe", tmp_path) is not None
    (figure,) = figures
    plotted = {
        round(float(y), 4)
        for axis in figure.axes
        for line in axis.get_lines()
        for y in line.get_ydata()
    }
    heads = [h for rows in grid.values() for h in rows]
    selected = set()
    for rows in grid.values():
        for layer in ("conv", "fc"):
            usable = [h for h in rows if h["layer"] == layer and not h["diverged"]]
            selected.add(max(usable, key=lambda h: h["val_top1"])["test_top1"])
    assert len(selected) == 4
    tests = {h["test_top1"] for h in heads}
    assert plotted & tests == selected  # test top-1 of the selected heads only
    assert {h["val_top1"] for h in heads} <= plotted  # every head's val top-1
    titles = [axis.get_title() for axis in figure.axes if axis.get_visible()]
    assert titles == [
        "linear_probe, layer conv: val top-1 per learning rate",
        "linear_probe, layer fc: val top-1 per learning rate",
    ]


def test_report_has_the_per_layer_table_and_bar_chart(tmp_path):
    from test_trackers import layer_summary

    run = make_run(tmp_path / "run", seed=1)
    summary = json.loads((run / "summary.json").read_text())
    summary = {k: v for k, v in summary.items() if not k.startswith("probe.")}
    summary.update(layer_summary("linear_probe"))
    summary.update(layer_summary("knn"))
    (run / "summary.json").write_text(json.dumps(summary))
    result = build_report([run], tmp_path / "out")
    names = {p.name for p in result.figures}
    assert {"probe_layers_linear_probe.png", "probe_layers_knn.png"} <= names
    for figure in result.figures:
        assert_real_png(figure)
    text = result.report.read_text()
    assert "## Probe: test top-1 per layer, pretrained vs random init" in text
    assert "| conv1 | 55.0 [52.0, 58.0] | 50.0 | +5.0 [+3.0, +7.0] |" in text
    assert "| conv2 | 71.0 [68.0, 74.0] | 50.0 | +21.0 [+19.0, +23.0] |" in text
    best = "| **best on val: conv2** | 71.0 [68.0, 74.0] | 50.0 | +21.0 [+19.0, +23.0] |"
    assert best in text
    assert "layer.conv1" not in text  # per-layer keys are in the tables, not the key list


def test_summary_table_prefers_num_classes_to_its_deprecated_alias(tmp_path):
    new = make_run(tmp_path / "new", seed=1)
    old = make_run(tmp_path / "old", seed=2)
    for run, values in (
        (new, {"pretrain.num_classes": 4, "pretrain.num_permutations": 4}),
        (old, {"pretrain.num_permutations": 64}),
    ):
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, **values}))
    text = build_report([new], tmp_path / "one").report.read_text()
    assert "| pretrain.num_classes | 4 |" in text and "num_permutations" not in text
    text = build_report([old], tmp_path / "two").report.read_text()
    assert "| pretrain.num_permutations | 64 |" in text


def test_report_draws_the_knn_monitor_next_to_the_pretext_accuracy(tmp_path, monkeypatch):
    import jigsawkit.tracking.report as report

    run = make_run(tmp_path / "run", seed=1)
    rows = report.read_jsonl(run / "metrics.jsonl")
    monitor = {1.0: 0.31, 2.0: 0.35, 3.0: 0.42}
    for row in rows:
        if "pretrain/val_top1" in row:
            row["pretrain/monitor_knn_top1"] = monitor[row["pretrain/epoch"]]
            row["pretrain/monitor_seconds"] = 0.5
    # A resumed run logs the epoch it was killed in again: the last value counts.
    rows.append({**rows[-1], "step": 99, "pretrain/epoch": 3.0, "pretrain/monitor_knn_top1": 0.4})
    monitor[3.0] = 0.4
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    figures = record_figures(monkeypatch)
    result = build_report([run], tmp_path / "out")
    path = tmp_path / "out" / "pretrain_monitor.png"
    assert path in result.figures and path.name in image_links(result.report)
    assert_real_png(path)
    (figure,) = [f for f in figures if f.axes[0].get_title().startswith("pretraining:")]
    series = {line.get_label(): list(zip(*line.get_data())) for line in figure.axes[0].get_lines()}
    assert series["kNN monitor top-1"] == sorted(monitor.items())
    pretext = series["pretext val top-1"]
    assert [x for x, _ in pretext] == [1.0, 2.0, 3.0]
    assert [y for _, y in pretext] == pytest.approx([0.2, 0.4, 0.6])


def test_report_without_the_monitor_has_no_monitor_figure(tmp_path):
    run = make_run(tmp_path / "run", seed=1)
    result = build_report([run], tmp_path / "out")
    assert "pretrain_monitor.png" not in [p.name for p in result.figures]
    assert "kNN monitor" not in result.report.read_text()
