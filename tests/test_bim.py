"""BIM-repro (MODELS.md §2.3): joint task serialisations, BI-Scan orders and causality, MS-Scan, parameter totals,
config validation, and a tiny model trained and evaluated through main.py on synthetic NYUD and PASCAL data."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import main as cli
from data.synthetic import write_nyud, write_pascal
from models import build_model
from models.bim import BCFR, MSST, POSITION_FIRST, TASK_FIRST
from models.ops.scan_orders import scan_order
from models.ops.selective_scan import selective_scan_ref
from models.ops.task_orders import TASK_ORDERS, task_merge, task_order, task_rescan, task_scan
from utils.checkpoint import load_checkpoint
from utils.config import ConfigError, load_config
from utils.flops import count_params

ALL_ORDERS = tuple(TASK_ORDERS)          # task_first, position_first, task_first_rev, position_first_rev


# --- serialisations ------------------------------------------------------------------------------------------------
def reference_sequences(maps: torch.Tensor, pattern: str = "raster") -> dict[str, torch.Tensor]:
    """The four joint sequences built from their definitions: maps (B, D, T, H, W) -> {order: (B, D, T·L)}."""
    b, d, n, h, w = maps.shape
    if pattern == "transposed":
        maps = maps.transpose(3, 4)
    per_task = [maps[:, :, t].reshape(b, d, h * w) for t in range(n)]
    seqs = {"task_first": torch.cat(per_task, dim=-1),                          # [t1: p1..pL, t2: ...]
            "position_first": torch.stack(per_task, dim=-1).reshape(b, d, n * h * w)}   # [p1: t1..tT, ...]
    seqs.update({f"{k}_rev": v.flip(-1) for k, v in list(seqs.items())})
    return seqs


@pytest.mark.parametrize("n_tasks", [1, 2, 4, 5])
@pytest.mark.parametrize("hw", [(3, 5), (1, 7), (5, 3)])
@pytest.mark.parametrize("pattern", ["raster", "transposed"])
def test_serialisations_match_definitions_and_round_trip(n_tasks, hw, pattern):
    h, w = hw
    maps = torch.randn(2, 3, n_tasks, h, w)
    stacked = maps.reshape(2, 1, 3, n_tasks * h * w).expand(2, 4, 3, -1)   # same stacked copy for every order
    seqs = task_scan(stacked, ALL_ORDERS, n_tasks, hw, pattern)
    ref = reference_sequences(maps, pattern)
    for k, name in enumerate(ALL_ORDERS):
        assert torch.equal(seqs[:, k], ref[name]), name
        perm, inv = task_order(name, n_tasks, h, w, pattern=pattern)
        assert torch.equal(perm.sort().values, torch.arange(n_tasks * h * w))
        assert torch.equal(inv[perm], torch.arange(n_tasks * h * w))
    assert torch.equal(task_merge(seqs, ALL_ORDERS, n_tasks, hw, pattern), stacked)          # exact inverse
    # re-serialising task-first output position-first equals serialising the stacked maps position-first
    swapped = ALL_ORDERS[1], ALL_ORDERS[0], ALL_ORDERS[3], ALL_ORDERS[2]
    assert torch.equal(task_rescan(seqs, ALL_ORDERS, swapped, n_tasks, hw, pattern),
                       task_scan(stacked, swapped, n_tasks, hw, pattern))


@pytest.mark.parametrize("n_tasks,hw", [(1, (3, 5)), (4, (3, 5)), (5, (7, 1))])
def test_raster_orders_are_the_ss2d_orders_of_the_task_by_position_grid(n_tasks, hw):
    """With the raster pattern, task-first / position-first read the T×L token grid row- / column-major."""
    length = hw[0] * hw[1]
    for name, grid_order in zip(ALL_ORDERS, ("raster", "transposed", "raster_rev", "transposed_rev")):
        assert torch.equal(task_order(name, n_tasks, *hw)[0], scan_order(grid_order, n_tasks, length)[0])


def test_position_first_puts_all_tasks_of_a_pixel_before_the_next_pixel():
    n_tasks, h, w = 3, 2, 2
    values = torch.tensor([[10.0 * t + p for p in range(h * w)] for t in range(n_tasks)])   # task t, pixel p: 10t + p
    stacked = values.reshape(1, 1, 1, -1)
    seq = task_scan(stacked, ["position_first"], n_tasks, (h, w))[0, 0, 0].tolist()
    assert seq == [0, 10, 20, 1, 11, 21, 2, 12, 22, 3, 13, 23]
    pixel = [int(v) % 10 for v in seq]
    assert pixel == sorted(pixel)                                  # pixel p entirely before pixel p + 1
    assert task_scan(stacked, ["task_first"], n_tasks, (h, w))[0, 0, 0].tolist() == [0, 1, 2, 3, 10, 11, 12, 13,
                                                                                       20, 21, 22, 23]
    assert task_scan(stacked, ["position_first_rev"], n_tasks, (h, w))[0, 0, 0].tolist() == seq[::-1]


def test_unknown_order_and_shape_mismatch_are_errors():
    with pytest.raises(KeyError, match="task_first"):
        task_order("pixel_first", 2, 3, 3)
    with pytest.raises(ValueError, match="does not match"):
        task_scan(torch.zeros(1, 2, 3, 17), TASK_FIRST, 2, (3, 3))


# --- BI-Scan -------------------------------------------------------------------------------------------------------
N_TASKS, HW = 3, (2, 3)


def tiny_bcfr(modes: str) -> BCFR:
    torch.manual_seed(0)
    return BCFR(4, [f"t{i}" for i in range(N_TASKS)], modes=modes, d_state=4, scan_backend="torch").double()


def scan_positions(n_tasks: int, length: int, backward: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Index of stacked token (t, p) in the task-first and in the position-first sequence, from the definitions."""
    t, p = torch.arange(n_tasks).repeat_interleave(length), torch.arange(length).repeat(n_tasks)
    tf, pf = t * length + p, p * n_tasks + t
    last = n_tasks * length - 1
    return (last - tf, last - pf) if backward else (tf, pf)


def jacobian_support(fn, x: torch.Tensor) -> torch.Tensor:
    """support[k_out, j_out, k_in, j_in]: does output token j_out of half k_out depend on input token j_in of k_in?"""
    x = x.clone().requires_grad_(True)
    y = fn(x)
    _, halves, _, tokens = y.shape
    support = torch.zeros(halves, tokens, halves, tokens, dtype=torch.bool)
    for k in range(halves):
        for j in range(tokens):
            (grad,) = torch.autograd.grad(y[0, k, :, j].sum(), x, retain_graph=True)
            support[k, j] = grad[0].abs().sum(1) > 0                       # (halves, tokens)
    return support


def causal(pos: torch.Tensor) -> torch.Tensor:
    """[out, in]: the input comes no later than the output in the scan order ``pos``."""
    return pos.view(1, -1) <= pos.view(-1, 1)


@pytest.mark.parametrize("mode", ["task_first", "position_first"])
def test_each_bi_scan_mode_is_causal_in_its_order(mode):
    """Forward half: the output for task t at position p depends exactly on the inputs not later in the mode's scan
    order; the backward half mirrors it (flipped order). The two halves do not mix."""
    bcfr = tiny_bcfr("cascade")
    orders, bank = (TASK_FIRST, bcfr.task_first) if mode == "task_first" else (POSITION_FIRST, bcfr.position_first)
    length = HW[0] * HW[1]

    def one_mode(x):
        return task_merge(bank(task_scan(x, orders, N_TASKS, HW)), orders, N_TASKS, HW)

    support = jacobian_support(one_mode, torch.randn(1, 2, 4, N_TASKS * length, dtype=torch.float64))
    for k, backward in enumerate((False, True)):
        pos = scan_positions(N_TASKS, length, backward)[0 if mode == "task_first" else 1]
        assert torch.equal(support[k, :, k], causal(pos)), (mode, backward)
        assert not support[k, :, 1 - k].any()


@pytest.mark.parametrize("modes", ["cascade", "parallel"])
def test_bi_scan_dependencies_follow_the_claimed_orders(modes):
    """BCFR.bi_scan: cascade = position-first scan of the task-first outputs, so output o depends on input i iff some
    token m has pf(m) <= pf(o) and tf(i) <= tf(m); parallel = union of the two causal sets. Backward: flipped."""
    bcfr = tiny_bcfr(modes)
    length = HW[0] * HW[1]
    support = jacobian_support(lambda x: bcfr.bi_scan(x, N_TASKS, HW),
                               torch.randn(1, 2, 4, N_TASKS * length, dtype=torch.float64))
    for k, backward in enumerate((False, True)):
        tf, pf = scan_positions(N_TASKS, length, backward)
        if modes == "cascade":
            expected = (causal(pf).double() @ causal(tf).double()) > 0
        else:
            expected = causal(tf) | causal(pf)
        assert torch.equal(support[k, :, k], expected), backward
        assert not support[k, :, 1 - k].any()
        first = int((tf == 0).nonzero())                                 # first token of the scan: itself only
        assert support[k, first, k].nonzero().flatten().tolist() == [first]


def reference_ssm(seq: torch.Tensor, bank, k: int) -> torch.Tensor:
    """S6 of one explicit sequence (B, D, L) with parameter set k of an SSMBank (sequential reference scan)."""
    d = seq.shape[1]
    proj = torch.einsum("bdl,cd->bcl", seq, bank.x_proj_weight[k])
    r, n = bank.dt_projs_weight.shape[2], bank.A_logs.shape[1]
    dt, b, c = proj.split([r, n, n], dim=1)
    rows = slice(k * d, (k + 1) * d)
    return selective_scan_ref(seq, torch.einsum("brl,dr->bdl", dt, bank.dt_projs_weight[k]),
                              -torch.exp(bank.A_logs[rows]), b, c, bank.Ds[rows],
                              delta_bias=bank.dt_projs_bias[k], delta_softplus=True)


def test_cascade_bi_scan_equals_explicit_sequences():
    """Forward: task-first sequence -> SSM -> per task -> interleaved position-first -> SSM -> per task.
    Backward: the same on flipped sequences, flipped back. Built with cat/stack, not with the index maps."""
    bcfr = tiny_bcfr("cascade")
    b, d, length = 2, 4, HW[0] * HW[1]
    maps = torch.randn(b, 2, d, N_TASKS, length, dtype=torch.float64)    # (B, half, D, T, L)
    got = bcfr.bi_scan(maps.reshape(b, 2, d, N_TASKS * length), N_TASKS, HW).view(b, 2, d, N_TASKS, length)
    for k, flip in enumerate((lambda s: s, lambda s: s.flip(-1))):
        s1 = flip(torch.cat([maps[:, k, :, t] for t in range(N_TASKS)], dim=-1))
        y1 = flip(reference_ssm(s1, bcfr.task_first, k)).view(b, d, N_TASKS, length)
        s2 = flip(torch.stack([y1[:, :, t] for t in range(N_TASKS)], dim=-1).reshape(b, d, -1))
        y2 = flip(reference_ssm(s2, bcfr.position_first, k)).view(b, d, length, N_TASKS)
        torch.testing.assert_close(got[:, k], y2.permute(0, 1, 3, 2))


def test_bcfr_block_shapes_gradients_and_errors():
    torch.manual_seed(0)
    tasks = ["a", "b", "c"]
    bcfr = BCFR(6, tasks, expand=1, d_state=4)
    feats = {t: torch.randn(2, 3, 5, 6) for t in tasks}
    out = bcfr(feats)
    assert all(out[t].shape == (2, 3, 5, 6) for t in tasks)
    sum(v.square().sum() for v in out.values()).backward()
    assert all(p.grad is not None for p in bcfr.parameters())
    assert bcfr.task_first.A_logs.shape == (2 * 3, 4)                    # (fwd, bwd) sets of E·C/2 = 3 channels
    with pytest.raises(ValueError, match=r"bcfr_expand.*\[1, 2\]"):
        BCFR(6, tasks, expand=3)
    with pytest.raises(ValueError, match=r"bcfr_modes.*\['cascade', 'parallel'\]"):
        BCFR(6, tasks, modes="serial")


# --- MS-Scan -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("hw", [(4, 6), (5, 7)])
def test_msvmamba_scan_equals_explicit_construction(hw):
    """MSVMamba's multi-scale scan: raster at full resolution; at half resolution (DWConv7×7/2 + SiLU of the pre-conv
    map) the reversed-raster, column-major and reversed column-major sequences concatenated into ONE sequence;
    out_norm per branch; un-permuted, summed, bilinearly up-sampled and added."""
    torch.manual_seed(0)
    msst = MSST(4, ms_scan="msvmamba", d_state=4, scan_backend="torch").double()
    b, d, (h, w) = 2, msst.in_proj.out_features // 2, hw
    x = torch.randn(b, d, h, w, dtype=torch.float64)
    norm = msst.out_norm

    full = reference_ssm(F.silu(msst.conv2d(x)).flatten(2), msst.ssm, 0)          # (B, D, H·W)
    full = norm(full.transpose(1, 2)).view(b, h, w, d)
    low = F.silu(msst.conv2d_low(x))
    hl, wl = low.shape[-2:]
    assert (hl, wl) == (math.ceil(h / 2), math.ceil(w / 2))
    col = low.transpose(2, 3).flatten(2)
    seq = torch.cat([low.flatten(2).flip(-1), col, col.flip(-1)], dim=-1)
    y = norm(reference_ssm(seq, msst.ssm_low, 0).transpose(1, 2))                   # (B, 3·hl·wl, D)
    n = hl * wl
    raster = y[:, :n].flip(1).view(b, hl, wl, d)
    column = y[:, n:2 * n].view(b, wl, hl, d).transpose(1, 2) + y[:, 2 * n:].flip(1).view(b, wl, hl, d).transpose(1, 2)
    low_up = F.interpolate((raster + column).permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False)
    torch.testing.assert_close(msst.scan(x), full + low_up.permute(0, 2, 3, 1))


@pytest.mark.parametrize("ms_scan", ["msvmamba", "split", "full"])
def test_msst_odd_sizes_and_gradients(ms_scan):
    torch.manual_seed(0)
    msst = MSST(8, ms_scan=ms_scan, d_state=4)
    z = torch.randn(2, 5, 7, 8)
    out = msst(z)
    assert out.shape == z.shape
    out.square().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in msst.parameters())


# --- parameter totals (MODELS.md §2.3) -----------------------------------------------------------------------------
# (ms_scan, bcfr_expand): NYUD decoder / total, PASCAL decoder / total, in M, as printed in MODELS.md §2.3
TABLE = {
    ("split", 2): (100.87, 296.08, 125.92, 321.13),
    ("split", 1): (91.19, 286.39, 113.90, 309.10),
    ("msvmamba", 2): (96.49, 291.69, 120.44, 315.64),
    ("msvmamba", 1): (86.80, 282.01, 108.42, 303.62),
}
BCFR_TOTALS = {2: (19.38, 24.05), 1: (9.69, 12.03)}                     # Σ over the 3 stages, NYUD / PASCAL


def build_on_meta(path, *opts):
    cfg = load_config(path, ["model.pretrained=false", *opts])
    with torch.device("meta"):
        return build_model(cfg)


@pytest.mark.parametrize("ms_scan,expand", list(TABLE))
def test_parameter_totals_match_the_table(ms_scan, expand):
    for i, path in enumerate(("configs/bim_nyud.yml", "configs/bim_pascal.yml")):
        model = build_on_meta(path, f"model.bim.ms_scan={ms_scan}", f"model.bim.bcfr_expand={expand}")
        decoder = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("encoder."))
        bcfr = sum(p.numel() for n, p in model.named_parameters() if ".bcfr." in n)
        assert count_params(model.encoder) == 195_201_204
        assert abs(decoder / 1e6 - TABLE[ms_scan, expand][2 * i]) <= 0.01
        assert abs(count_params(model) / 1e6 - TABLE[ms_scan, expand][2 * i + 1]) <= 0.01
        assert abs(bcfr / 1e6 - BCFR_TOTALS[expand][i]) <= 0.01


@pytest.mark.parametrize("c", [768, 384, 192])
def test_block_parameter_closed_forms(c):
    r = math.ceil(c / 16)
    with torch.device("meta"):
        for n in (4, 5):
            tasks = [str(i) for i in range(n)]
            assert count_params(BCFR(c, tasks, expand=2)) == n * (6 * c * c + 26 * c) + 4 * c * (2 * r + 50)   # §2.3
            assert count_params(BCFR(c, tasks, expand=1)) == n * (3 * c * c + 14 * c) + 2 * c * (2 * r + 50)
        # from §2.3's description: STM (6C² + 16CR + 426C) with its 4 SSM sets and DWConv3×3 at full resolution;
        # split adds a DWConv3×3/2 (20C); msvmamba has 2 SSM sets and adds a DWConv7×7/2 (100C)
        assert count_params(MSST(c, ms_scan="split")) == 6 * c * c + 16 * c * r + 446 * c
        assert count_params(MSST(c, ms_scan="msvmamba")) == 6 * c * c + 8 * c * r + 326 * c


def test_drop_path_schedule_and_ablation_configs():
    model = build_on_meta("configs/bim_nyud.yml")
    stage0, stage2 = model.decoder.stages[0], model.decoder.stages[2]
    assert stage0.msst["semseg"][0].drop_path.drop_prob == pytest.approx(0.2)        # linspace(0.2, 0, 9)
    assert stage0.bcfr.drop_path.drop_prob == pytest.approx(0.15)
    assert isinstance(stage2.bcfr.drop_path, torch.nn.Identity)
    combos = set()
    for f in sorted(Path("configs/ablations").glob("bim_*.yml")):
        assert f.read_text().startswith("# BIM-repro ablation"), f.name
        bim = load_config(f).model.bim
        combos.add((bim.ms_scan, bim.bcfr_expand))
    assert combos >= set(TABLE)


# --- config --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opt,message", [
    ("model.bim.ms_scan=multi", r"model\.bim\.ms_scan='multi'.*\['msvmamba', 'split', 'full'\]"),
    ("model.bim.bcfr_expand=4", r"model\.bim\.bcfr_expand=4.*\[1, 2\]"),
    ("model.bim.bcfr_expand=true", r"model\.bim\.bcfr_expand=True.*\[1, 2\]"),
    ("model.bim.bcfr_modes=serial", r"model\.bim\.bcfr_modes='serial'.*\['cascade', 'parallel'\]"),
    ("model.bim.n_msst=0", r"model\.bim\.n_msst=0.*positive integer"),
    ("model.bim.n_mst=2", r"unknown config key 'model\.bim\.n_mst'.*n_msst"),
])
def test_bad_bim_values_name_the_key_and_choices(opt, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/bim_nyud.yml", [opt])


def test_mtmamba_switches_are_rejected_for_bim():
    with pytest.raises(ConfigError, match=r"model\.ctm=False.*model\.bim"):
        build_on_meta("configs/bim_nyud.yml", "model.ctm=false")


# --- end to end ----------------------------------------------------------------------------------------------------
TINY = ["model.backbone=custom", "model.pretrained=false", "TRAIN.SCALE=[64,96]", "TEST.SCALE=[96,128]",
        "model.backbone_kwargs={embed_dim: 16, depths: [2, 2, 2, 2], num_heads: [1, 1, 2, 2], window_size: 4}",
        "model.bim.n_msst=1", "trBatch=2", "valBatch=2", "nworkers=0", "log_interval=1", "eval_boundary=false",
        "max_iter=2", "val_interval=1000", "ckpt_interval=1000"]
PASCAL = ["train_db_name=PASCALContext", "val_db_name=PASCALContext", "TEST.SCALE=[128,128]",
          "task_dictionary={include_semseg: true, include_human_parts: true, include_sal: true, "
          "include_normals: true, include_edge: true}"]


@pytest.mark.parametrize("dataset", ["nyud", "pascal"])
def test_tiny_bim_trains_and_infers_through_main(dataset, tmp_path):
    (write_nyud if dataset == "nyud" else write_pascal)(tmp_path / "data", n_train=4, n_val=2)
    opts = [f"db_root={tmp_path / 'data'}", f"out_dir={tmp_path / 'runs'}", *TINY,
            *(PASCAL if dataset == "pascal" else [])]
    config = "configs/bim_nyud.yml"
    assert cli.main(["--run_mode", "train", "--config_exp", config, "--opts", *opts]) == 0
    ckpt = tmp_path / "runs" / "bim_nyud" / "checkpoints" / "last.pth"
    assert load_checkpoint(ckpt)["iteration"] == 2
    assert cli.main(["--run_mode", "infer", "--config_exp", config, "--trained_model", str(ckpt), "--opts", *opts]) == 0
    results = json.loads((tmp_path / "runs" / "bim_nyud" / "metrics.json").read_text())["results"]
    expected = set(load_config(config, opts).TASKS.NAMES) - {"edge"}      # edges are scored by eval_boundary
    assert set(results) == expected
    assert all(math.isfinite(v) for task in results.values() for v in task.values())
