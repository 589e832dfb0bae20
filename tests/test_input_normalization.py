"""Pretext and probe see the same input normalisation: tasks declare it, the exported
feature extractor records it, the probes (and their random-init baseline) feed it by
default, an explicit ``normalize`` wins, and the summary says which was used."""

from __future__ import annotations

import pytest
import torch
from fakes import FakeDataset, TinyBackbone, make_context, with_defaults

from jigsawkit.contracts import check_pretext
from jigsawkit.errors import CheckpointError, UserError
from jigsawkit.evaluators.base import probe_normalization
from jigsawkit.evaluators.knn import KNN
from jigsawkit.evaluators.linear_probe import LinearProbe
from jigsawkit.normalization import NORMALIZATIONS, normalize_images
from jigsawkit.pretext.base import PretextTask
from jigsawkit.registry import registry
from jigsawkit.training.export import export_feature_extractor

SPY = "input_spy_test"
SMALL_CFN = {"channels": [8, 16], "kernel_sizes": [3, 3], "tile_fc": 16, "input_size": 12}


class InputSpy(TinyBackbone):
    """The fake backbone, remembering the smallest value and the mean of what it was fed."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen: list[tuple[float, float]] = []

    def probe_features(self, x, layers):
        self.seen.append((float(x.min()), float(x.mean())))
        return super().probe_features(x, layers)


def unnormalised(spy: InputSpy) -> bool:
    """Every batch in [0, 1] with a clearly positive mean: raw images, not standardised."""
    return bool(spy.seen) and all(low >= 0.0 and mean > 0.1 for low, mean in spy.seen)


def standardised(spy: InputSpy) -> bool:
    """Every batch centred (per-image standardisation) with negative values."""
    return bool(spy.seen) and all(low < 0.0 and abs(mean) < 1e-3 for low, mean in spy.seen)


def spy_context(tmp_path, normalization, made):
    def make_random():
        torch.manual_seed(123)
        made.append(InputSpy())
        return made[-1]

    torch.manual_seed(0)
    ctx = make_context(tmp_path, InputSpy(), FakeDataset())
    ctx.make_random_backbone = make_random
    ctx.input_normalization = normalization
    return ctx


# --- tasks declare it -----------------------------------------------------------------


def test_jigsaw_declares_per_image_and_none_without_tile_normalisation():
    backbone = registry("backbone").build("cfn", **SMALL_CFN)
    small = {"grid": 2, "crop": 24, "tile": 12, "permutations": {"count": 2}, "head_hidden": 8}
    task = registry("pretext").build("jigsaw", backbone=backbone, **small)
    assert task.input_normalization == "per_image"
    plain = registry("pretext").build("jigsaw", backbone=backbone, normalize_tiles=False, **small)
    assert plain.input_normalization == "none"


def test_jigsaw_tiles_are_normalised_as_per_image_normalises_a_whole_image():
    backbone = registry("backbone").build("cfn", **SMALL_CFN)
    task = registry("pretext").build(
        "jigsaw", backbone=backbone, grid=2, crop=24, tile=12, permutations={"count": 2}
    )
    images = torch.rand(3, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    tiles, targets = task.prepare(images, torch.Generator().manual_seed(1), train=False)
    order = task.permutations[targets]
    for b in range(3):
        for slot in range(4):
            row, col = divmod(int(order[b, slot]), 2)
            raw = images[b, :, row * 12 : row * 12 + 12, col * 12 : col * 12 + 12]
            expected = normalize_images(raw[None], "per_image")[0]
            assert torch.allclose(tiles[b, slot], expected, atol=1e-5)


def test_an_undeclared_task_is_none_and_a_bad_declaration_is_one_clear_error():
    class Undeclared(PretextTask):
        pass

    class Wrong(PretextTask):
        input_normalization = "zscore"

    backbone = registry("backbone").build("cfn", **SMALL_CFN)
    assert check_pretext(Undeclared(backbone, 12, 2), "pretext 'u'").input_normalization is None
    with pytest.raises(UserError, match=r"pretext 'w': input_normalization is 'zscore'; expected"):
        check_pretext(Wrong(backbone, 12, 2), "pretext 'w'")
    # Undeclared: the task leaves its inputs alone.
    x = torch.rand(2, 3, 12, 12)
    assert torch.equal(Undeclared(backbone, 12, 2).normalize(x), x)


# --- the export records it ------------------------------------------------------------


@pytest.fixture
def spy_registered(clean_registries):
    from jigsawkit.registry import register_backbone

    @register_backbone(SPY, schema={"properties": {"width": {"type": "integer", "default": 8}}})
    def spy(width: int = 8):
        """The input-recording fake backbone."""
        return InputSpy(width=width)

    yield


def export_spy(tmp_path, normalization):
    torch.manual_seed(0)
    path = tmp_path / f"extractor-{normalization}.pt"
    metadata = {"backbone": {"name": SPY, "params": {"width": 8}}}
    if normalization != "absent":
        metadata["input_normalization"] = normalization
    export_feature_extractor(InputSpy(), path, metadata)
    return path


@pytest.mark.parametrize("normalization", [*NORMALIZATIONS, None])
def test_export_records_the_pretraining_normalisation(tmp_path, spy_registered, normalization):
    import jigsawkit

    loaded = jigsawkit.load_feature_extractor(export_spy(tmp_path, normalization))
    assert loaded.metadata["input_normalization"] == normalization


def test_export_without_it_reads_as_unknown_and_a_bad_value_is_refused(tmp_path, spy_registered):
    import jigsawkit

    loaded = jigsawkit.load_feature_extractor(export_spy(tmp_path, "absent"))
    assert loaded.metadata["input_normalization"] is None
    with pytest.raises(ValueError, match="input_normalization"):
        export_spy(tmp_path, "zscore")
    path = export_spy(tmp_path, "none")
    payload = torch.load(path, weights_only=True)
    payload["input_normalization"] = "zscore"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"damaged .* input_normalization is 'zscore'"):
        jigsawkit.load_feature_extractor(path)


# --- the probes feed it ---------------------------------------------------------------


@pytest.mark.parametrize("evaluator", [LinearProbe, KNN])
def test_probe_of_a_none_extractor_feeds_unnormalised_images_to_both_backbones(tmp_path, evaluator):
    made: list[InputSpy] = []
    ctx = spy_context(tmp_path, "none", made)
    params = {"data": {"name": "fake"}, "compare_random_init": True}
    if evaluator is LinearProbe:
        params["epochs"] = 2
    results = with_defaults(evaluator, **params).evaluate(ctx)
    assert unnormalised(ctx.backbone) and unnormalised(made[0])
    assert results["normalize"] == "none" and results["normalize_from"] == "pretraining"


def test_probe_of_an_exported_none_extractor_reads_it_from_the_file(tmp_path, spy_registered):
    ctx = spy_context(tmp_path, "per_image", [])  # the run's own backbone: not probed here
    probe = with_defaults(
        LinearProbe, data={"name": "fake"}, epochs=2, checkpoint=str(export_spy(tmp_path, "none"))
    )
    results = probe.evaluate(ctx)
    assert results["normalize"] == "none" and results["normalize_from"] == "pretraining"
    assert not ctx.backbone.seen  # the file's backbone was probed, with raw images


def test_explicit_normalize_wins_for_both_backbones(tmp_path):
    made: list[InputSpy] = []
    ctx = spy_context(tmp_path, "none", made)
    results = with_defaults(
        LinearProbe, data={"name": "fake"}, epochs=2, normalize="per_image"
    ).evaluate(ctx)
    assert standardised(ctx.backbone) and standardised(made[0])
    assert results["normalize"] == "per_image" and results["normalize_from"] == "config"


def test_augmented_probe_feeds_the_resolved_normalisation(tmp_path):
    made: list[InputSpy] = []
    ctx = spy_context(tmp_path, "none", made)
    with_defaults(LinearProbe, data={"name": "fake"}, epochs=1, augment=True).evaluate(ctx)
    assert unnormalised(ctx.backbone) and unnormalised(made[0])


def test_unknown_pretraining_normalisation_falls_back_to_per_image_and_warns(capsys):
    assert probe_normalization(None, None, "evaluate.knn") == ("per_image", "fallback")
    assert "evaluate.knn: the feature extractor does not record" in capsys.readouterr().err
    assert probe_normalization(None, "imagenet", "x") == ("imagenet", "pretraining")
    assert probe_normalization("none", "imagenet", "x") == ("none", "config")
    assert capsys.readouterr().err == ""


def test_schema_default_is_null_meaning_as_pretrained():
    for name in ("linear_probe", "knn"):
        prop = registry("evaluator").get(name).params_schema["properties"]["normalize"]
        assert prop["default"] is None and set(prop["enum"]) == {None, *NORMALIZATIONS}


# --- the run: declared -> exported -> probed; undeclared warns; bad is refused early ----

PLUGIN = '''
from jigsawkit import register_pretext

DECLARED = {declared!r}


@register_pretext("whole_image_{tag}")
def whole_image(backbone, **params):
    """Predict whether an image was flipped left-right (a tiny test task)."""
    import torch
    from torch import nn

    from jigsawkit.pretext.base import PretextTask

    class Flip(PretextTask):
        if DECLARED != "undeclared":
            input_normalization = DECLARED

        def __init__(self, backbone):
            super().__init__(backbone, 16, 2)
            self.head = nn.Linear(backbone.out_dim, 2)

        def prepare(self, images, generator, train):
            where = generator.device if generator is not None else images.device
            targets = torch.randint(0, 2, (images.shape[0],), generator=generator, device=where)
            flipped = torch.where(targets[:, None, None, None] == 1, images.flip(-1), images)
            return self.normalize(flipped), targets

        def forward(self, inputs):
            return self.head(self.backbone(inputs))

    return Flip(backbone)
'''

EXPERIMENT = """
name: norm_{tag}
seed: 0
device: cpu
plugins: [plugins]
trackers: []
backbone: {{name: cfn, channels: [4, 8], kernel_sizes: [3, 3], tile_fc: 8, input_size: 16}}
pretext: {{name: whole_image_{tag}}}
pretrain:
  data: {{name: synthetic, train_size: 40, val_size: 20, test_size: 20, image_size: 16}}
  epochs: 1
  batch_size: 20
  precision: fp32
evaluate:
  - name: knn
    data: {{name: synthetic, seed: 1, train_size: 40, val_size: 20, test_size: 20, image_size: 16}}
    k: 3
"""


def run_tiny(tmp_path, declared, tag):
    from jigsawkit.config.experiment import load_experiment
    from jigsawkit.runner import run_experiment

    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / f"task_{tag}.py").write_text(PLUGIN.format(declared=declared, tag=tag))
    path = tmp_path / "experiment.yaml"
    path.write_text(EXPERIMENT.format(tag=tag))
    config = load_experiment(path)
    config["cache_dir"] = str(tmp_path / "cache")
    return run_experiment(config, out=tmp_path / "run", progress=False)


def test_a_run_exports_and_probes_with_the_declared_normalisation(tmp_path, clean_registries):
    import jigsawkit

    result = run_tiny(tmp_path, "none", "declared")
    summary = result.summary
    assert summary["pretrain.input_normalization"] == "none"
    assert summary["probe.knn.normalize"] == "none"
    assert summary["probe.knn.normalize_from"] == "pretraining"
    exported = jigsawkit.load_feature_extractor(summary["pretrain.export_path"])
    assert exported.metadata["input_normalization"] == "none"


def test_an_undeclared_task_warns_and_probes_per_image(tmp_path, clean_registries, capsys):
    import jigsawkit

    summary = run_tiny(tmp_path, "undeclared", "undeclared").summary
    err = capsys.readouterr().err
    assert "pretext 'whole_image_undeclared' declares no input_normalization" in err
    assert summary["pretrain.input_normalization"] == "unknown"
    assert summary["probe.knn.normalize"] == "per_image"
    assert summary["probe.knn.normalize_from"] == "fallback"
    exported = jigsawkit.load_feature_extractor(summary["pretrain.export_path"])
    assert exported.metadata["input_normalization"] is None


def test_a_bad_declaration_is_refused_before_the_run_directory(tmp_path, clean_registries):
    with pytest.raises(UserError, match="whole_image_bad'?: input_normalization is 'zscore'"):
        run_tiny(tmp_path, "zscore", "bad")
    assert not (tmp_path / "run").exists()
