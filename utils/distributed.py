"""Process-group setup and collective helpers that also work as a plain single process (ARCHITECTURE.md §6).

Under ``torchrun`` the environment carries ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; :func:`init_distributed` joins the process group (``nccl`` on CUDA, ``gloo`` on CPU) and pins each
rank to ``cuda:LOCAL_RANK``. Without torchrun it returns world size 1 and creates no process group, and every helper
here degrades to the single-process answer (rank 0, world size 1, reductions are no-ops).

Evaluation sums the meters' sufficient statistics with :func:`all_reduce_state`.
"""
from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo",
    "init_distributed",
    "is_initialized",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "is_main_process",
    "barrier",
    "all_reduce_sum",
    "all_reduce_state",
    "broadcast_object",
    "all_gather_object",
    "cleanup",
]

logger = logging.getLogger(__name__)

_TIMEOUT: datetime.timedelta | None = None    # the process group's timeout, as given to init_distributed


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the run."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_distributed: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def init_distributed(backend: str | None = None, timeout: datetime.timedelta | None = None) -> DistInfo:
    """Join the process group described by the torchrun environment, or run as a single process.

    A process group is created when ``WORLD_SIZE > 1`` or ``RANK`` is set (``torchrun`` always sets it).
    ``backend`` defaults to ``nccl`` when CUDA is available, else ``gloo``. If a process group already exists it is
    reused. The returned ``device`` is ``cuda:LOCAL_RANK`` (made current) on CUDA and ``cpu`` otherwise.
    ``timeout`` bounds how long a rank waits in a collective for the others (torch's default when None).
    """
    cuda = torch.cuda.is_available()
    if is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = _env_int("LOCAL_RANK", 0)
        return DistInfo(rank, world_size, local_rank, _device(local_rank, cuda), True)

    world_size = _env_int("WORLD_SIZE", 1)
    if world_size <= 1 and "RANK" not in os.environ:
        device = torch.device("cuda", 0) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        return DistInfo(0, 1, 0, device, False)

    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
    if missing:
        raise RuntimeError(f"RANK/WORLD_SIZE are set but {', '.join(missing)} is not; launch with "
                           "`torchrun --nproc_per_node N main.py ...`, or unset RANK and WORLD_SIZE to run as a "
                           "single process")
    if not 0 <= rank < world_size:
        raise RuntimeError(f"RANK={rank} is outside WORLD_SIZE={world_size}")
    if cuda and local_rank >= torch.cuda.device_count():
        raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible; "
                           "use --nproc_per_node <= the number of GPUs")
    backend = backend or ("nccl" if cuda else "gloo")
    device = _device(local_rank, cuda)
    if cuda:
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {"backend": backend, "init_method": "env://", "rank": rank, "world_size": world_size}
    if timeout is not None:
        kwargs["timeout"] = timeout
        global _TIMEOUT
        _TIMEOUT = timeout
    if backend == "nccl":
        kwargs["device_id"] = device
    dist.init_process_group(**kwargs)
    logger.info("process group ready: backend=%s rank=%d/%d local_rank=%d device=%s",
                backend, rank, world_size, local_rank, device)
    return DistInfo(rank, world_size, local_rank, device, True)


def _device(local_rank: int, cuda: bool) -> torch.device:
    return torch.device("cuda", local_rank) if cuda else torch.device("cpu")


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def get_local_rank() -> int:
    return _env_int("LOCAL_RANK", 0) if is_initialized() else 0


def is_main_process() -> bool:
    return get_rank() == 0


def _uses_nccl() -> bool:
    return dist.get_backend() == "nccl"


def barrier() -> None:
    """Wait for every rank (no-op on one process).

    On gloo it is torch's monitored barrier: when a rank does not arrive within the process group's timeout
    (``dist_timeout``), rank 0 raises an error that names the ranks that stopped answering.
    """
    if get_world_size() <= 1:
        return
    try:
        if _uses_nccl():
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.monitored_barrier(timeout=_TIMEOUT, wait_all_ranks=True)
    except RuntimeError as e:
        raise RuntimeError(f"rank {get_rank()}: not every rank reached the barrier within the timeout "
                           f"(dist_timeout): {' '.join(str(e).split())}") from e


def _comm_device() -> torch.device:
    """Device a tensor must live on for the active backend."""
    return torch.device("cuda", torch.cuda.current_device()) if _uses_nccl() else torch.device("cpu")


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over all ranks, in place, and return it (no-op on one process).

    Tensors on a device the backend cannot use (CPU tensors under ``nccl``) are copied there and back.
    """
    if get_world_size() <= 1:
        return t
    comm = _comm_device()
    if t.device == comm:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    else:
        buf = t.to(comm)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        t.copy_(buf)
    return t


def all_reduce_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Element-wise sum of every tensor in ``state`` across ranks, e.g. a meter's ``state()``.

    Returns a new dict (the input is not modified) with each tensor on its original device and dtype; boolean
    tensors come back as int64 counts. Keys are processed in sorted order and tensors of one dtype travel in a single
    flattened collective. All ranks must pass the same keys, shapes and dtypes; otherwise a ``ValueError`` says which
    rank differs (instead of a hang or silently wrong sums). On one process the result is a copy of ``state``.
    """
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"all_reduce_state: {key!r} is a {type(value).__name__}, expected a tensor")
    keys = sorted(state)
    out = {k: (state[k].long() if state[k].dtype == torch.bool else state[k].detach().clone()) for k in keys}
    if get_world_size() <= 1:
        return out

    signature = [(k, tuple(out[k].shape), str(out[k].dtype)) for k in keys]
    signatures = all_gather_object(signature)
    for r, other in enumerate(signatures):
        if other != signature:
            raise ValueError(f"all_reduce_state: rank {r} has state {other}, rank {get_rank()} has {signature}")

    comm = _comm_device()
    by_dtype: dict[torch.dtype, list[str]] = {}
    for k in keys:
        by_dtype.setdefault(out[k].dtype, []).append(k)
    for dtype in sorted(by_dtype, key=str):
        group = by_dtype[dtype]
        flat = torch.cat([out[k].reshape(-1).to(comm) for k in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        offset = 0
        for k in group:
            n = out[k].numel()
            out[k] = flat[offset:offset + n].view(out[k].shape).to(out[k].device)
            offset += n
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` (any picklable object) on every rank; ``obj`` itself on one process."""
    if get_world_size() <= 1:
        return obj
    box = [obj if get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order; ``[obj]`` on one process."""
    if get_world_size() <= 1:
        return [obj]
    gathered: list[Any] = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def cleanup() -> None:
    """Destroy the process group if one exists (safe to call on one process or twice)."""
    if is_initialized():
        dist.destroy_process_group()
