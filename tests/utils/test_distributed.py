"""utils.distributed: single-process fallbacks and a real 2-process gloo group."""
from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

import utils.distributed as du
from tests.processes import free_port, run_ranks

TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def single_process_env(monkeypatch: pytest.MonkeyPatch):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    assert not du.is_initialized()


def test_single_process_without_torchrun(single_process_env):
    info = du.init_distributed()
    assert (info.rank, info.world_size, info.local_rank, info.is_distributed) == (0, 1, 0, False)
    assert info.is_main
    assert info.device == (torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu"))
    assert not du.is_initialized()  # no process group for one process


def test_helpers_without_process_group(single_process_env):
    assert du.get_rank() == 0 and du.get_world_size() == 1 and du.get_local_rank() == 0
    assert du.is_main_process()
    du.barrier()
    t = torch.tensor([1.0, 2.0])
    assert du.all_reduce_sum(t) is t and t.tolist() == [1.0, 2.0]
    state = {"b": torch.tensor([3, 4]), "a": torch.ones(2, 2), "flag": torch.tensor([True, False])}
    out = du.all_reduce_state(state)
    assert list(out) == ["a", "b", "flag"]
    assert torch.equal(out["b"], state["b"]) and out["b"] is not state["b"]
    assert out["flag"].dtype == torch.int64 and out["flag"].tolist() == [1, 0]
    assert du.broadcast_object({"x": 1}) == {"x": 1}
    assert du.all_gather_object(5) == [5]
    du.cleanup()  # safe without a group


def test_all_reduce_state_rejects_non_tensors(single_process_env):
    with pytest.raises(TypeError, match="'n' is a int"):
        du.all_reduce_state({"n": 3})


def test_rank_without_master_addr_explains(single_process_env, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RuntimeError, match="MASTER_ADDR, MASTER_PORT.*torchrun"):
        du.init_distributed()


def _worker(local_rank: int, world_size: int, port: int, out_dir: str) -> None:
    # what torchrun would set; CUDA hidden so both ranks use gloo on CPU even on a one-GPU machine
    os.environ.update(RANK=str(local_rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    torch.set_num_threads(1)
    info = du.init_distributed(timeout=timedelta(seconds=60))
    try:
        r = info.rank
        state = {  # a meter-like state: per-rank counts that must be summed
            "confusion": torch.full((3, 3), r + 1, dtype=torch.int64),
            "err_sum": torch.tensor([0.5 * (r + 1)], dtype=torch.float64),
            "count": torch.tensor(10 * (r + 1)),
        }
        reduced = du.all_reduce_state(state)
        t = du.all_reduce_sum(torch.tensor([float(r)]))
        obj = du.broadcast_object({"seed": 1234, "from": r} if r == 0 else None)
        try:  # ranks disagreeing on the state layout get an error, not a hang or wrong sums
            du.all_reduce_state({"a": torch.zeros(2 + r)})
            mismatch = "no error"
        except ValueError as e:
            mismatch = str(e)
        du.barrier()
        torch.save({"info": (info.rank, info.world_size, info.local_rank, str(info.device), info.is_distributed,
                             du.get_rank(), du.get_world_size(), du.is_main_process()),
                    "state": state, "reduced": reduced, "sum": t, "obj": obj,
                    "gathered": du.all_gather_object(r * 10),
                    "mismatch": mismatch},
                   os.path.join(out_dir, f"rank{r}.pt"))
    finally:
        du.cleanup()


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_two_process_gloo(tmp_path: Path):
    world_size = 2
    port = free_port()
    assert run_ranks(_worker, [(r, world_size, port, str(tmp_path)) for r in range(world_size)], timeout=120,
                     start_method="spawn") == [0] * world_size
    results = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    for r, res in enumerate(results):
        assert res["info"] == (r, 2, r, "cpu", True, r, 2, r == 0)
        assert torch.equal(res["state"]["confusion"], torch.full((3, 3), r + 1))  # input untouched
        assert torch.equal(res["reduced"]["confusion"], torch.full((3, 3), 3, dtype=torch.int64))
        assert res["reduced"]["err_sum"].dtype == torch.float64 and res["reduced"]["err_sum"].item() == 1.5
        assert res["reduced"]["count"].item() == 30 and res["reduced"]["count"].shape == ()
        assert res["sum"].item() == 1.0
        assert res["obj"] == {"seed": 1234, "from": 0}
        assert res["gathered"] == [0, 10]
        assert res["mismatch"].startswith("all_reduce_state: rank")


def _frozen_rank_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    du.init_distributed(timeout=timedelta(seconds=2))
    if rank == 1:               # stops answering: never reaches the barrier
        time.sleep(8)
        os._exit(0)
    start = time.monotonic()
    try:
        du.barrier()
        message = "no error"
    except RuntimeError as e:
        message = str(e)
    Path(out_dir, "rank0.txt").write_text(f"{time.monotonic() - start:.1f}\n{message}")
    os._exit(0)


@pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                    reason="torch.distributed with gloo is not available")
def test_frozen_rank_is_named_after_the_timeout(tmp_path: Path):
    port = free_port()
    assert run_ranks(_frozen_rank_worker, [(r, port, str(tmp_path)) for r in range(2)], timeout=60) == [0, 0]
    waited, message = (tmp_path / "rank0.txt").read_text().split("\n", 1)
    assert float(waited) < 6                                  # the 2 s timeout, not forever
    assert "rank 0: not every rank reached the barrier within the timeout (dist_timeout)" in message
    assert "Ranks 1 failed to pass monitoredBarrier" in message
