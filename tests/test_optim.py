"""Optimizers (parameter groups), per-step schedules and their resume, and the schema fragments."""

from __future__ import annotations

import copy
import io
import math

import jsonschema
import pytest
import torch
from torch import nn

from jigsawkit.errors import UserError
from jigsawkit.training.optim import build_optimizer, build_schedule, lr_factor
from jigsawkit.training.schemas import OPTIMIZER_SCHEMA, SCHEDULE_SCHEMA
from jigsawkit.training.seeding import make_generator, resolve_device, resolve_precision


def small_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LayerNorm(4), nn.Linear(4, 2)
    )


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_no_weight_decay_on_norm_and_bias_parameters(name):
    model = small_model()
    optimizer = build_optimizer(model, {"name": name, "lr": 0.1, "weight_decay": 0.01})
    decay = {id(p) for g in optimizer.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    no_decay = {
        id(p) for g in optimizer.param_groups if g["weight_decay"] == 0 for p in g["params"]
    }
    named = dict(model.named_parameters())
    assert decay == {id(named["0.weight"]), id(named["4.weight"])}
    expected_no_decay = {"0.bias", "1.weight", "1.bias", "3.weight", "3.bias", "4.bias"}
    assert no_decay == {id(named[n]) for n in expected_no_decay}
    assert all(g["lr"] == 0.1 for g in optimizer.param_groups)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [0.01, 0.0]


def test_optimizer_kinds_and_defaults():
    model = small_model()
    sgd = build_optimizer(model, {})
    assert isinstance(sgd, torch.optim.SGD)
    group = sgd.param_groups[0]
    assert (group["lr"], group["momentum"], group["nesterov"]) == (0.01, 0.9, False)
    assert group["weight_decay"] == 5e-4
    adamw = build_optimizer(model, {"name": "adamw", "lr": 1e-3, "betas": [0.8, 0.99]})
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.param_groups[0]["betas"] == (0.8, 0.99)
    assert isinstance(build_optimizer(model.parameters(), {"name": "adam"}), torch.optim.Adam)


def test_frozen_parameters_are_left_out():
    model = small_model()
    model[0].requires_grad_(False)
    optimizer = build_optimizer(model, {})
    kept = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert id(model[0].weight) not in kept and id(model[4].weight) in kept
    with pytest.raises(UserError, match="no trainable parameters"):
        build_optimizer(model.requires_grad_(False), {})


def test_warmup_then_cosine_lr_at_given_steps():
    # 10 steps per epoch, 4 epochs, half an epoch of warm-up: steps 0..4 warm up.
    cfg = {"name": "cosine", "warmup_epochs": 0.5, "min_lr": 0.1}
    factor = lr_factor(cfg, steps_per_epoch=10, epochs=4)
    assert [factor(s) for s in range(5)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert factor(5) == pytest.approx(1.0)
    # Halfway through the 35 cosine steps the factor is halfway between 1 and min_lr.
    assert factor(5 + 17.5) == pytest.approx(0.55)
    assert factor(40) == pytest.approx(0.1)
    values = [factor(s) for s in range(5, 41)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_schedule_drives_the_optimizer_per_step():
    model = small_model()
    optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.5})
    schedule = build_schedule(optimizer, {"name": "cosine", "warmup_epochs": 1}, 4, 3)
    seen = []
    for _ in range(12):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert seen[:4] == pytest.approx([0.125, 0.25, 0.375, 0.5])
    assert seen[4] == pytest.approx(0.5)
    assert seen[-1] == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 7 / 8)))


def test_step_and_constant_schedules():
    step = lr_factor({"name": "step", "step_epochs": [1, 2.5], "gamma": 0.5}, 10, 4)
    assert [step(s) for s in (0, 9, 10, 24, 25, 39)] == [1, 1, 0.5, 0.5, 0.25, 0.25]
    constant = lr_factor({"name": "constant", "warmup_epochs": 0.2}, 10, 2)
    assert [constant(s) for s in (0, 1, 2, 19)] == [0.5, 1.0, 1.0, 1.0]


def test_unknown_names_are_user_errors():
    with pytest.raises(UserError, match="pretrain.optimizer.name.*lamb"):
        build_optimizer(small_model(), {"name": "lamb"})
    with pytest.raises(UserError, match="pretrain.schedule.name.*poly"):
        lr_factor({"name": "poly"}, 10, 1)


def test_schedule_state_resumes_exactly():
    cfg = {"name": "cosine", "warmup_epochs": 0.5}

    def fresh():
        model = small_model()
        optimizer = build_optimizer(model, {"name": "sgd", "lr": 0.3})
        return optimizer, build_schedule(optimizer, cfg, 6, 3)

    optimizer, schedule = fresh()
    for _ in range(7):
        optimizer.step()
        schedule.step()
    buffer = io.BytesIO()
    # A resume restores both: the optimizer's groups carry the current lr.
    torch.save({"opt": optimizer.state_dict(), "sched": schedule.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    expected = []
    for _ in range(11):
        expected.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()

    optimizer2, schedule2 = fresh()
    optimizer2.load_state_dict(state["opt"])
    schedule2.load_state_dict(state["sched"])
    resumed = []
    for _ in range(11):
        resumed.append(optimizer2.param_groups[0]["lr"])
        optimizer2.step()
        schedule2.step()
    assert resumed == expected


def test_schema_fragments_validate_and_carry_defaults():
    for schema in (OPTIMIZER_SCHEMA, SCHEDULE_SCHEMA):
        jsonschema.Draft202012Validator.check_schema(schema)
        assert schema["additionalProperties"] is False
        assert all("default" in prop for prop in schema["properties"].values())
    validator = jsonschema.Draft202012Validator(copy.deepcopy(OPTIMIZER_SCHEMA))
    assert not list(validator.iter_errors({"name": "adamw", "lr": 0.001, "betas": [0.9, 0.95]}))
    assert list(validator.iter_errors({"name": "sgd", "momentun": 0.9}))
    assert list(validator.iter_errors({"name": "rmsprop"}))
    schedule = jsonschema.Draft202012Validator(copy.deepcopy(SCHEDULE_SCHEMA))
    assert not list(schedule.iter_errors({"name": "step", "step_epochs": [3, 6], "gamma": 0.5}))
    assert list(schedule.iter_errors({"name": "cosine", "warmup": 1}))


def test_device_and_precision_resolution(monkeypatch):
    assert resolve_device("cpu").type == "cpu"
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    # auto on a CPU: bf16 only where it is native (emulated bf16 is slower than fp32)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: 1 / 0, raising=False)
    assert resolve_precision("auto", "cpu") == "fp32"  # a failing probe means "no"
    with pytest.raises(UserError, match="precision"):
        resolve_precision("fp16", "cpu")
    for name in ("tpu", "cuda:x", "cuda:"):
        with pytest.raises(UserError, match=f"unknown device '{name}'"):
            resolve_device(name)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    with pytest.raises(UserError, match="'cuda:1'.*not available"):
        resolve_device("cuda:1")


def test_generators_are_independent_and_seeded():
    a = torch.rand(3, generator=make_generator(5, "cpu"))
    b = torch.rand(3, generator=make_generator(5, "cpu"))
    torch.manual_seed(99)
    assert torch.equal(a, b)
    assert not torch.equal(a, torch.rand(3, generator=make_generator(6, "cpu")))
