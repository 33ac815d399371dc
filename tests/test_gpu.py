"""GPU checks of the scan backends and the full-size model; skipped without CUDA (run them where a GPU is available,
e.g. through scripts/gpu_check.sh)."""
import time

import pytest
import torch

from models import build_model
from models.ops.selective_scan import available_backends
from utils.config import load_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def set_scan_backend(model, backend):
    for m in model.modules():
        if hasattr(m, "scan_backend"):
            m.scan_backend = backend


def full_precision(seed=0):
    """Seeded, with TF32 off: backend comparisons then measure the scans, not the matmuls."""
    torch.manual_seed(seed)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def assert_backend_matches_torch(model, inputs, backend, name):
    """Every task's output with ``backend`` scans within 1e-4 relative of the torch backend's (model in eval)."""
    outs = {}
    with torch.no_grad():
        for b in (backend, "torch"):
            set_scan_backend(model, b)
            outs[b] = model(*inputs)
    for t in outs["torch"]:
        a, ref = outs[backend][t], outs["torch"][t]
        rel = ((a - ref).norm() / ref.norm()).item()
        print(f"{name}, {t}: {backend} vs torch backend rel. error {rel:.2e}")
        assert rel < 1e-4
    set_scan_backend(model, backend)


@pytest.mark.skipif("cuda" not in available_backends(), reason="needs the selective_scan_cuda extension")
def test_full_mtmamba_nyud_on_gpu():
    """Full MTMamba (Swin-L, NYUD, 448×576): cuda and torch backends agree; a train step runs and is timed."""
    full_precision()
    model = build_model(load_config("configs/mtmamba_nyud.yml", ["model.pretrained=false"])).cuda().eval()
    image = torch.randn(1, 3, 448, 576, device="cuda")
    assert_backend_matches_torch(model, (image,), "cuda", "full model")

    model.train()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(4):
        torch.cuda.synchronize()
        start = time.perf_counter()
        out = model(image)
        sum(v.float().square().mean() for v in out.values()).backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    assert all(torch.isfinite(v).all() for v in out.values())
    print(f"full model fwd+bwd, batch 1, 448x576, fp32: {1000 * min(times[1:]):.0f} ms/iter, "
          f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")


@pytest.mark.skipif("cuda" not in available_backends(), reason="needs the selective_scan_cuda extension")
def test_full_mambaseg_ddd17_on_gpu():
    """Full MambaSeg (DDD17, 200×346; d_state 1 encoder scans, channel-axis TSSM scans): cuda and torch backends
    agree; a bf16 train step runs and is timed."""
    full_precision()
    model = build_model(load_config("configs/mambaseg_ddd17.yml", ["model.pretrained=false"])).cuda().eval()
    image, events = (x.cuda() for x in model.example_inputs(2))
    image.normal_(), events.normal_()
    assert_backend_matches_torch(model, (image, events), "cuda", "MambaSeg DDD17")

    model.train()
    times = []
    for _ in range(4):
        torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(image, events)["semseg"]
        out.float().square().mean().backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        model.zero_grad(set_to_none=True)
    assert torch.isfinite(out).all()
    print(f"MambaSeg DDD17 fwd+bwd, batch 2, bf16: {1000 * min(times[1:]):.0f} ms/iter")


needs_triton = pytest.mark.skipif("triton" not in available_backends(), reason="needs triton")


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("layout", ["grouped", "3d", "const", "mixed"])
@pytest.mark.parametrize("N,L", [(16, 63), (16, 4100), (1, 4100), (4, 1000)])
def test_triton_matches_torch_on_gpu(layout, N, L, dtype):
    """The compiled Triton kernels (forward and every gradient) against the torch backend, both on the GPU, given
    the same inputs; fp32 within 1e-4 (fast exp/log on the GPU), bf16 within 1e-2 (bf16-rounded outputs/gradients)."""
    from tests.ops.test_selective_scan import assert_close, make_inputs, run

    inputs = make_inputs(layout, 48, N, L, batch=2)
    dout = torch.randn(inputs["u"].shape, dtype=torch.float64)
    got, ref = (run(inputs, dtype, backend, dout, "cuda") for backend in ("triton", "torch"))
    assert_close(got, ref, 1e-4 if dtype == torch.float32 else 1e-2)


@needs_triton
def test_full_mtmamba_nyud_triton_on_gpu():
    """Full MTMamba (Swin-L, NYUD, 448×576): triton and torch backends agree; a bf16 train step is finite."""
    full_precision()
    cfg = load_config("configs/mtmamba_nyud.yml", ["model.pretrained=false", "model.scan_backend=triton"])
    model = build_model(cfg).cuda().eval()
    image = torch.randn(1, 3, 448, 576, device="cuda")
    assert_backend_matches_torch(model, (image,), "triton", "full model")
    model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(image)
    sum(v.float().square().mean() for v in out.values()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
