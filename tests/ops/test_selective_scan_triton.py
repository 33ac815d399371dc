"""The "triton" selective-scan backend (models/ops/selective_scan_triton.py).

The kernels run under Triton's CPU interpreter in one subprocess (tests/ops/triton_interpreter.py: TRITON_INTERPRET=1
must be set before the kernels are built and must not leak into other tests); the tests here assert on its numbers:
forward and every gradient against the float64 reference, tiny models against the torch backend. Selection and
its errors are tested in this process.

Tolerances: float32 inputs: relative error <= 1e-5 for the output and each gradient; float64: 1e-10; bfloat16 inputs
(A, D, delta_bias float32, as in SS2D): BF16_TOL = 1e-2 against the float64 reference computed from the same
bf16-rounded inputs (the output and the gradients of the bf16 inputs are rounded to bf16, 2^-9 relative per
element; measured 2e-3 to 4e-3).
"""
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch

import models.ops.selective_scan as scan_ops
from models.ops.selective_scan import available_backends, selective_scan
from tests.ops.test_selective_scan import make_inputs

triton = pytest.importorskip("triton", reason="the triton backend needs the triton package")

REPO = Path(__file__).resolve().parents[2]

TOL = {"float32": 1e-5, "float64": 1e-10, "bfloat16": 1e-2}
ALL, NONE = (True, True, True, True), (False, False, False, False)  # (D, z, delta_bias, delta_softplus)

# Launch settings of most cases: larger channel blocks than on a GPU (the interpreter's cost is per program and
# iteration) and 32-step chunks. Two cases run the module's own settings (small blocks, several per group: dB, dC
# summed with atomics).
TEST_SETTINGS = {"MAX_BLOCK_D": 16, "FORWARD_TILE": 8192, "BACKWARD_TILE": 8192, "MAX_CHUNK": 32}

# (G, N) in {1, 4} x {1, 16}, with and without D, z, delta_bias; batch 2; 5 or 6 channels per group (not a multiple
# of the channel block, 8); L = 37: two chunks, the second partial.
KERNEL_CASES = {
    f"{layout}-G{groups}-N{n}-{'all' if options == ALL else 'none'}":
        dict(layout=layout, groups=groups, chans=5 if groups == 4 else 6, N=n, L=37, options=options)
    for layout, groups in (("grouped", 4), ("3d", 1)) for n in (1, 16) for options in (ALL, NONE)
}
KERNEL_CASES.update({
    # G = 1 given as (batch, 1, N, L); D and bias without z and softplus
    "grouped-G1-N16-D-bias": dict(layout="grouped", groups=1, chans=6, N=16, L=37, options=(True, False, True, False)),
    "const-N4": dict(layout="const", chans=3, N=4, L=37, options=ALL),          # time-invariant B and C
    "mixed-N16": dict(layout="mixed", chans=3, N=16, L=37, options=(False, True, True, True)),  # ... C only
    # Δ up to 2 as in a trained model, and a third of the raw deltas above softplus's threshold (20)
    "stress-threshold": dict(layout="grouped", chans=5, N=16, L=37, options=ALL, stress=True, above_threshold=True),
    "float64": dict(layout="grouped", chans=5, N=16, L=37, options=ALL, dtype="float64"),
    "bfloat16": dict(layout="grouped", chans=5, N=16, L=37, options=ALL, dtype="bfloat16"),
    # a single step, and one channel per group
    "edge-L1": dict(layout="grouped", chans=1, N=16, L=1, options=ALL, edge=True),
    # the module's launch settings (N = 16: 64-step chunks, 1-channel backward blocks; N = 1: 256-step chunks)
    "defaults-N16": dict(layout="grouped", groups=2, chans=3, N=16, L=100, options=ALL, settings={}),
    "defaults-N1": dict(layout="3d", chans=6, N=1, L=300, options=ALL, settings={}),
})
for _case in KERNEL_CASES.values():
    _case.setdefault("dtype", "float32")
    _case.setdefault("settings", TEST_SETTINGS)

TWO_TASKS = ["task_dictionary.include_normals=false", "task_dictionary.include_edge=false"]
TINY_SWIN = [*TWO_TASKS, "model.backbone=custom", "model.pretrained=false", "model.d_state=4", "model.drop_path_rate=0",
             "model.backbone_kwargs={embed_dim: 8, depths: [1, 1, 1, 1], num_heads: [1, 1, 1, 1], window_size: 4}"]
# adding a model is one line: (config, options, input size). Channel blocks of up to 64 channels: the interpreter's cost
# is per program (the kernel cases above cover small blocks). "-gpu-path": the fast execution as on a GPU (one scan
# call over all task layers of a stage, T·K groups).
MODEL_SETTINGS = {"MAX_BLOCK_D": 64, "FORWARD_TILE": 16384}
MODEL_CASES = {
    "mtmamba-fast": ("configs/mtmamba_nyud.yml", [*TINY_SWIN, "model.exec=fast"], (32, 32)),
    "mtmamba-fast-gpu-path": ("configs/mtmamba_nyud.yml", [*TINY_SWIN, "model.exec=fast"], (32, 32)),
    "mtmamba-reference": ("configs/mtmamba_nyud.yml", [*TINY_SWIN, "model.exec=reference"], (32, 32)),
    "mtmamba_plus": ("configs/mtmamba_plus_nyud.yml", TINY_SWIN, (32, 32)),
    "bim": ("configs/bim_nyud.yml", TINY_SWIN, (32, 32)),
    "pame_swin": ("configs/pame_swin_nyud.yml", TINY_SWIN, (32, 32)),
    "pame_vit": ("configs/pame_vit_nyud.yml", [*TWO_TASKS, "model.backbone=vit_custom", "model.pretrained=false",
                                               "model.pame.dim=8", "model.d_state=4",
                                               "model.backbone_kwargs={embed_dim: 16, depth: 4, num_heads: 2}"],
                 (32, 32)),
    "mambaseg": ("configs/mambaseg_ddd17.yml", ["model.mambaseg.dims=[16,16,32,32]", "model.mambaseg.depths=[1,1,1,1]",
                                                "model.mambaseg.head_dim=16", "model.encoder_drop_path_rate=0"],
                 (26, 34)),
}


def start_cases(cases: list[dict], folder: Path) -> tuple[subprocess.Popen, Path, Path]:
    """Start tests/ops/triton_interpreter.py on ``cases`` in a fresh TRITON_INTERPRET=1 process (one thread),
    with files for its input and output (it runs while the caller goes on)."""
    folder.mkdir(parents=True)
    (folder / "cases.json").write_text(json.dumps(cases))
    out, err = folder / "results.json", folder / "stderr.txt"
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with open(folder / "cases.json") as stdin, open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "tests.ops.triton_interpreter"], stdin=stdin, stdout=stdout,
                                stderr=stderr, cwd=REPO, env=env)
    return proc, out, err


def finish_cases(started: tuple[subprocess.Popen, Path, Path]) -> list[dict]:
    proc, out, err = started
    if proc.wait(timeout=240) != 0:
        raise RuntimeError(f"the interpreter run failed (exit {proc.returncode}):\n{err.read_text()[-6000:]}")
    return json.loads(out.read_text().strip().splitlines()[-1])


@pytest.fixture(scope="module")
def interpreted(tmp_path_factory):
    """Results of every interpreter case, by name: kernel and model cases in two concurrent subprocesses."""
    kernels = {"scan_check": {"kind": "scan_check"}}
    kernels.update({f"kernel/{k}": {"kind": "kernel", **v} for k, v in KERNEL_CASES.items()})
    models = {f"model/{k}": {"kind": "model", "config": c, "opts": o, "size": s, "settings": MODEL_SETTINGS,
                             "gpu_data_movement": k.endswith("gpu-path")} for k, (c, o, s) in MODEL_CASES.items()}
    folder = tmp_path_factory.mktemp("triton_interpreter")
    runs = [(list(cases), start_cases(list(cases.values()), folder / kind))
            for kind, cases in (("kernels", kernels), ("models", models))]
    try:
        return {name: result for names, started in runs for name, result in zip(names, finish_cases(started))}
    finally:
        for _, (proc, _, _) in runs:       # after a failure or a timeout: no run left behind
            proc.kill()
            proc.wait()


def test_interpreter_scan_is_triton_scan(interpreted):
    """The vectorised interpreter scan equals Triton's element-by-element one, and the kernel's three combine
    functions compute their recurrences (float64)."""
    assert interpreted["scan_check"]["max_diff"] < 1e-14
    assert interpreted["scan_check"]["recurrence_err"] < 1e-14


@pytest.mark.parametrize("name", KERNEL_CASES)
def test_triton_matches_reference(interpreted, name):
    case, result = KERNEL_CASES[name], interpreted[f"kernel/{name}"]
    assert result["finite"] and result["dtypes_ok"], result
    expected = {"out", "u", "delta", "A", "B", "C", *(k for k, on in zip(("D", "z", "delta_bias"), case["options"])
                                                       if on)}
    assert set(result["errors"]) == expected
    assert max(result["errors"].values()) <= TOL[case["dtype"]], result["errors"]
    if not case.get("edge"):  # several chunks, the last one partial
        assert result["grid"]["chunks"] >= 2 and case["L"] % result["grid"]["chunk"] != 0


def test_kernel_cases_cover_the_grid():
    """G in {1, 4} x N in {1, 16}, with and without D, z, bias; several chunks; several channel blocks per group."""
    seen = {(c.get("groups", 4) if c["layout"] == "grouped" else 1, c["N"], c["options"][:3])
            for c in KERNEL_CASES.values() if c["dtype"] == "float32"}
    for g in (1, 4):
        for n in (1, 16):
            assert (g, n, ALL[:3]) in seen and (g, n, NONE[:3]) in seen, (g, n)


def test_default_settings_use_several_blocks_per_group(interpreted):
    for name in ("defaults-N16", "defaults-N1"):
        grid = interpreted[f"kernel/{name}"]["grid"]
        assert grid["blocks_per_group"] >= 3 and grid["chunks"] == 2, (name, grid)


@pytest.mark.parametrize("name", MODEL_CASES)
def test_model_with_triton_backend_matches_torch(interpreted, name):
    result = interpreted[f"model/{name}"]
    assert result["built_backend"] == "triton" and result["scan_modules"] > 0
    assert max(result["errors"].values()) <= 1e-5, result["errors"]


# ----------------------------------------------------------------------------------------------------------------------
# Selection (this process; its kernels, if imported, are built for the GPU)
# ----------------------------------------------------------------------------------------------------------------------
def fake_cuda_input(dtype=torch.float32):
    """What the dispatcher reads of a CUDA tensor (device, dtype), without a GPU."""
    return types.SimpleNamespace(is_cuda=True, device=torch.device("cuda"), dtype=dtype)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs CPU tensors")
def test_triton_on_cpu_tensors_says_how_to_interpret():
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1") as info:
        selective_scan(**make_inputs("grouped", 2, 4, 5), backend="triton")
    assert "'triton'" in str(info.value) and "backend='torch'" in str(info.value)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="the interpreter runs CPU tensors")
def test_triton_interpret_set_too_late_is_named(monkeypatch):
    scan_ops._triton_module()  # built for the GPU
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(RuntimeError, match="set after models.ops.selective_scan_triton had been imported"):
        selective_scan(**make_inputs("grouped", 2, 4, 5), backend="triton")


def test_triton_without_the_package_says_how_to_install(monkeypatch):
    def missing():
        raise ImportError("No module named 'triton'")

    monkeypatch.setattr(scan_ops, "_triton_module", missing)
    with pytest.raises(RuntimeError, match="triton package did not import.*pip install triton"):
        selective_scan(**make_inputs("grouped", 2, 4, 5), backend="triton")
    assert "triton" not in available_backends()
    assert scan_ops._auto_backend(fake_cuda_input())[0] == "torch"


def test_triton_rejects_integer_inputs():
    assert "float32, bfloat16, float16 or float64" in scan_ops._triton_unavailable(torch.device("cuda"), torch.int32)


def test_environment_selects_triton(monkeypatch):
    monkeypatch.setenv(scan_ops.BACKEND_ENV, "triton")
    assert scan_ops._resolve_backend("auto", fake_cuda_input()) == "triton"
    assert scan_ops._resolve_backend("torch", fake_cuda_input()) == "torch"


def test_auto_prefers_the_cuda_extension_then_triton_then_torch(monkeypatch, caplog):
    monkeypatch.delenv(scan_ops.BACKEND_ENV, raising=False)
    scan_ops._log_auto_choice.cache_clear()
    cpu = torch.zeros(1, 2, 3)
    assert scan_ops._auto_backend(cpu) == ("torch", "inputs on cpu")
    monkeypatch.setattr(scan_ops, "selective_scan_cuda", None)
    assert scan_ops._auto_backend(fake_cuda_input()) == ("triton", "selective_scan_cuda not installed")
    monkeypatch.setattr(scan_ops, "selective_scan_cuda", types.SimpleNamespace())
    assert scan_ops._auto_backend(fake_cuda_input())[0] == "cuda"
    assert scan_ops._auto_backend(fake_cuda_input(torch.float64)) == ("triton", "inputs in torch.float64")
    with caplog.at_level(logging.INFO, logger=scan_ops.__name__):  # logged once per choice
        for _ in range(3):
            scan_ops._resolve_backend("auto", fake_cuda_input())
    assert [r.getMessage() for r in caplog.records] == ["selective_scan: backend 'auto' uses 'cuda' "
                                                        "(selective_scan_cuda installed)"]


def test_config_accepts_triton():
    from utils.config import ConfigError, load_config

    assert load_config(REPO / "configs/mtmamba_nyud.yml", ["model.scan_backend=triton"]).model.scan_backend == "triton"
    with pytest.raises(ConfigError, match="scan_backend"):
        load_config(REPO / "configs/mtmamba_nyud.yml", ["model.scan_backend=tritonx"])


# ----------------------------------------------------------------------------------------------------------------------
# The GPU build, without a GPU: both kernels compile for sm_90 (H100/H200) with the launch configuration of the
# decoder's N = 16 shapes, and ptxas (shipped with Triton) reports no register spills
# ----------------------------------------------------------------------------------------------------------------------
def compile_for_sm90(kernel, constexprs: dict, num_warps: int) -> str:
    """ptxas -v report of ``kernel`` compiled for sm_90: float32 tensors, int32 sizes and strides, unit strides along
    L specialised as Triton does at launch."""
    import re
    import subprocess
    import tempfile

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {name: "constexpr" if name in constexprs else "*fp32" if name.endswith("_ptr") else "i32"
                 for name in kernel.arg_names}
    compiled = triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})
    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as ptx:
        ptx.write(compiled.asm["ptx"])
        ptx.flush()
        report = subprocess.run([str(ptxas), "-v", "--gpu-name=sm_90a", ptx.name, "-o", os.devnull],
                                capture_output=True, text=True, check=True).stderr
    return " ".join(re.findall(r"\d+ bytes spill stores|Used \d+ registers", report))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="kernels built for the interpreter")
@pytest.mark.skipif(not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists(),
                    reason="Triton's NVIDIA backend (ptxas) is not installed")
def test_kernels_compile_for_hopper_without_spills():
    import models.ops.selective_scan_triton as st

    cfg = st.launch_config(8, 4, 384, 16128, 16, torch.device("cpu"))  # decoder stage 2 (K·D = 1536, L = 16128)
    assert (cfg["chunk"], cfg["block_fwd"], cfg["block_bwd"]) == (64, 2, 1)
    flags = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, B_VARIABLE=True, C_VARIABLE=True, CHUNK=64,
                 NP=16, COMPUTE=triton.language.float32, su_l=1, sdt_l=1, sz_l=1, sB_l=1, sC_l=1, sB_d=0, sC_d=0)
    forward = compile_for_sm90(st._selective_scan_fwd_kernel,
                               {**flags, "so_l": 1, "SAVE_STATES": True, "BLOCK_D": cfg["block_fwd"]}, cfg["warps_fwd"])
    backward = compile_for_sm90(st._selective_scan_bwd_kernel,
                                {**flags, "sdo_l": 1, "ATOMIC_BC": True, "BLOCK_D": cfg["block_bwd"]}, cfg["warps_bwd"])
    for report in (forward, backward):
        assert "0 bytes spill stores" in report, report


def test_bench_floor_is_performance_md_floor():
    """scripts/bench_scan.py's floor reproduces PERFORMANCE.md §4.2 for the 39 scans of one NYUD image (fp32):
    forward 2.0 ms of memory and 2.3 ms of exps, backward 3.4 ms and 4.5 ms."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_scan", REPO / "scripts" / "bench_scan.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    stages = [bench.GPU_SHAPES[s][:2] for s in ("stage0", "stage1", "stage2")]
    fwd = sum(bench.floor_seconds(13, dim, L, 4, False, 3350, 4.0) for dim, L in stages)
    both = sum(bench.floor_seconds(13, dim, L, 4, True, 3350, 4.0) for dim, L in stages)
    assert fwd == pytest.approx(2.25e-3, rel=0.01) and both - fwd == pytest.approx(4.5e-3, rel=0.01)
    memory_only = sum(bench.floor_seconds(13, dim, L, 4, True, 3350, 1e9) for dim, L in stages)
    assert memory_only == pytest.approx(2.0e-3 + 3.4e-3, rel=0.02)
    assert bench.required_bytes(1, 10, 7, 2, 4, False) == 10 * 7 * 12 + 2 * 7 * 2 * 16 * 4


def test_flop_counter_knows_the_triton_function():
    """utils/flops.py and bench_model.py find the scan in traces and profiles by these names."""
    assert scan_ops._triton_module().SelectiveScanTritonFn.__name__ in scan_ops.SCAN_FUNCTION_NAMES
