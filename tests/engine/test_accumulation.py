"""Gradient accumulation: accum_steps micro-batches make one optimiser step equal to the large batch's (and to DDP
over as many ranks), in float64; resume with accumulation stays bitwise exact."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from data.synthetic import write_nyud
from tests.processes import free_port, run_ranks
from utils.config import load_config
from utils.distributed import init_distributed
from utils.trainer import Trainer

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo_nyud.yml"
# normals only, sum scheme, no stochastic depth: the loss of a batch is the mean of its images' losses when every
# pixel is valid, so a batch of 4 and 4 accumulated micro-batches of 1 have the same gradient
EXACT = ["model.backbone_kwargs.embed_dim=16", "model.backbone_kwargs.num_heads=[1,1,2,2]", "model.stm_blocks=1",
         "TRAIN.SCALE=[32,64]", "TEST.SCALE=[64,64]", "nworkers=0", "val_interval=1000", "ckpt_interval=1000",
         "task_dictionary={include_normals: true}", "loss_kwargs.loss_scheme=sum", "model.drop_path_rate=0",
         "model.encoder_drop_path_rate=0", "optimizer_kwargs.lr=1.0e-3"]
STEPS = 2


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("accum_data")
    write_nyud(root, n_train=4, n_val=2, size=(45, 56))
    return root


def _samples(step: int) -> list[dict]:
    """Four float64 samples with unit normals everywhere (every pixel valid)."""
    g = torch.Generator().manual_seed(step)
    out = []
    for _ in range(4):
        normals = torch.randn(1, 3, 32, 64, generator=g, dtype=torch.float64)
        out.append({"image": torch.randn(1, 3, 32, 64, generator=g, dtype=torch.float64),
                    "normals": normals / normals.norm(dim=1, keepdim=True)})
    return out


def _batch(samples: list[dict]) -> dict:
    return {k: torch.cat([s[k] for s in samples]) for k in samples[0]}


def _float64_trainer(data_root: Path, out: Path, opts: list[str], info=None) -> Trainer:
    cfg = load_config(DEMO, [f"db_root={data_root}", f"out_dir={out}", *EXACT, *opts])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return Trainer(cfg, out / "run", info or init_distributed())
    finally:
        torch.set_default_dtype(previous)


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    model = trainer.model.module if hasattr(trainer.model, "module") else trainer.model
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_accumulated_micro_batches_equal_the_large_batch(data_root, tmp_path):
    large = _float64_trainer(data_root, tmp_path / "large", ["trBatch=4", "accum_steps=1"])
    micro = _float64_trainer(data_root, tmp_path / "micro", ["trBatch=1", "accum_steps=4"])
    assert micro.accum_steps == 4
    for step in range(STEPS):
        samples = _samples(step)
        a = large.step([_batch(samples)])
        b = micro.step([_batch([s]) for s in samples])
        assert b["total"] == pytest.approx(a["total"], rel=1e-12)
    pa, pb = _params(large), _params(micro)
    assert max(float((pa[k] - pb[k]).abs().max()) for k in pa) < 1e-10
    assert max(float((pa[k] - pa[k].new_tensor(0)).abs().max()) for k in pa) > 0
    # the schedule and the optimiser count optimiser steps, as in the large-batch run
    assert large.iteration == micro.iteration == STEPS
    assert micro.optimizer.param_groups[0]["lr"] == large.optimizer.param_groups[0]["lr"]
    first = next(iter(micro.optimizer.state.values()))
    assert int(first["step"]) == STEPS


def _rank(rank: int, port: int, data_root: str, out: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), CUDA_VISIBLE_DEVICES="")
    trainer = _float64_trainer(Path(data_root), Path(out) / f"rank{rank}", ["trBatch=1", "accum_steps=2"],
                               init_distributed())
    for step in range(STEPS):
        samples = _samples(step)
        trainer.step([_batch([s]) for s in samples[2 * rank:2 * rank + 2]])   # rank r: samples 2r, 2r + 1
    if rank == 0:
        torch.save(_params(trainer), Path(out) / "ddp.pt")
    os._exit(0)


def test_two_ranks_times_two_micro_batches_equal_one_rank_times_four(data_root, tmp_path):
    port = free_port()
    assert run_ranks(_rank, [(r, port, str(data_root), str(tmp_path)) for r in range(2)]) == [0, 0]
    single = _float64_trainer(data_root, tmp_path / "single", ["trBatch=1", "accum_steps=4"])
    for step in range(STEPS):
        single.step([_batch([s]) for s in _samples(step)])
    ddp, one = torch.load(tmp_path / "ddp.pt", weights_only=True), _params(single)
    assert max(float((ddp[k] - one[k]).abs().max()) for k in one) < 1e-10


def test_resume_with_accumulation_is_bitwise_exact(data_root, tmp_path):
    opts = [f"db_root={data_root}", "max_iter=3", "trBatch=1", "accum_steps=2", *EXACT[:5], "val_interval=1000",
            "ckpt_interval=1000"]

    def trainer(out):
        cfg = load_config(DEMO, [*opts, f"out_dir={out}"])
        return Trainer(cfg, Path(out) / cfg.version_name, init_distributed())

    straight = trainer(tmp_path / "a")
    straight.fit()
    first = trainer(tmp_path / "b")
    first.fit(until=1)
    resumed = trainer(tmp_path / "b")
    resumed.resume(resumed.ckpt_dir / "last.pth")
    resumed.fit()
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
