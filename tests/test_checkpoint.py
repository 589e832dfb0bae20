"""Training checkpoints: atomic writes, weights-only loads, one-line errors."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from jigsawkit.errors import CheckpointError
from jigsawkit.training import checkpoint
from jigsawkit.training.checkpoint import load_checkpoint, save_checkpoint


class Custom:
    """A class a weights-only load must refuse to build."""

    value = 1


def sample_state(value: float = 1.0) -> dict:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    torch.nn.init.constant_(model.weight, value)
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "epoch": 2,
        "global_step": 40,
        "rng": {"torch_cpu": torch.get_rng_state()},
        "best_metrics": {"val_top1": 0.5},
        "config_hash": "abc",
    }


def test_round_trip_is_weights_only_loadable(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, sample_state())
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == checkpoint.CHECKPOINT_FORMAT
    loaded = load_checkpoint(path)
    assert loaded["epoch"] == 2 and loaded["global_step"] == 40
    assert torch.equal(loaded["model"]["weight"], torch.ones(2, 3))
    assert loaded["rng"]["torch_cpu"].dtype == torch.uint8
    assert loaded["optimizer"]["state"][0]["momentum_buffer"].shape == (2, 3)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the temp file's private 0600


def test_a_failing_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, sample_state(1.0))
    before = path.read_bytes()

    def half_written(obj, handle):
        handle.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", half_written)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, sample_state(2.0))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["weight"], torch.ones(2, 3))


def test_objects_a_weights_only_load_cannot_read_are_refused_before_writing(tmp_path):
    path = tmp_path / "last.pt"
    with pytest.raises(TypeError, match=r"state\.extra\.thing is a .*Custom"):
        save_checkpoint(path, {"extra": {"thing": Custom()}})
    assert not path.exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, not a checkpoint", b"\x80\x02random garbage" * 10],
    ids=["empty", "text", "garbage"],
)
def test_unreadable_files_give_one_line(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message and "not a readable" in message


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, sample_state())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt, truncated"):
        load_checkpoint(path)


def test_pickled_custom_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.CHECKPOINT_FORMAT, "payload": Custom()}, path)
    with pytest.raises(CheckpointError, match=r"refused to load: it holds a pickled .*Custom"):
        load_checkpoint(path)
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps({"payload": Custom()}))
    with pytest.raises(CheckpointError, match="not a readable"):
        load_checkpoint(plain)


def test_other_torch_files_are_not_checkpoints(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="not a jigsawkit training checkpoint"):
        load_checkpoint(path)
    exported = tmp_path / "fx.pt"
    torch.save({"format": "jigsawkit.feature_extractor/1"}, exported)
    with pytest.raises(CheckpointError, match="exported feature extractor"):
        load_checkpoint(exported)
