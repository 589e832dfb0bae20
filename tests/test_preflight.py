"""Before a run does any work it checks what its evaluators will need at the end: their
datasets on disk (and labelled) and an exported checkpoint they name."""

from __future__ import annotations

import pytest

from jigsawkit.errors import CheckpointError, DataMissingError, UserError
from jigsawkit.evaluators.base import check_evaluator_inputs
from jigsawkit.runner import build_component


def build(data: dict):
    return build_component("dataset", data)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"name": "image_folder"}, "does not exist"),
        ({"name": "cifar10"}, "missing or corrupted"),
        ({"name": "tiny_imagenet"}, "tiny-imagenet-200 not found"),
    ],
)
def test_missing_evaluator_data_names_the_key(tmp_path, data, expected):
    data = {**data, "root": str(tmp_path / "nowhere")}
    with pytest.raises(DataMissingError) as info:
        check_evaluator_inputs({"name": "knn", "data": data}, build)
    message = str(info.value)
    assert message.startswith(f"evaluate.knn.data: {data['name']}") and expected in message


def test_unlabelled_evaluator_data_is_refused(tmp_path):
    (tmp_path / "images").mkdir()
    data = {"name": "image_folder", "root": str(tmp_path / "images"), "labelled": False}
    with pytest.raises(UserError, match="evaluate.linear_probe.data: .*has no labels"):
        check_evaluator_inputs({"name": "linear_probe", "data": data}, build)


def test_present_data_and_checkpoint_pass(tmp_path):
    folder = tmp_path / "images" / "cat"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8)).save(folder / "a.png")
    checkpoint = tmp_path / "extractor.pt"
    checkpoint.write_bytes(b"")
    selection = {
        "name": "knn",
        "data": {"name": "image_folder", "root": str(tmp_path / "images")},
        "checkpoint": str(checkpoint),
    }
    check_evaluator_inputs(selection, build)  # no error
    selection["checkpoint"] = str(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="evaluate.knn.checkpoint: .*missing.pt"):
        check_evaluator_inputs(selection, build)
