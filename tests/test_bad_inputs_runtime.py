"""A corpus of bad inputs found at run time (issue 14, classes 3, 8 and 9), table-driven.

Every case goes through the real CLI (``jigsawkit.cli.main``) and must end the same way:
exit code 2, exactly one line on stderr (``error: ...``) naming the file, option, key or
plugin at fault, no traceback, and nothing written: no run directory, no sweep folder.

- class 3: checks that used to run after the run directory existed (evaluator checkpoints,
  probe dataset layouts, probe layers, trackers that cannot start, sweep storage drivers);
- class 8: plugins whose code fails (factory, ``check()``, schema, half-failing files,
  missing plugin folders);
- class 9: pipes and unusual files (streams read once, symlink loops, FIFOs, unreadable
  images).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from jigsawkit.cli import main

pytestmark = pytest.mark.usefixtures("clean_registries")

# A tiny experiment: cheap to build, so every case fails (or would run) in seconds.
EXPERIMENT = """\
name: t
seed: 0
device: cpu
trackers: [console]
backbone: {name: cfn, channels: [8, 16, 16], kernel_sizes: [3, 3, 3], tile_fc: 32, input_size: 24}
pretext:
  name: jigsaw
  grid: 3
  crop: 96
  tile: 24
  permutations: {count: 4, selection: maximal, seed: 0}
pretrain:
  data: {name: synthetic, train_size: 48, val_size: 16, test_size: 16}
  epochs: 1
  batch_size: 16
  max_steps_per_epoch: 1
  precision: fp32
evaluate:
  - name: knn
    data: {name: synthetic, seed: 1, train_size: 32, val_size: 16, test_size: 16}
"""


@dataclass
class Case:
    """``setup(tmp)`` returns the CLI arguments; the error line must contain ``expected``."""

    id: str
    setup: Callable[[Path], list[str]]
    expected: tuple[str, ...]


def experiment(tmp: Path, text: str = EXPERIMENT, name: str = "e.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def run_args(tmp: Path, *sets: str, extra: tuple[str, ...] = ()) -> list[str]:
    args = ["run", str(experiment(tmp)), "--out", str(tmp / "out"), "--no-progress", *extra]
    for item in sets:
        args += ["--set", item]
    return args


def evaluate_with(**fields: str) -> str:
    inner = ", ".join(f"{k}: {v}" for k, v in fields.items())
    data = "{name: synthetic, seed: 1, train_size: 32, val_size: 16, test_size: 16}"
    return f"evaluate=[{{name: knn, data: {data}, {inner}}}]"


# -- class 3: evaluator checkpoints --------------------------------------------------------


def text_checkpoint(tmp: Path) -> list[str]:
    (tmp / "x.pt").write_text("not a checkpoint\n")
    return run_args(tmp, evaluate_with(checkpoint=str(tmp / "x.pt")))


def empty_checkpoint(tmp: Path) -> list[str]:
    (tmp / "x.pt").write_bytes(b"")
    return run_args(tmp, evaluate_with(checkpoint=str(tmp / "x.pt")))


def folder_checkpoint(tmp: Path) -> list[str]:
    (tmp / "x.pt").mkdir()
    return run_args(tmp, evaluate_with(checkpoint=str(tmp / "x.pt")))


def training_checkpoint(tmp: Path) -> list[str]:
    from jigsawkit.training.checkpoint import save_checkpoint

    save_checkpoint(tmp / "x.pt", {"epoch": 1})
    return run_args(tmp, evaluate_with(checkpoint=str(tmp / "x.pt")))


def pickled_object_checkpoint(tmp: Path) -> list[str]:
    import argparse

    import torch

    torch.save({"state": argparse.Namespace(a=1)}, tmp / "x.pt")
    return run_args(tmp, evaluate_with(checkpoint=str(tmp / "x.pt")))


def _export(tmp: Path, edit: Callable[[dict], None]) -> Path:
    import torch

    from jigsawkit.registry import registry
    from jigsawkit.training.export import export_feature_extractor

    params = {"channels": [8, 16, 16], "kernel_sizes": [3, 3, 3], "tile_fc": 32, "input_size": 24}
    model = registry("backbone").build("cfn", **params)
    path = export_feature_extractor(
        model, tmp / "x.pt", {"backbone": {"name": "cfn", "params": params}}
    )
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    return path


def unknown_backbone_checkpoint(tmp: Path) -> list[str]:
    path = _export(tmp, lambda p: p["backbone"].update(name="no_such_backbone"))
    return run_args(tmp, evaluate_with(checkpoint=str(path)))


def misfit_weights_checkpoint(tmp: Path) -> list[str]:
    import torch

    def shrink(payload: dict) -> None:
        key = next(iter(payload["state_dict"]))
        payload["state_dict"][key] = torch.zeros(1)

    path = _export(tmp, shrink)
    return run_args(tmp, evaluate_with(checkpoint=str(path)))


def layer_missing_in_checkpoint(tmp: Path) -> list[str]:
    path = _export(tmp, lambda p: None)
    return run_args(tmp, evaluate_with(checkpoint=str(path), layers="[conv5]"))


def top_level_text_checkpoint(tmp: Path) -> list[str]:
    (tmp / "x.pt").write_text("nope")
    return run_args(tmp, "pretrain=null", f"checkpoint={tmp / 'x.pt'}")


# -- class 3: probe datasets, layers, trackers ---------------------------------------------


def tiny_imagenet(tmp: Path, *, wnids: bool = True, annotations: str | None = "ok") -> Path:
    root = tmp / "ti"
    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "train" / "n01" / "images").mkdir(parents=True)
    if wnids:
        (folder / "wnids.txt").write_text("n01\n")
    if annotations == "ok":
        (folder / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01\t0\t0\t1\t1\n")
    elif annotations is not None:
        (folder / "val" / "val_annotations.txt").write_text(annotations)
    return root


def tiny_imagenet_case(**layout) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        root = tiny_imagenet(tmp, **layout)
        return run_args(tmp, f"evaluate[0].data={{name: tiny_imagenet, root: {root}}}")

    return setup


def tiny_imagenet_missing_class_folder(tmp: Path) -> list[str]:
    root = tiny_imagenet(tmp)
    (root / "tiny-imagenet-200" / "wnids.txt").write_text("n01\nn02\n")
    return run_args(tmp, f"evaluate[0].data={{name: tiny_imagenet, root: {root}}}")


def image_folder_probe(tmp: Path, labelled: bool = True, images: bool = True) -> list[str]:
    root = tmp / "images"
    (root / "cat").mkdir(parents=True)
    if images:
        from PIL import Image

        Image.new("RGB", (8, 8)).save(root / "cat" / "a.png")
    data = f"{{name: image_folder, root: {root}, labelled: {str(labelled).lower()}}}"
    return run_args(tmp, f"evaluate[0].data={data}")


def wandb_online(tmp: Path, second: bool = False) -> list[str]:
    trackers = (
        "[console, {name: wandb, mode: online}]" if second else "[{name: wandb, mode: online}]"
    )
    return run_args(tmp, f"trackers={trackers}")


# -- class 3: sweep storage ------------------------------------------------------------------


def sweep_storage(url: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        experiment(tmp)
        sweep = tmp / "s.yaml"
        sweep.write_text(
            "experiment: e.yaml\n"
            "sweep:\n"
            "  method: random\n"
            "  metric: {name: probe.knn.val_top1, goal: maximize}\n"
            "  run_cap: 1\n"
            "  parameters:\n"
            "    evaluate[0].k: {values: [1, 2]}\n"
            f"strategy: {{name: optuna, storage: '{url}'}}\n"
        )
        return ["sweep", str(sweep), "--out", str(tmp / "out"), "--no-progress"]

    return setup


# -- class 8: plugins ----------------------------------------------------------------------

FACTORY_RAISES = {
    "backbone": ("backbone=boom_backbone", "register_backbone"),
    "pretext": ("pretext=boom_pretext", "register_pretext"),
    "dataset": ("pretrain.data=boom_dataset", "register_dataset"),
    "evaluator": ("evaluate=[boom_evaluator]", "register_evaluator"),
    "tracker": ("trackers=[boom_tracker]", "register_tracker"),
}


def plugin_folder(tmp: Path, source: str, name: str = "buggy.py") -> Path:
    folder = tmp / "plugs"
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(source)
    return folder


def factory_raises(kind: str) -> Callable[[Path], list[str]]:
    override, decorator = FACTORY_RAISES[kind]

    def setup(tmp: Path) -> list[str]:
        folder = plugin_folder(
            tmp,
            f"from jigsawkit import {decorator}\n\n"
            f"@{decorator}('boom_{kind}')\n"
            "def boom(*args, **params):\n"
            "    '''Fails when built.'''\n"
            "    return {}['missing']\n",
        )
        return run_args(tmp, override, extra=("--plugins", str(folder)))

    return setup


CHECKED = """\
from jigsawkit import register_evaluator


def check(params):
    {body}


@register_evaluator("checked", schema={{"properties": {{"k": {{"type": "integer", "default": 1}}}}}}, check=check)
def checked(**params):
    '''An evaluator with a cross-field check.'''
"""


def check_case(body: str, command: str = "validate") -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        folder = plugin_folder(tmp, CHECKED.format(body=body))
        if command == "validate":
            path = experiment(
                tmp,
                EXPERIMENT.replace("  - name: knn\n", "  - name: checked\n").replace(
                    "    data: {name: synthetic, seed: 1, train_size: 32, val_size: 16, test_size: 16}\n",
                    "",
                ),
            )
            return ["validate", str(path), "--plugins", str(folder)]
        return run_args(tmp, "evaluate=[checked]", extra=("--plugins", str(folder)))

    return setup


def bad_schema(schema: str) -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        folder = plugin_folder(
            tmp,
            "from jigsawkit import register_backbone\n\n"
            f"@register_backbone('bad_schema', schema={schema})\n"
            "def bad(**params):\n    '''Has a broken schema.'''\n",
        )
        return ["validate", str(experiment(tmp)), "--plugins", str(folder)]

    return setup


def plugin_source(source: str, command: str = "validate") -> Callable[[Path], list[str]]:
    def setup(tmp: Path) -> list[str]:
        folder = plugin_folder(tmp, source)
        if command == "run":
            return run_args(tmp, extra=("--plugins", str(folder)))
        return ["validate", str(experiment(tmp)), "--plugins", str(folder)]

    return setup


HALF_REGISTERED = """\
from jigsawkit import register_backbone, register_evaluator

@register_evaluator("half_first")
def first(**params):
    '''Registered before the file fails.'''

raise RuntimeError("the file fails half-way")
"""


def missing_plugins_key(tmp: Path) -> list[str]:
    path = experiment(tmp, EXPERIMENT + "plugins: [no_such_folder]\n")
    return ["run", str(path), "--out", str(tmp / "out")]


def missing_cli_plugins(tmp: Path) -> list[str]:
    return run_args(tmp, extra=("--plugins", str(tmp / "nowhere")))


def plugins_folder_is_a_file(tmp: Path) -> list[str]:
    (tmp / "plugfile").write_text("")
    return run_args(tmp, extra=("--plugins", str(tmp / "plugfile")))


def dataset_method_raises(tmp: Path) -> list[str]:
    folder = plugin_folder(
        tmp,
        "from jigsawkit import register_dataset\n\n"
        "class Broken:\n"
        "    has_labels, num_classes, class_names = True, 2, None\n"
        "    def load(self, split, image_size, cache_dir):\n"
        "        raise AssertionError('never reached')\n"
        "    def ensure_present(self):\n"
        "        raise OSError('disk on fire')\n\n"
        "@register_dataset('broken_data')\n"
        "def broken(**params):\n    '''Fails in ensure_present.'''\n    return Broken()\n",
    )
    return run_args(tmp, "evaluate[0].data=broken_data", extra=("--plugins", str(folder)))


# -- class 9: pipes and unusual files -------------------------------------------------------


def pipe_of(text: str) -> str:
    """A ``/dev/fd/N`` path that yields ``text`` once, like ``<(cat f)``."""
    read, write = os.pipe()

    def feed() -> None:
        with os.fdopen(write, "w") as handle:
            handle.write(text)

    threading.Thread(target=feed, daemon=True).start()
    return f"/dev/fd/{read}"


def validate_pipe(text: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["validate", pipe_of(text)]


def run_pipe(text: str) -> Callable[[Path], list[str]]:
    return lambda tmp: ["run", pipe_of(text), "--out", str(tmp / "out")]


def looped_folder(tmp: Path, readable: bool) -> Path:
    root = tmp / "imgs"
    (root / "cat").mkdir(parents=True)
    (root / "cat" / "loop").symlink_to("..")
    (root / "cat" / "self").symlink_to(".")
    (root / "cat" / "bad.png").write_text("not an image")
    (root / "cat" / "dangling.jpg").symlink_to("nowhere.jpg")
    os.mkfifo(root / "cat" / "fifo.png")
    if readable:
        from PIL import Image

        Image.new("RGB", (8, 8)).save(root / "cat" / "ok.png")
    return root


def loop_pretrain(tmp: Path) -> list[str]:
    root = looped_folder(tmp, readable=False)
    return run_args(tmp, f"pretrain.data={{name: image_folder, root: {root}, labelled: false}}")


def loop_probe_no_images(tmp: Path) -> list[str]:
    root = tmp / "imgs"
    (root / "cat" / "deep").mkdir(parents=True)
    (root / "cat" / "deep" / "up").symlink_to("../..")
    (root / "dog").symlink_to("cat")
    return run_args(tmp, f"evaluate[0].data={{name: image_folder, root: {root}}}")


def root_is_fifo(tmp: Path) -> list[str]:
    os.mkfifo(tmp / "fifo")
    return run_args(tmp, f"pretrain.data={{name: image_folder, root: {tmp / 'fifo'}}}")


CASES = [
    # class 3: evaluator checkpoints
    Case("ckpt-text", text_checkpoint, ("evaluate.knn.checkpoint", "not a readable torch file")),
    Case("ckpt-empty", empty_checkpoint, ("evaluate.knn.checkpoint", "x.pt")),
    Case("ckpt-folder", folder_checkpoint, ("evaluate.knn.checkpoint", "x.pt")),
    Case("ckpt-training", training_checkpoint, ("evaluate.knn.checkpoint", "training checkpoint")),
    Case("ckpt-pickle", pickled_object_checkpoint, ("evaluate.knn.checkpoint", "refused to load")),
    Case(
        "ckpt-unknown-backbone",
        unknown_backbone_checkpoint,
        ("evaluate.knn.checkpoint", "no_such_backbone"),
    ),
    Case("ckpt-misfit", misfit_weights_checkpoint, ("evaluate.knn.checkpoint", "do not fit")),
    Case("ckpt-layer", layer_missing_in_checkpoint, ("evaluate.knn.layers", "'conv5'")),
    Case("ckpt-top-level", top_level_text_checkpoint, ("x.pt", "not a readable torch file")),
    # class 3: probe datasets and layers
    Case(
        "ti-no-annotations",
        tiny_imagenet_case(annotations=None),
        ("evaluate.knn.data", "val_annotations.txt is missing"),
    ),
    Case(
        "ti-no-wnids",
        tiny_imagenet_case(wnids=False),
        ("evaluate.knn.data", "wnids.txt is missing"),
    ),
    Case(
        "ti-bad-annotation",
        tiny_imagenet_case(annotations="garbage line\n"),
        ("val_annotations.txt:1", "garbage line"),
    ),
    Case(
        "ti-unknown-wnid",
        tiny_imagenet_case(annotations="a.JPEG\tn99\n"),
        ("val_annotations.txt:1", "n99"),
    ),
    Case("ti-no-class-folder", tiny_imagenet_missing_class_folder, ("evaluate.knn.data", "n02")),
    Case(
        "layer-unknown",
        lambda t: run_args(t, "evaluate[0].layers=[nope]"),
        ("evaluate.knn.layers", "'nope'"),
    ),
    Case(
        "layer-unknown-2",
        lambda t: run_args(t, "evaluate[0].layers=[conv, fc, x]"),
        ("evaluate.knn.layers", "'x'"),
    ),
    Case(
        "probe-unlabelled",
        lambda t: image_folder_probe(t, labelled=False),
        ("evaluate.knn.data", "no labels"),
    ),
    Case(
        "probe-no-images",
        lambda t: image_folder_probe(t, images=False),
        ("evaluate.knn.data", "no images"),
    ),
    Case(
        "probe-cifar-missing",
        lambda t: run_args(t, f"evaluate[0].data={{name: cifar10, root: {t / 'c'}}}"),
        ("evaluate.knn.data", "cifar10"),
    ),
    # class 3: trackers
    Case("wandb-online-no-key", wandb_online, ("wandb mode 'online'", "API key")),
    Case(
        "wandb-online-second",
        lambda t: wandb_online(t, second=True),
        ("wandb mode 'online'", "API key"),
    ),
    # class 3: sweep storage
    Case(
        "storage-mysql", sweep_storage("mysql://u@localhost/db"), ("storage", "mysql://", "MySQLdb")
    ),
    Case(
        "storage-psycopg2",
        sweep_storage("postgresql+psycopg2://u@localhost/db"),
        ("storage", "psycopg2"),
    ),
    Case(
        "storage-unknown-db",
        sweep_storage("nosuchdb://u@localhost/db"),
        ("storage", "nosuchdb"),
    ),
    Case("storage-not-a-url", sweep_storage("just words"), ("storage", "just words")),
    # class 8: plugin factories
    *[
        Case(
            f"factory-{kind}",
            factory_raises(kind),
            ("buggy.py", f"{kind} 'boom_{kind}' factory", "KeyError"),
        )
        for kind in FACTORY_RAISES
    ],
    # class 8: plugin checks
    Case(
        "check-raises-validate",
        check_case("return params['nope']"),
        ("buggy.py", "evaluator 'checked' check()", "KeyError"),
    ),
    Case(
        "check-raises-run",
        check_case("return 1 / 0", command="run"),
        ("buggy.py", "check()", "ZeroDivisionError"),
    ),
    Case("check-returns-int", check_case("return 5"), ("buggy.py", "check() returned int")),
    Case(
        "check-returns-strings",
        check_case("return ['oops']"),
        ("buggy.py", "check() returned list"),
    ),
    # class 8: schemas checked against the metaschema
    Case(
        "schema-bad-type",
        bad_schema("{'properties': {'w': {'type': 'integr'}}}"),
        ("buggy.py", "'bad_schema'", "properties/w/type"),
    ),
    Case(
        "schema-properties-list",
        bad_schema("{'properties': ['w']}"),
        ("buggy.py", "'bad_schema'", "properties"),
    ),
    Case(
        "schema-minimum-string",
        bad_schema("{'properties': {'w': {'type': 'integer', 'minimum': 'zero'}}}"),
        ("buggy.py", "minimum"),
    ),
    Case("schema-required-string", bad_schema("{'required': 'w'}"), ("buggy.py", "required")),
    # class 8: plugin files and folders
    Case(
        "plugin-half-registered",
        plugin_source(HALF_REGISTERED),
        ("buggy.py", "failed to import", "half-way"),
    ),
    Case("plugin-syntax", plugin_source("def broken(:\n"), ("buggy.py", "SyntaxError")),
    Case(
        "plugin-import-error",
        plugin_source("import no_such_module_anywhere\n", "run"),
        ("buggy.py", "ModuleNotFoundError"),
    ),
    Case(
        "plugin-clash",
        plugin_source(
            "from jigsawkit import register_backbone\n\n@register_backbone('cfn')\ndef cfn():\n    '''Clash.'''\n"
        ),
        ("buggy.py", "registered twice"),
    ),
    Case(
        "plugins-key-missing",
        missing_plugins_key,
        ("e.yaml:", "plugins[0]", "no_such_folder", "does not exist"),
    ),
    Case(
        "plugins-cli-missing",
        missing_cli_plugins,
        ("--plugins", "nowhere", "no such plugin folder"),
    ),
    Case("plugins-cli-file", plugins_folder_is_a_file, ("--plugins", "plugfile", "not a folder")),
    Case(
        "plugin-method-raises",
        dataset_method_raises,
        ("buggy.py:", "ensure_present", "OSError: disk on fire"),
    ),
    # class 9: pipes and unusual files
    Case(
        "pipe-validate-bad-key",
        validate_pipe("name: t\nnot_a_key: 1\n"),
        ("/dev/fd/", ":2:1", "not_a_key"),
    ),
    Case("pipe-run-bad-value", run_pipe("name: t\nseed: many\n"), ("/dev/fd/", ":2:7", "seed")),
    Case("loop-pretrain-unreadable", loop_pretrain, ("pretrain.data", "empty")),
    Case("loop-probe-no-images", loop_probe_no_images, ("evaluate.knn.data", "no images")),
    Case("root-is-fifo", root_is_fifo, ("pretrain.data", "fifo")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_is_one_line_exit_2_and_nothing_written(
    case: Case, tmp_path, capsys, monkeypatch
):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "no-wandb-config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    args = case.setup(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    rc = main(args)
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert rc == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err + out
    for fragment in case.expected:
        assert fragment in lines[0], (fragment, lines[0])
    assert not (tmp_path / "out").exists(), "a run or sweep folder was left behind"
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written"


def test_the_base_experiment_is_valid(tmp_path, capsys):
    """The corpus breaks one thing at a time in an experiment that is otherwise fine."""
    assert main(["validate", str(experiment(tmp_path)), "--quiet"]) == 0, capsys.readouterr().err


def test_the_corpus_covers_forty_cases():
    assert len(CASES) >= 40
