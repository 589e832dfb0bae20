"""Reading W&B offline run files back: a real run written by the tracker, and hand-made
files covering multi-chunk records, block padding, damage and truncation."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from wandb_records import iter_records, read_config, read_history, read_summary

from jigsawkit.registry import registry
from jigsawkit.tracking.wandb_runfile import (
    BLOCK_SIZE,
    FIRST,
    FULL,
    LAST,
    MIDDLE,
    RunFileError,
    find_run_file,
    is_complete,
    iter_chunks,
)

HEADER = b":W&B" + struct.pack("<HB", 0xBEE1, 0)


def write_log(records: list[bytes]) -> bytes:
    """A LevelDB-log file as wandb writes it (an independent writer for the tests)."""
    out = bytearray(HEADER)
    for record in records:
        data, first = record, True
        while True:
            left = BLOCK_SIZE - len(out) % BLOCK_SIZE
            if left < 7:
                out += b"\x00" * left
                left = BLOCK_SIZE
            take = min(len(data), left - 7)
            last = take == len(data)
            kind = FULL if first and last else FIRST if first else LAST if last else MIDDLE
            chunk = data[:take]
            crc = zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF
            out += struct.pack("<IHB", crc, len(chunk), kind) + chunk
            data, first = data[take:], False
            if last:
                break
    return bytes(out)


@pytest.fixture
def offline_run(tmp_path, monkeypatch) -> tuple[Path, dict, list[dict]]:
    """A real offline run written by the tracker; returns (run file, config, logged rows)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    run_dir = tmp_path / "run"
    config = {
        "name": "demo",
        "seed": 3,
        "pretrain": {"epochs": 2, "optimizer": {"name": "adam", "lr": 0.001}},
        # big enough that the run record spans several 32 KiB blocks (FIRST/MIDDLE/LAST)
        "description": "x" * 70_000,
    }
    tracker = registry("tracker").build("wandb", run_dir=run_dir, experiment="demo", mode="offline")
    tracker.start(config)
    logged = []
    for step in range(40):
        row = {"pretrain/train_loss": 2.0 / (step + 1), "pretrain/lr": 1e-3 * 0.9**step}
        if step % 10 == 9:
            row["pretrain/val_top1"] = step / 100 + 1 / 3
        tracker.log(row, step)
        logged.append(({**row}, step))
    for epoch in range(3):  # the probe's epochs restart at 0
        row = {"probe/linear_probe/val_top1": 0.5 + epoch / 7}
        tracker.log(row, epoch)
        logged.append((row, epoch))
    tracker.summary({"pretrain.test_top1": 0.625, "probe.linear_probe.test_top1": 0.7})
    tracker.finish(True)
    return find_run_file(tracker.sync_dir), config, logged


def test_history_read_back_exactly(offline_run):
    path, _, logged = offline_run
    history = read_history(path)
    pretrain = {row["pretrain/step"]: row for row in history if "pretrain/step" in row}
    probe = [row for row in history if "probe/linear_probe/step" in row]
    for row, step in logged:
        if "probe/linear_probe/val_top1" in row:
            continue
        for key, value in row.items():
            assert pretrain[step][key] == value  # exact float round trip
    assert [r["probe/linear_probe/val_top1"] for r in probe] == [0.5, 0.5 + 1 / 7, 0.5 + 2 / 7]
    assert [r["probe/linear_probe/step"] for r in probe] == [0, 1, 2]
    steps = [row["_step"] for row in history]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # W&B's step increases


def test_summary_and_config_read_back(offline_run):
    path, config, _ = offline_run
    summary = read_summary(path)
    assert summary["pretrain.test_top1"] == 0.625
    assert summary["probe.linear_probe.test_top1"] == 0.7
    assert summary["pretrain/train_loss"] == 2.0 / 40
    assert read_config(path) == config
    assert "_wandb" in read_config(path, include_internal=True)


def test_run_folder_and_record_kinds(offline_run):
    path, _, _ = offline_run
    assert find_run_file(path.parent) == path
    kinds = [record.WhichOneof("record_type") for record in iter_records(path)]
    assert kinds[0] == "header" and "run" in kinds and kinds[-1] == "exit"
    assert path.stat().st_size > 2 * BLOCK_SIZE


def test_multi_chunk_records_and_block_padding():
    # sizes chosen so that records straddle blocks and one leaves < 7 bytes in a block
    first_len = BLOCK_SIZE - len(HEADER) - 7 - 3
    records = [b"a" * first_len, b"b" * 100_000, b"c", b"", b"d" * 5000]
    data = write_log(records)
    assert data[BLOCK_SIZE - 3 : BLOCK_SIZE] == b"\x00\x00\x00"  # the padding happened
    assert list(iter_chunks(data)) == records


def test_damage_is_reported_and_a_truncated_tail_ignored():
    data = write_log([b"hello", b"world" * 10])
    damaged = bytearray(data)
    damaged[len(HEADER) + 7] ^= 0xFF
    with pytest.raises(RunFileError, match="checksum"):
        list(iter_chunks(bytes(damaged)))
    assert list(iter_chunks(bytes(damaged), verify=False))[1] == b"world" * 10
    assert list(iter_chunks(data[:-10])) == [b"hello"]  # an interrupted run's last record
    with pytest.raises(RunFileError, match="not a W&B run file"):
        list(iter_chunks(b"PK\x03\x04" + data[4:]))


def test_complete_only_with_an_exit_record(offline_run, tmp_path):
    path, _, _ = offline_run
    assert is_complete(path)  # the tracker waited for wandb-core to write it all
    partial = tmp_path / "run-partial.wandb"
    partial.write_bytes(path.read_bytes()[: BLOCK_SIZE + 100])
    assert not is_complete(partial)
    partial.write_bytes(HEADER)
    assert not is_complete(partial)


def test_missing_run_file(tmp_path):
    with pytest.raises(RunFileError, match="no W&B run file"):
        find_run_file(tmp_path)
