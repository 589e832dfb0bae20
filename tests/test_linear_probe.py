"""The linear probe: batched heads match torch optimizers, a grid equals its heads trained
alone, selection on val and report on test, the evaluator leaves the backbone untouched."""

from __future__ import annotations

import json
import math

import pytest
import torch
from fakes import (
    FakeDataset,
    Recorder,
    ThreeLayerBackbone,
    assert_identical,
    clusters,
    make_backbone,
    make_context,
    quadrant_split,
    snapshot,
    with_defaults,
)

from jigsawkit.errors import UserError
from jigsawkit.evaluators.linear_probe import (
    FeatureScaler,
    HeadConfig,
    HeadGrid,
    HeadResult,
    LinearProbe,
    select_best,
    train_linear_heads,
)
from jigsawkit.registry import registry

# Tiny tensors: a second thread only adds synchronisation (fixture in conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_batched_heads_match_torch_optimizers(optimizer, smoothing):
    x, y = clusters(64, seed=0, classes=3, dim=5, spread=2.0)
    config = HeadConfig(lrs=[0.05, 0.2], wds=[0.01], optimizer=optimizer, label_smoothing=smoothing)
    heads = HeadGrid(5, 3, config.grid(), config)
    inputs = FeatureScaler(x, standardize=False)(x)
    reference = torch.nn.Linear(5, 3)
    torch.nn.init.zeros_(reference.weight)
    torch.nn.init.zeros_(reference.bias)
    groups = [
        {"params": [reference.weight], "weight_decay": 0.01},
        {"params": [reference.bias], "weight_decay": 0.0},
    ]
    if optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=0.05, momentum=0.9)
    else:
        opt = torch.optim.AdamW(groups, lr=0.05)
    for step in range(15):
        scale = 0.5 * (1 + math.cos(math.pi * step / 15))
        for group in opt.param_groups:
            group["lr"] = 0.05 * scale
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(reference(x), y, label_smoothing=smoothing)
        loss.backward()
        opt.step()
        losses, _ = heads.step(inputs, y, scale)
        assert losses[0].item() / 64 == pytest.approx(loss.item(), abs=1e-5)
    weight, bias = heads.head_weights(0)
    assert torch.allclose(weight, reference.weight, atol=1e-6)
    assert torch.allclose(bias, reference.bias, atol=1e-6)


def _random_heads(dim: int, classes: int, heads: int, seed: int) -> HeadGrid:
    config = HeadConfig(lrs=[0.1] * heads)
    grid = HeadGrid(dim, classes, config.grid(), config)
    generator = torch.Generator().manual_seed(seed)
    grid.weight.copy_(torch.randn(grid.weight.shape, generator=generator))
    return grid


def test_head_metrics_match_torch_reference():
    heads = _random_heads(dim=6, classes=9, heads=3, seed=0)
    x, y = clusters(500, seed=1, classes=9, dim=6, spread=3.0)
    metrics = heads.evaluate(FeatureScaler(x, standardize=False)(x), y)
    for g in range(3):
        weight, bias = heads.head_weights(g)
        logits = torch.nn.functional.linear(x, weight, bias)
        top5 = logits.topk(5, dim=1).indices
        assert metrics["loss"][g].item() == pytest.approx(
            torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-5
        )
        assert metrics["top1"][g].item() == pytest.approx((logits.argmax(1) == y).float().mean())
        assert metrics["top5"][g].item() == pytest.approx(
            (top5 == y[:, None]).any(1).float().mean()
        )
    assert 0.1 < metrics["top1"].min() and metrics["top1"].max() < 0.9  # not a trivial case


def test_ties_and_nan_logits_never_count_as_correct():
    config = HeadConfig(lrs=[0.1, 0.1])
    heads = HeadGrid(4, 10, config.grid(), config)  # zero weights: all ten logits tie
    heads.weight[:, 1, 0] = math.nan  # head 1: NaN logits
    x, y = clusters(64, seed=0, classes=10, dim=4)
    inputs = FeatureScaler(x, standardize=False)(x)
    metrics = heads.evaluate(inputs, y)
    assert metrics["top1"].tolist() == [0.0, 0.0] and metrics["top5"].tolist() == [0.0, 0.0]
    assert heads.finite().tolist() == [True, False]
    _, correct = heads.step(inputs, y, lr_scale=1.0)  # a fresh head's first step
    assert correct.tolist() == [0, 0]


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_grid_in_one_pass_equals_each_head_alone(optimizer):
    train, val, test = clusters(300, 1, spread=2.5), clusters(100, 2, spread=2.5), clusters(100, 3)
    common = dict(epochs=4, batch_size=64, optimizer=optimizer, seed=7)
    grid = train_linear_heads(
        *train, *val, *test, lrs=[1e-3, 1e-2, 1e-1], wds=[0.0, 1e-2], **common
    )
    assert [(h.lr, h.weight_decay) for h in grid][:3] == [(1e-3, 0.0), (1e-3, 1e-2), (1e-2, 0.0)]
    assert len({round(h.val_loss, 6) for h in grid}) > 3  # the heads really differ
    for head in grid:
        (alone,) = train_linear_heads(
            *train, *val, *test, lrs=[head.lr], wds=[head.weight_decay], **common
        )
        for name, values in head.curves.items():
            assert values == pytest.approx(alone.curves[name], abs=1e-5), name
        assert head.test_loss == pytest.approx(alone.test_loss, abs=1e-5)
        assert head.test_top1 == pytest.approx(alone.test_top1, abs=1e-6)


def test_linearly_separable_features_reach_high_test_accuracy():
    results = train_linear_heads(
        *clusters(400, 1), *clusters(100, 2), *clusters(200, 3), lrs=[1e-2], epochs=10
    )
    best = select_best(results)
    assert best.test_top1 > 0.95 and best.val_top1 > 0.95
    assert best.test_top5 == 1.0
    assert len(best.curves["val_top1"]) == 10
    assert best.curves["train_loss"][-1] < best.curves["train_loss"][0]


def test_selection_uses_val_never_test():
    rows = [
        HeadResult("conv", 0.1, 0.0, val_top1=0.9, val_loss=0.5, test_top1=0.2),
        HeadResult("conv", 0.01, 0.0, val_top1=0.5, val_loss=0.9, test_top1=0.99),
        HeadResult("fc", 0.01, 0.0, val_top1=0.9, val_loss=0.4, test_top1=0.1),
        HeadResult("fc", 1.0, 0.0, val_top1=1.0, val_loss=0.1, test_top1=1.0, diverged=True),
    ]
    assert select_best(rows) is rows[2]  # best val top-1, ties by val loss


def test_val_and_test_disagree_and_the_val_winner_is_reported():
    # Heavy weight decay pins a head's weights at ~0: it predicts the majority class.
    # Val matches train, so the trained head wins val; test holds class-1 points labelled 0,
    # where only the "majority" head scores. The probe must still report the val winner.
    x, y = clusters(400, 1, classes=2, spread=0.5)
    y[:300] = 0
    x[:300] = clusters(300, 5, classes=1, spread=0.5)[0]
    xv, yv = clusters(200, 2, classes=2, spread=0.5)
    xt = clusters(100, 3, classes=2, spread=0.5)[0]
    xt = xt[clusters(100, 3, classes=2)[1] == 1]
    yt = torch.zeros(xt.shape[0], dtype=torch.long)
    heads = train_linear_heads(x, y, xv, yv, xt, yt, lrs=[0.05], wds=[0.0, 50.0], epochs=10)
    trained, pinned = heads
    assert trained.val_top1 > pinned.val_top1
    assert pinned.test_top1 > trained.test_top1
    assert select_best(heads) is trained


def test_a_diverging_head_is_flagged_and_never_selected():
    heads = train_linear_heads(
        *clusters(200, 1),
        *clusters(50, 2),
        lrs=[0.1, 1e3],
        wds=[0.0, 1e3],
        epochs=3,
        batch_size=32,
        optimizer="sgd",
    )
    flagged = {(h.lr, h.weight_decay) for h in heads if h.diverged}
    assert (1e3, 1e3) in flagged and (0.1, 0.0) not in flagged
    assert not select_best(heads).diverged


def test_probe_evaluator_end_to_end(tmp_path):
    backbone = make_backbone().train()
    before = snapshot(backbone)
    made, tracker = [], Recorder()
    ctx = make_context(tmp_path, backbone, FakeDataset(), made, tracker)
    probe = registry("evaluator").build(
        "linear_probe",
        data={"name": "synthetic"},
        epochs=5,
        lr=[1e-3, 1e-2],
        weight_decay=[0.0, 1e-4],
    )
    results = probe.evaluate(ctx)

    assert_identical(before, backbone)
    assert backbone.training and backbone.drop.training
    # Only the random-init twin's BatchNorm statistics were re-estimated.
    assert len(made) == 1 and not torch.allclose(made[0].bn.running_mean, torch.zeros(8))
    assert torch.equal(backbone.bn.running_mean, before["bn.running_mean"])

    for key in ("test_top1", "test_top5", "test_loss", "val_top1", "random_init.test_top1"):
        assert 0.0 <= results[key] <= (10.0 if "loss" in key else 1.0), key
    assert results["test_top1"] > 0.5  # bright quadrants are easy, even for a random conv
    assert results["best_layer"] == "conv" and results["best_lr"] in results["lr_grid"]
    assert results["lr_grid"][:2] == [1e-3, 1e-2] and len(results["lr_grid"]) <= 2 + 3
    assert results["num_classes"] == 4 and results["train_images"] == 240
    assert results["gain_top1"] == pytest.approx(
        results["test_top1"] - results["random_init.test_top1"]
    )
    for key in ("test_top1", "random_init.test_top1", "gain_top1"):
        low, high = results[f"{key}_ci95_low"], results[f"{key}_ci95_high"]
        assert low <= results[key] <= high and high - low < 0.5, key
    assert results["layer.conv.test_top1"] == results["test_top1"]
    assert results["layers"] == ["conv"]
    grid = json.loads((tmp_path / "run" / "probe_linear_probe.json").read_text())
    assert len(grid["pretrained"]) == results["heads"] >= 4 and len(grid["random_init"]) >= 4
    assert "test_correct" not in grid["pretrained"][0]
    chosen = max(grid["pretrained"], key=lambda h: (h["val_top1"], -h["val_loss"]))
    assert results["test_top1"] == chosen["test_top1"] and results["val_top1"] == chosen["val_top1"]
    assert len(chosen["curves"]["val_top1"]) == 5

    steps = [step for step, row in tracker.rows if "probe/linear_probe/val_top1" in row]
    assert steps == [1, 2, 3, 4, 5]
    assert any("probe/linear_probe/random_init/val_top1" in row for _, row in tracker.rows)

    # A second run on the same weights and data reads every feature from the cache.
    calls = backbone.calls
    probe.evaluate(make_context(tmp_path, backbone, FakeDataset(), made))
    assert backbone.calls == calls and made[-1].calls == 0


def test_probe_with_augmentation_keeps_the_backbone_frozen(tmp_path):
    backbone = make_backbone().train()
    before = snapshot(backbone)
    ctx = make_context(tmp_path, backbone, FakeDataset(sizes=(96, 32, 32)))
    probe = with_defaults(LinearProbe, data={"name": "fake"}, epochs=2, lr=1e-2, augment=True)
    results = probe.evaluate(ctx)
    assert_identical(before, backbone)
    assert 0.0 <= results["test_top1"] <= 1.0 and "random_init.test_top1" in results
    assert backbone.calls > 2 * 96 // 256 + 3  # augmented batches ran through the backbone


def test_probe_refuses_unlabelled_data_and_unknown_layers(tmp_path):
    class Unlabelled(FakeDataset):
        has_labels = False

    ctx = make_context(tmp_path, make_backbone(), Unlabelled())
    with pytest.raises(UserError, match=r"evaluate.linear_probe.data: .* has no labels"):
        with_defaults(LinearProbe, data={"name": "fake"}).evaluate(ctx)
    ctx = make_context(tmp_path, make_backbone(), FakeDataset())
    with pytest.raises(UserError, match="evaluate.linear_probe.layers: .*'pool'"):
        with_defaults(LinearProbe, data={"name": "fake"}, layers=["pool"]).evaluate(ctx)
    empty = FakeDataset(splits={"val": quadrant_split(0, 2)})
    with pytest.raises(UserError, match="the val split of dataset 'fake' is empty"):
        with_defaults(LinearProbe, data={"name": "fake"}).evaluate(
            make_context(tmp_path, make_backbone(), empty)
        )


def test_registered_schemas_carry_defaults():
    entry = registry("evaluator").get("linear_probe")
    props = entry.params_schema["properties"]
    assert props["lr"]["default"] == [1.0e-3, 3.0e-3, 1.0e-2, 3.0e-2, 1.0e-1]
    assert props["compare_random_init"]["default"] is True
    assert props["data"]["x-component"] == "dataset"
    assert registry("evaluator").get("knn").params_schema["properties"]["k"]["default"] == 20


def test_a_best_lr_at_the_grid_edge_is_warned_about(capsys):
    from jigsawkit.evaluators.linear_probe import _warn_at_grid_edge, grid_edge

    assert grid_edge(0.1, [0.001, 0.01, 0.1]) == "highest"
    assert grid_edge(0.001, [0.001, 0.01, 0.1]) == "lowest"
    assert grid_edge(0.01, [0.001, 0.01, 0.1]) is None
    assert grid_edge(0.01, [0.01]) is None  # a single lr has no edge to speak of
    _warn_at_grid_edge(0.1, [0.001, 0.01, 0.1], "evaluate.linear_probe")
    err = capsys.readouterr().err
    assert err.startswith("warning: evaluate.linear_probe: the selected lr 0.1 is the highest")
    assert "extend lr upwards" in err


def test_correct_per_sample_matches_the_metrics_and_the_tie_rule():
    heads = _random_heads(dim=6, classes=9, heads=3, seed=0)
    x, y = clusters(300, seed=1, classes=9, dim=6, spread=3.0)
    inputs = FeatureScaler(x, standardize=False)(x)
    metrics = heads.evaluate(inputs, y)
    for g in range(3):
        correct = heads.correct(inputs, y, g)
        assert correct.shape == (300,) and correct.dtype == torch.bool
        assert correct.float().mean().item() == pytest.approx(metrics["top1"][g].item())
    ties = HeadGrid(6, 9, HeadConfig(lrs=[0.1]).grid(), HeadConfig(lrs=[0.1]))
    assert not ties.correct(inputs, y, 0).any()  # all logits equal: a tie is wrong


def _probe(tmp_path, backbone=None, dataset=None, **params):
    backbone = backbone if backbone is not None else make_backbone(cls=ThreeLayerBackbone)
    ctx = make_context(tmp_path, backbone, dataset or FakeDataset())
    params = {"data": {"name": "fake"}, "epochs": 3, **params}
    return with_defaults(LinearProbe, **params).evaluate(
        ctx
    ), tmp_path / "run" / "probe_linear_probe.json"


def test_every_layer_gets_its_own_row_selected_on_val(tmp_path):
    layers = ["stem", "conv", "fc"]
    results, grid_file = _probe(tmp_path, layers=layers, lr=[1e-2, 1e-1], lr_extension_steps=0)
    heads = json.loads(grid_file.read_text())
    assert results["layers"] == layers
    for layer in layers:
        for tag, prefix in (("pretrained", ""), ("random_init", "random_init.")):
            rows = [h for h in heads[tag] if h["layer"] == layer]
            chosen = min(rows, key=lambda h: (-h["val_top1"], h["val_loss"]))
            key = f"layer.{layer}.{prefix}"
            assert results[f"{key}test_top1"] == chosen["test_top1"], key
            assert results[f"{key}val_top1"] == chosen["val_top1"], key
            low, high = results[f"{key}test_top1_ci95_low"], results[f"{key}test_top1_ci95_high"]
            assert low <= chosen["test_top1"] <= high
        gain = results[f"layer.{layer}.gain_top1"]
        assert gain == pytest.approx(
            results[f"layer.{layer}.test_top1"] - results[f"layer.{layer}.random_init.test_top1"]
        )
        assert results[f"layer.{layer}.gain_top1_ci95_low"] <= gain
        assert gain <= results[f"layer.{layer}.gain_top1_ci95_high"]
    # The best layer overall is the per-layer winner with the best val top-1.
    best = max(layers, key=lambda layer: results[f"layer.{layer}.val_top1"])
    assert results["best_layer"] == best
    assert results["test_top1"] == results[f"layer.{best}.test_top1"]
    assert results["lr_grid"] == [1e-2, 1e-1] and results["lr_grid_extended"] is False


def test_lr_grid_is_extended_beyond_an_edge_using_val_only(tmp_path):
    # Tiny learning rates: after 3 epochs the best head sits at the top of the grid.
    params = dict(layers=["conv"], lr=[1e-6, 1e-5], epochs=3)
    results, grid_file = _probe(tmp_path / "a", **params)
    grid = results["lr_grid"]
    assert results["lr_grid_extended"] is True
    assert grid == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2]  # 3 steps of the grid's own ratio
    assert results["random_init.lr_grid_extended"] is True
    heads = json.loads(grid_file.read_text())["pretrained"]
    assert sorted(h["lr"] for h in heads) == grid  # only the new heads were added

    # An extended head is the head the whole grid would have trained from the start.
    full, full_file = _probe(tmp_path / "b", **{**params, "lr": grid, "lr_extension_steps": 0})
    alone = {h["lr"]: h for h in json.loads(full_file.read_text())["pretrained"]}
    for head in heads:
        assert head["val_loss"] == pytest.approx(alone[head["lr"]]["val_loss"], abs=1e-5)
    assert full["best_lr"] == results["best_lr"]

    # Test labels play no part: shuffled ones give the same grid and the same selection.
    dataset = FakeDataset()
    shuffled = quadrant_split(80, 3)
    shuffled.labels = shuffled.labels[::-1].copy()
    dataset.splits["test"] = shuffled
    other, _ = _probe(tmp_path / "c", dataset=dataset, **params)
    assert other["lr_grid"] == grid and other["best_lr"] == results["best_lr"]
    assert other["random_init.lr_grid"] == results["random_init.lr_grid"]


def test_lrs_beyond_follow_the_grid_ratio_at_each_end():
    from jigsawkit.evaluators.linear_probe import lrs_beyond

    assert lrs_beyond(0.1, [0.01, 0.03, 0.1], 3) == [0.333, 1.11, 3.7]
    assert lrs_beyond(0.001, [0.001, 0.01, 0.1], 2) == [1e-4, 1e-5]
    assert lrs_beyond(0.01, [0.001, 0.01, 0.1], 3) == []
    assert lrs_beyond(0.01, [0.01], 3) == []  # a single lr is the user's choice
    assert lrs_beyond(0.1, [0.01, 0.1], 0) == []


def test_still_at_the_edge_after_the_last_extension_warns(tmp_path, capsys):
    results, _ = _probe(tmp_path, layers=["conv"], lr=[1e-7, 1e-6], lr_extension_steps=1)
    assert results["lr_grid"] == pytest.approx([1e-7, 1e-6, 1e-5])
    err = capsys.readouterr().err
    assert "the highest of the grid after 1 extension steps (lr_extension_steps)" in err


def test_augmented_training_inputs_are_standardised(tmp_path, monkeypatch):
    # A brightness/contrast "augmentation" moves the features far from the plain ones: a
    # scaler fit on plain features would leave the heads' training inputs off-centre.
    import jigsawkit.evaluators.linear_probe as linear_probe

    monkeypatch.setattr(linear_probe, "augment_batch", lambda x, generator=None: 0.3 * x + 0.6)
    seen = []
    step = HeadGrid.step

    def record(self, x, y, lr_scale):
        seen.append(x[:, : self.dim].clone())
        return step(self, x, y, lr_scale)

    monkeypatch.setattr(HeadGrid, "step", record)
    ctx = make_context(tmp_path, make_backbone(), FakeDataset(sizes=(96, 32, 32)))
    params = dict(data={"name": "fake"}, epochs=1, lr=1e-2, normalize="none", batch_size=32)
    with_defaults(LinearProbe, **params, augment=True, compare_random_init=False).evaluate(ctx)
    inputs = torch.cat(seen)  # one epoch: every training image once
    assert inputs.shape[0] == 96
    assert inputs.mean(0).abs().max() < 1e-4
    std = inputs.std(0, unbiased=False)
    live = std > 1e-3  # a ReLU unit dead on every augmented image stays at 0, unscaled
    assert live.sum() >= 8 and std[live].sub(1).abs().max() < 1e-3
