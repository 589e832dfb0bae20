"""The public Python API: what a notebook imports from ``jigsawkit`` (timm-style)."""

from __future__ import annotations

from pathlib import Path

import pytest
from doc_examples import run_doc_example

import jigsawkit
from jigsawkit import UserError

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "architecture.md"


def test_the_api_names_are_exported() -> None:
    for name in (
        "load_experiment",
        "run_experiment",
        "create_backbone",
        "create_pretext",
        "list_components",
        "load_feature_extractor",
    ):
        assert name in jigsawkit.__all__ and callable(getattr(jigsawkit, name))


def test_list_components_by_kind_pattern_and_every_kind() -> None:
    backbones = jigsawkit.list_components("backbone")
    assert {"cfn", "cfn_alexnet", "timm"} <= set(backbones) and backbones == sorted(backbones)
    assert jigsawkit.list_components("backbone", "cfn*") == ["cfn", "cfn_alexnet"]
    everything = jigsawkit.list_components()
    assert "pretext:jigsaw" in everything and "evaluator:knn" in everything
    assert jigsawkit.list_components(pattern="*knn*") == ["evaluator:knn"]
    with pytest.raises(UserError, match="unknown kind 'backbones'"):
        jigsawkit.list_components("backbones")


def test_create_backbone_and_pretext() -> None:
    import torch

    trunk = jigsawkit.create_backbone(
        "cfn", channels=[8, 16], kernel_sizes=[3, 3], tile_fc=32, input_size=24
    )
    assert trunk(torch.rand(2, 3, 24, 24)).shape == (2, 32)
    task = jigsawkit.create_pretext(
        "jigsaw", trunk, grid=2, crop=48, tile=24, permutations={"count": 24}, head_hidden=64
    )
    assert task.num_classes == 24
    with pytest.raises(UserError, match="did you mean 'cfn'"):
        jigsawkit.create_backbone("cnf")


@pytest.mark.slow
def test_the_docs_example_runs_as_written(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    run_doc_example(DOC, "## Python API", "/tmp/jigsawkit-api-example", monkeypatch)
    out = capsys.readouterr().out
    assert "['cfn', 'cfn_alexnet', 'timm']" in out
    assert "torch.Size([4, 24])" in out and "torch.Size([2, 256])" in out
