"""The speed measures of the quickstart path keep the numbers: channels-last CFN activations,
BatchNorm folded into convolutions for frozen extraction, and glibc's malloc keeping freed
tensor memory (``jigsawkit.allocator``). Speed itself is measured by
``bench/quickstart_speed.py``, not here."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from jigsawkit.backbones.cfn import CFN
from jigsawkit.evaluators.features import fold_batchnorm

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _trained_cfn(seed: int = 0) -> CFN:
    """A small CFN whose BatchNorm statistics and affine parameters are not the defaults."""
    torch.manual_seed(seed)
    model = CFN(channels=(8, 16), kernel_sizes=(3, 3), batch_norm=True, tile_fc=12, input_size=16)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(6, 3, 16, 16) * 2 + 0.5)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    return model.eval()


def test_cfn_runs_its_convolutions_channels_last_with_the_same_outputs():
    model = _trained_cfn()
    seen = []
    model.stages[0][0].register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        fast = model.probe_features(x, ["conv1", "conv", "fc"])
        model.channels_last = False
        plain = model.probe_features(x, ["conv1", "conv", "fc"])
    assert seen == [True, False]
    for name in ("conv1", "conv", "fc"):
        torch.testing.assert_close(fast[name], plain[name], rtol=1e-5, atol=1e-5)


def test_fold_batchnorm_keeps_outputs_and_leaves_the_backbone_alone():
    model = _trained_cfn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    assert folded is not model
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        want = model.probe_features(x, ["conv1", "conv", "fc"])
        got = folded.probe_features(x, ["conv1", "conv", "fc"])
    for name in ("conv1", "conv", "fc"):
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_fold_batchnorm_only_in_eval_mode_and_only_conv_bn_pairs():
    model = _trained_cfn().train()
    assert fold_batchnorm(model) is model  # training BatchNorm uses batch statistics
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    assert fold_batchnorm(plain) is plain  # BatchNorm not right after the conv
    no_stats = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False))
    assert fold_batchnorm(no_stats.eval()) is no_stats.eval()


def test_retain_freed_memory_stops_page_faults_of_large_activations():
    """A CPU forward pass whose activations are over glibc's mmap threshold (75 MB here)
    faults them in afresh at every call by default; with the setting, the heap keeps them."""
    script = textwrap.dedent(
        """
        import resource, sys, torch
        from jigsawkit.allocator import retain_freed_memory
        torch.set_num_threads(1)
        if sys.argv[1] == "retain":
            assert retain_freed_memory()
        conv = torch.nn.Conv2d(3, 32, 3, padding=1)
        x = torch.randn(64, 3, 96, 96)
        def faults():
            return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        with torch.no_grad():
            torch.relu(conv(x))  # warm up: the heap grows once
            start = faults()
            for _ in range(3):
                torch.relu(conv(x))
        print((faults() - start) // 3)
        """
    )
    per_call = {}
    for mode in ("default", "retain"):
        out = subprocess.run(
            [sys.executable, "-c", script, mode], capture_output=True, text=True, check=True
        )
        per_call[mode] = int(out.stdout.split()[-1])
    assert per_call["default"] > 10_000, per_call  # 75 MB in 4 KiB pages is 18k faults
    # Usually 0; the kernel itself (reclaim on a busy machine) may add a few thousand.
    assert per_call["retain"] * 5 < per_call["default"], per_call


def test_retain_freed_memory_leaves_a_user_tuned_malloc_alone():
    script = "from jigsawkit.allocator import retain_freed_memory; print(retain_freed_memory())"
    env = {**os.environ, "MALLOC_MMAP_MAX_": "65536"}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.strip() == "False"
