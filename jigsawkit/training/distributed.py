"""Data-parallel runs on PyTorch's own engine: torch.distributed, DDP and torchrun.

``torchrun --nproc_per_node=N -m jigsawkit run FILE`` starts N processes; torchrun sets
``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR``/``MASTER_PORT``. ``init_from_env``
turns those into a process group (NCCL for CUDA devices, each rank on ``cuda:LOCAL_RANK``;
gloo for CPUs) and a ``World`` that the rest of jigsawkit asks "am I rank 0?" and "sum this
over the ranks". Without those variables (or with ``WORLD_SIZE=1``) the ``World`` is a single
process and every helper here is a no-op, so single-process runs pay nothing.

Who does what: every rank trains on its share of each global batch (``pretrain.batch_size`` /
world size) and evaluates its share of val/test; metrics are all-reduced so every rank holds
the whole split's numbers. After pretraining every rank extracts its share of the probe
features into the feature cache (``jigsawkit.evaluators.across_ranks``); rank 0 trains the
heads. Rank 0 alone writes: the run directory, checkpoints, the export, metrics, the feature
cache, trackers, progress bars.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from jigsawkit.errors import UserError

# How long a collective waits for a missing rank before failing: a dead peer ends the job
# in bounded time instead of a silent hang (torchrun's agent also tears the group down).
DEFAULT_TIMEOUT_S = 300
TIMEOUT_ENV = "JIGSAWKIT_DIST_TIMEOUT_S"
# Test hook: rank 1 SIGKILLs itself after this many optimizer steps (tests of a dead rank).
KILL_RANK1_AFTER_ENV = "JIGSAWKIT_TEST_KILL_RANK1_AFTER_STEPS"


@dataclass(frozen=True)
class World:
    """This process's place in the job: ``rank`` of ``size`` (``local_rank`` on its node)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


SINGLE = World()
_current: World = SINGLE


def current() -> World:
    """The world this process belongs to (``SINGLE`` outside a torchrun job)."""
    return _current


def env_world() -> World:
    """The world torchrun's environment variables describe (``SINGLE`` when there are none)."""

    def number(name: str, default: int) -> int:
        text = os.environ.get(name)
        if text is None or text == "":
            return default
        try:
            return int(text)
        except ValueError:
            raise UserError(f"environment: {name}={text!r} is not an integer") from None

    size = number("WORLD_SIZE", 1)
    if size <= 1:
        return SINGLE
    return World(
        rank=number("RANK", 0),
        size=size,
        local_rank=number("LOCAL_RANK", 0),
        local_size=number("LOCAL_WORLD_SIZE", size),
    )


def check_global_batch(batch_size: int, world_size: int) -> None:
    """``pretrain.batch_size`` is the global batch: it must split evenly over the ranks."""
    if world_size > 1 and int(batch_size) % world_size:
        raise UserError(
            f"pretrain.batch_size: {batch_size} does not divide by the world size {world_size} "
            "(it is the global batch, split evenly over the ranks); use a multiple of "
            f"{world_size}"
        )


def init_from_env(device: torch.device) -> tuple[World, torch.device]:
    """Join the torchrun job this process belongs to, if any; return it and the rank's device.

    CUDA ranks use NCCL on ``cuda:LOCAL_RANK``; CPU ranks use gloo and share the cores
    (``torch`` threads = cores // ranks on the node, at least 1).
    """
    global _current
    world = env_world()
    if not world.distributed:
        return SINGLE, device
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(world.local_size, 1)))
        backend = "gloo"
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT_S)))
        kwargs: dict[str, Any] = {"backend": backend, "timeout": timeout}
        if backend == "nccl":
            kwargs["device_id"] = device
        dist.init_process_group(**kwargs)
    _current = world
    return world, device


# How long ``shutdown`` leaves the GIL to gloo's worker threads (see there).
_BACKEND_SETTLE_S = 0.2


def shutdown() -> None:
    """Leave the process group (a no-op outside a torchrun job).

    Then wait a moment with the GIL released. gloo's worker threads drop a finished
    collective (and the earlier ones a barrier keeps) only after the caller has been woken;
    dropping a tensor that has a Python object takes the GIL. A process that reaches
    interpreter shutdown first leaves such a thread waiting for a GIL it can no longer get:
    Python ends the thread with ``pthread_exit``, whose unwinding through the work's
    ``noexcept`` destructor calls ``std::terminate`` ("terminate called without an active
    exception", SIGABRT: the intermittent failure of the resume test, seen with gdb on a
    core dump). ``destroy_process_group`` does not join those threads, so the wait is what
    lets them finish while the interpreter is alive.
    """
    global _current
    if _current.distributed:
        import time

        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
        time.sleep(_BACKEND_SETTLE_S)
    _current = SINGLE


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place (and return it); a no-op for one process."""
    if _current.distributed:
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_object(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order (``[value]`` for one process)."""
    if not _current.distributed:
        return [value]
    import torch.distributed as dist

    gathered: list[Any] = [None] * _current.size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_from_main(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` copied into every rank's (in place; returned); a no-op for one
    process. The tensor must live where the backend works (CUDA for NCCL, CPU for gloo)."""
    if _current.distributed:
        import torch.distributed as dist

        dist.broadcast(tensor, src=0)
    return tensor


def broadcast_module(module: torch.nn.Module) -> None:
    """Give every rank rank 0's parameters and buffers (a no-op for one process).

    After DDP training the parameters agree but each rank's BatchNorm running statistics
    come from its own share of the last batch; evaluation must see rank 0's (the exported)
    weights on every rank.
    """
    if not _current.distributed:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            broadcast_from_main(tensor)


def _collective_device() -> torch.device:
    """Where the backend exchanges tensors: the rank's GPU for NCCL, the CPU for gloo."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gather_rows(tensor: torch.Tensor, counts: list[int]) -> torch.Tensor | None:
    """Rank ``r`` holds ``counts[r]`` rows in ``tensor``; rank 0 gets every rank's rows
    concatenated in rank order (on the CPU), the other ranks ``None``.

    One ``gather`` of plain tensors (padded to the largest share), not pickled objects:
    gloo and NCCL move them without a copy through Python. For one process: ``tensor``.
    """
    if not _current.distributed:
        return tensor
    import torch.distributed as dist

    if tensor.shape[0] != counts[_current.rank]:
        raise ValueError(f"rank {_current.rank} holds {tensor.shape[0]} rows, not {counts}")
    device = _collective_device()
    rows = max(counts)
    padded = torch.zeros((rows, *tensor.shape[1:]), dtype=tensor.dtype, device=device)
    padded[: tensor.shape[0]] = tensor.to(device)
    received = None
    if _current.is_main:
        received = [torch.empty_like(padded) for _ in counts]
    dist.gather(padded, received, dst=0)
    if received is None:
        return None
    return torch.cat([part[:count].cpu() for part, count in zip(received, counts)])


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (``value`` itself for one process); for small
    picklable values such as a few flags (tensors go through ``gather_rows``)."""
    if not _current.distributed:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every rank (a no-op for one process)."""
    if _current.distributed:
        import torch.distributed as dist

        dist.barrier()


@contextlib.contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the block first (e.g. fills a cache), then the others (who find it filled)."""
    if _current.is_main:
        yield
        barrier()
    else:
        barrier()
        yield


def wrap_model(module: torch.nn.Module, device: torch.device, sync_batchnorm: bool) -> Any:
    """``module`` wrapped in DistributedDataParallel (``module`` itself for one process).

    With ``sync_batchnorm`` every BatchNorm becomes a SyncBatchNorm first (statistics over the
    global batch, at the cost of one collective per BN layer and step).
    """
    if not _current.distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    if sync_batchnorm:
        check_sync_batchnorm(device)
        torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def check_sync_batchnorm(device: torch.device) -> None:
    """SyncBatchNorm inside DDP works on CUDA devices only (PyTorch refuses it on CPU)."""
    if _current.distributed and device.type != "cuda":
        raise UserError(
            f"pretrain.sync_batchnorm: true needs CUDA devices; this job runs on {device.type} "
            "(PyTorch's DDP supports SyncBatchNorm on GPUs only); set it to false"
        )


def rank_seed(seed: int, rank: int) -> int:
    """A rank's own stream seed; rank 0 keeps ``seed`` (the single-process stream)."""
    if rank == 0:
        return int(seed)
    return (int(seed) * 6_364_136_223_846_793_005 + rank * 1_442_695_040_888_963_407) % (2**63 - 1)


def maybe_kill_for_test(step: int) -> None:
    """Test hook: with ``JIGSAWKIT_TEST_KILL_RANK1_AFTER_STEPS=N``, rank 1 dies by SIGKILL."""
    text = os.environ.get(KILL_RANK1_AFTER_ENV)
    if text and _current.rank == 1 and step >= int(text):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def release_cores() -> None:
    """Rank 0 alone goes on (the probe heads and kNN, once the ranks have extracted the
    features together): let it use every core again (CPU jobs)."""
    if _current.distributed and _current.is_main:
        torch.set_num_threads(os.cpu_count() or 1)


class FollowerRunDirectory:
    """What a rank other than 0 has instead of a ``RunDirectory``: the same paths (to read a
    checkpoint on resume), and writes that go nowhere (rank 0 writes the run)."""

    def __init__(self, path: Any):
        from pathlib import Path

        self.path = Path(path)

    @property
    def checkpoint_dir(self) -> Any:
        return self.path / "checkpoints"

    def log(self, metrics: dict, step: int | None = None) -> None:
        """Dropped: rank 0 logs the all-reduced metrics."""

    def update_summary(self, values: dict) -> None:
        """Dropped: rank 0 writes the summary."""

    @property
    def summary(self) -> dict:
        return {}


class JobFailedError(UserError):
    """A rank of a ``--nproc`` job failed; the message names it and the last checkpoint."""

    exit_code = 1


def launch(nproc: int, command: list[str], run_dir: Any) -> None:
    """Run ``python -m jigsawkit COMMAND`` on ``nproc`` local processes through torchrun's own
    launcher (``torch.distributed.run --standalone``); a failed rank becomes one line."""
    from pathlib import Path

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    args = parse_args(["--standalone", f"--nproc_per_node={nproc}", "-m", "jigsawkit", *command])
    try:
        torchrun(args)
    except ChildFailedError as error:
        # Keyed by global rank. The agent stops the survivors with SIGTERM, so the cause is
        # the earliest failure among the others (timestamps are whole seconds).
        import signal

        failures = error.failures.items()
        causes = [item for item in failures if item[1].exitcode != -signal.SIGTERM] or failures
        rank, first = min(causes, key=lambda item: (item[1].timestamp, item[0]))
        how = (
            f"signal {first.signal_name()}" if first.exitcode < 0 else f"exit code {first.exitcode}"
        )
        last = Path(run_dir) / "checkpoints" / "last.pt"
        kept = str(last) if last.exists() else "none"
        raise JobFailedError(
            f"rank {rank} of {nproc} failed ({how}); the job was stopped; last good checkpoint: {kept}"
        ) from None
