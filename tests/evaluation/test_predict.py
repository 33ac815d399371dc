"""--run_mode predict: any image size and mode, the evaluation path's predictions, released checkpoints, 2 ranks.

Tiny models (Swin embed 16, one block per stage, 32x32 TEST.SCALE) and tiny images keep every test cheap; a model
run on the evaluation path gives the reference predictions for images of the synthetic datasets.
"""
from __future__ import annotations

import collections
import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

import main as cli
from data import build_val_loader
from data.synthetic import write_nyud, write_pascal
from data import transforms
from data.transforms import PadImage
from evaluation.evaluator import evaluate, load_trained_model
from evaluation.predict import collect_inputs, output_names, predict
from models import build_model
from utils.config import load_config

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "demo_nyud.yml"
TINY = ["model.backbone_kwargs.embed_dim=16", "model.backbone_kwargs.num_heads=[1,1,2,2]",
        "model.backbone_kwargs.depths=[1,1,1,1]", "model.stm_blocks=1", "TRAIN.SCALE=[32,32]", "TEST.SCALE=[32,32]",
        "valBatch=2", "nworkers=0", "eval_boundary=false"]
PASCAL = ["train_db_name=PASCALContext", "val_db_name=PASCALContext",
          "task_dictionary={include_semseg: true, include_human_parts: true, include_sal: true, "
          "include_normals: true, include_edge: true}"]
CPU = torch.device("cpu")


def tiny_checkpoint(path: Path, opts: list[str], seed: int = 0) -> Path:
    torch.manual_seed(seed)
    torch.save({"model": build_model(load_config(DEMO, opts)).state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def nyud(tmp_path_factory):
    """(config, checkpoint) of a tiny NYUD model."""
    root = tmp_path_factory.mktemp("predict_nyud")
    return load_config(DEMO, TINY), tiny_checkpoint(root / "nyud.pth", TINY)


def read(path: Path) -> np.ndarray:
    """A PNG as stored (grey, 16-bit, or RGB from OpenCV's BGR)."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image[..., ::-1] if image.ndim == 3 else image


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


# --------------------------------------------------------------------------------------------------------
# Any size, any mode


def test_any_size_and_mode_gives_outputs_of_the_input_size(nyud, tmp_path, caplog):
    cfg, ckpt = nyud
    rng = np.random.default_rng(0)
    src = tmp_path / "in"
    src.mkdir()
    rgb = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(rng.integers(0, 256, (1, 1, 3), dtype=np.uint8)).save(src / "one.png")
    Image.fromarray(rng.integers(0, 256, (17, 3000), dtype=np.uint8)).save(src / "wide.jpg")       # grey JPEG
    Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(src / "nyud480.webp", lossless=True)
    Image.fromarray(rgb[..., 0]).save(src / "grey.png")
    Image.fromarray(np.repeat(rgb[..., :1], 3, axis=2)).save(src / "grey_as_rgb.bmp")
    Image.fromarray(np.dstack([rgb, rng.integers(0, 256, (20, 24), dtype=np.uint8)])).save(src / "rgba.png")
    Image.fromarray(rgb).save(src / "rgb.png")
    # EXIF orientation 6 (rotate 90° clockwise to display): a stored 20x24 image is displayed 24x20
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(src / "rotated.jpg", exif=exif, quality=95)
    with Image.open(src / "rotated.jpg") as im:                                 # the decoded pixels, as stored
        Image.fromarray(np.rot90(np.asarray(im), k=-1)).save(src / "upright.png")
    (src / "notes.txt").write_text("not an image")
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))

    out = tmp_path / "out"
    caplog.set_level(logging.INFO)
    summary = predict(cfg, ckpt, [src], out, save_raw=True)

    sizes = {"one": (1, 1), "wide": (17, 3000), "nyud480": (480, 640), "grey": (20, 24), "grey_as_rgb": (20, 24),
             "rgba": (20, 24), "rgb": (20, 24), "rotated": (24, 20), "upright": (24, 20)}
    assert {r["name"]: tuple(r["size"]) for r in summary["images"]} == sizes
    for name, (h, w) in sizes.items():
        raw = {t: np.load(out / t / f"{name}.npy") for t in ("semseg", "depth", "normals", "edge")}
        assert raw["semseg"].shape == (40, h, w) and raw["normals"].shape == (3, h, w)
        assert raw["depth"].shape == raw["edge"].shape == (1, h, w)
        # the saved maps: input-sized, in the documented encodings (independent formulas here)
        semseg, depth, normals, edge = (read(out / t / f"{name}.png") for t in ("semseg", "depth", "normals", "edge"))
        assert np.array_equal(semseg, raw["semseg"].argmax(0))
        assert depth.dtype == np.uint16 and np.abs(depth - np.round(1000 * raw["depth"][0].clip(0))).max() <= 1
        unit = raw["normals"] / np.linalg.norm(raw["normals"], axis=0).clip(1e-12)
        assert normals.shape == (h, w, 3)
        assert np.abs(normals - np.round((unit.transpose(1, 2, 0) + 1) / 2 * 255)).max() <= 1
        assert edge.dtype == np.uint8 and np.abs(edge - np.floor(255 * sigmoid(raw["edge"][0]))).max() <= 1
        for t in ("semseg", "depth"):
            assert read(out / t / "color" / f"{name}.png").shape == (h, w, 3)
        assert read(out / "panels" / f"{name}.png").shape[1] > 5 * 32                # input + 4 tasks side by side
    # grey, RGBA and EXIF-rotated images are predicted as their RGB / upright versions
    for a, b in (("grey", "grey_as_rgb"), ("rgba", "rgb"), ("rotated", "upright")):
        for t in ("semseg", "depth"):
            assert np.array_equal(np.load(out / t / f"{a}.npy"), np.load(out / t / f"{b}.npy")), (a, b, t)
    resized = {r["name"]: r["resized_to"] for r in summary["images"] if r["resized_to"]}
    assert resized == {"wide": [1, 32], "nyud480": [24, 32]}
    assert "resized to fit the model's input" in caplog.text and "wide (17x3000 -> 1x32)" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for bad in ("notes.txt", "broken.png"):
        assert any(f"skipped {src / bad}" in m for m in warnings), bad
    assert sorted(Path(s["input"]).name for s in summary["skipped"]) == ["broken.png", "notes.txt"]
    assert read(out / "legend_semseg.png").ndim == 3
    assert json.loads((out / "predictions.json").read_text()) == json.loads(json.dumps(summary))


def test_inputs_from_files_folders_and_globs_each_once_with_unique_names(tmp_path):
    for rel in ("a/x.png", "a/y.jpg", "a/.hidden.png", "b/x.png", "b/sub/z.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    paths = collect_inputs([tmp_path / "a", str(tmp_path / "b" / "**" / "*.png"), tmp_path / "a/../a/x.png"])
    assert paths == [tmp_path / "a/x.png", tmp_path / "a/y.jpg", tmp_path / "b/sub/z.png", tmp_path / "b/x.png"]
    assert output_names(paths) == ["x", "y", "z", "x_2"]


def test_empty_inputs_and_missing_paths_are_errors(nyud, tmp_path, capsys):
    cfg, ckpt = nyud
    (tmp_path / "empty").mkdir()
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no input files"):
        predict(cfg, ckpt, [], tmp_path / "out")
    with pytest.raises(ValueError, match="no input files"):
        predict(cfg, ckpt, [tmp_path / "empty", str(tmp_path / "*.jpg")], tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="nope.png: no such file"):
        predict(cfg, ckpt, [tmp_path / "nope.png"], tmp_path / "out")
    with pytest.raises(ValueError, match="none of the 1 input file"):
        predict(cfg, ckpt, [tmp_path / "text"], tmp_path / "out")
    argv = ["--run_mode", "predict", "--config_exp", str(DEMO), "--trained_model", str(ckpt), "--opts", *TINY]
    assert cli.main([*argv, "--inputs", str(tmp_path / "empty"), "--out", str(tmp_path / "out")]) == 1
    assert "error: ValueError: no input files" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main([*argv, "--out", str(tmp_path / "out")])                           # no --inputs
    assert "needs --inputs" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------
# The evaluation path


@pytest.mark.parametrize("dataset", ["NYUD", "PASCALContext"])
def test_predictions_equal_the_evaluation_path(dataset, tmp_path):
    opts = [*TINY, f"db_root={tmp_path / 'data'}", *(PASCAL if dataset == "PASCALContext" else [])]
    if dataset == "NYUD":
        root = write_nyud(tmp_path / "data", n_train=1, n_val=2, size=(28, 30))
        files = [root / "images" / f"{i}.png" for i in ("0001", "0002")]
    else:
        root = write_pascal(tmp_path / "data", n_train=1, n_val=2, size=(28, 30))
        ids = (root / "ImageSets" / "Context" / "val.txt").read_text().split()
        files = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
    cfg = load_config(DEMO, opts)
    ckpt = tiny_checkpoint(tmp_path / "model.pth", opts, seed=1)
    tasks = list(cfg.TASKS.NAMES)

    # the evaluation path (infer): the val loader, evaluate(), its saved maps; the outputs recorded per batch
    _, model, _ = load_trained_model(cfg, ckpt, CPU)
    outputs = []
    model.register_forward_hook(lambda module, args, out: outputs.append({t: v.clone() for t, v in out.items()}))
    loader = build_val_loader(cfg)
    evaluate(model, loader, cfg, CPU, save_dir=tmp_path / "infer", save_tasks=tasks)
    reference = {}
    for batch, out in zip(loader, outputs):
        for i, name in enumerate(batch["meta"]["img_name"]):
            h, w = (int(v) for v in batch["meta"]["img_size"][i])
            top, _, left, _ = PadImage.offsets(h, w, cfg.TEST.SCALE)
            reference[name] = {t: out[t][i, :, top:top + h, left:left + w].numpy() for t in tasks}

    predict(cfg, ckpt, files, tmp_path / "pred", batch_size=int(cfg.valBatch), save_raw=True)
    assert len(reference) == 2
    for name, arrays in reference.items():
        for t in tasks:
            assert np.array_equal(np.load(tmp_path / "pred" / t / f"{name}.npy"), arrays[t]), (name, t)
            # infer --save_predictions writes the same maps and pictures
            saved = read(tmp_path / "infer" / t / f"{name}.png")
            assert np.array_equal(read(tmp_path / "pred" / t / f"{name}.png"), saved), (name, t)
            color = tmp_path / "infer" / t / "color" / f"{name}.png"
            assert color.exists() == (t in ("semseg", "human_parts", "depth"))
            if color.exists():
                assert np.array_equal(read(tmp_path / "pred" / t / "color" / f"{name}.png"), read(color))


# --------------------------------------------------------------------------------------------------------
# Released checkpoints


def test_predict_from_an_official_checkpoint(tmp_path):
    from tests.test_official_checkpoints import TINY as OFFICIAL_TINY
    from tests.test_official_checkpoints import randomize, tiny_model
    from utils.official import ours_to_official

    config = REPO / "configs" / "mtmamba_plus_nyud.yml"
    scale = ["TRAIN.SCALE=[32,32]", "TEST.SCALE=[32,32]"]
    source = randomize(tiny_model(config, 0, scale))
    torch.save(ours_to_official(source.state_dict(), source), tmp_path / "mtmamba_plus_tiny.pth.tar")
    rgb = np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")

    out = tmp_path / "out"
    code = cli.main(["--run_mode", "predict", "--config_exp", str(config), "--trained_model",
                     str(tmp_path / "mtmamba_plus_tiny.pth.tar"), "--inputs", str(tmp_path / "photo.png"), "--out",
                     str(out), "--opts", *OFFICIAL_TINY, *scale, "model.swin_pad_mode=timm", "nworkers=0"])
    assert code == 0
    log = (out / "log.txt").read_text()
    assert "official MTMamba_plus checkpoint: converted" in log and "switching model.swin_pad_mode" in log
    image = transforms.test_transforms((32, 32))({"image": rgb.astype(np.float32)})["image"]
    with torch.no_grad():
        want = source(image[None])
    top, _, left, _ = PadImage.offsets(20, 28, (32, 32))
    want_labels = want["semseg"][0, :, top:top + 20, left:left + 28].argmax(0)
    assert np.array_equal(read(out / "semseg" / "photo.png"), want_labels)
    assert read(out / "panels" / "photo.png").ndim == 3


# --------------------------------------------------------------------------------------------------------
# Two ranks


def _record_writes(log_dir: Path):
    """Forked-child hook: every file write (utils.fileio.atomic_write) appended to writes_<rank>.txt."""
    def hook(rank):
        import utils.fileio
        original = utils.fileio.atomic_write

        def atomic_write(path, write):
            with open(log_dir / f"writes_{rank}.txt", "a") as f:
                f.write(f"{path}\n")
            return original(path, write)
        utils.fileio.atomic_write = atomic_write
    return hook


def test_two_ranks_write_the_same_files_once(nyud, tmp_path):
    from tests.engine.test_reliability import run_forked

    _, ckpt = nyud
    src = tmp_path / "in"
    src.mkdir()
    rng = np.random.default_rng(1)
    for k, (h, w) in enumerate([(20, 24), (32, 32), (9, 40), (40, 9), (30, 30)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(src / f"img{k}.png")
    (src / "notes.txt").write_text("x")
    trees = {}
    for world in (1, 2):
        logs = tmp_path / f"writes{world}"
        logs.mkdir()
        out = tmp_path / f"out{world}"
        argv = ["--run_mode", "predict", "--config_exp", str(DEMO), "--trained_model", str(ckpt), "--inputs",
                str(src), "--out", str(out), "--save_raw", "--opts", *TINY]
        assert run_forked(argv, world=world, hook=_record_writes(logs)) == [0] * world
        files = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "log.txt"}
        writes = [Path(line).relative_to(out) for f in sorted(logs.iterdir()) for line in f.read_text().split()]
        assert collections.Counter(writes) == collections.Counter(list(files)), world       # every file written once
        if world == 2:
            assert all((logs / f"writes_{r}.txt").exists() for r in (0, 1))          # both ranks predicted
        trees[world] = files
    assert trees[1].keys() == trees[2].keys() and len(trees[1]) == 5 * (4 * 2 + 2 + 1) + 2
    for path, data in trees[1].items():
        assert trees[2][path] == data, path


# --------------------------------------------------------------------------------------------------------
# Image + event models (MambaSeg)

MAMBASEG = REPO / "configs" / "mambaseg_ddd17.yml"
MAMBASEG_TINY = ["TRAIN.SCALE=[26,34]", "TEST.SCALE=[26,34]", "model.mambaseg.dims=[16,16,32,32]",
                 "model.mambaseg.depths=[1,1,1,1]", "model.mambaseg.head_dim=16", "model.encoder_drop_path_rate=0",
                 "nworkers=0"]


def test_mambaseg_pairs_frames_with_event_files(tmp_path):
    """Frames with a .npy grid, a .npz and an .h5 event window: outputs of each frame's size, the predictions of a
    direct forward pass at the built size, a panel with the event picture; missing pairs are named."""
    import h5py

    from data.events import voxel_grid
    from utils.visualize import event_image

    cfg = load_config(MAMBASEG, MAMBASEG_TINY)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    torch.save({"model": model.state_dict()}, tmp_path / "mambaseg.pth")
    rng = np.random.default_rng(0)
    frames, events = tmp_path / "frames", tmp_path / "events"
    frames.mkdir(), events.mkdir()
    grey = rng.integers(0, 256, (26, 34), dtype=np.uint8)
    Image.fromarray(grey).save(frames / "a.png")                            # at the built size
    grid = rng.normal(size=(10, 26, 34)).astype(np.float32)
    np.save(events / "a.npy", grid)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(frames / "b.png")   # another size
    n = 500
    window = {"x": rng.uniform(0, 50, n), "y": rng.uniform(0, 40, n), "t": np.sort(rng.integers(0, 10**6, n)),
              "p": rng.integers(0, 2, n)}
    np.savez(events / "b.npz", **window)
    Image.fromarray(grey).save(frames / "c.png")
    with h5py.File(events / "c.h5", "w") as f:
        for k in ("x", "y", "t", "p"):
            f[f"events/{k}"] = window[k][:300] * (26 / 40 if k == "y" else 34 / 50 if k == "x" else 1)

    out = tmp_path / "out"
    summary = predict(cfg, tmp_path / "mambaseg.pth", [frames], out, events=[events], device=CPU)
    assert [r["name"] for r in summary["images"]] == ["a", "b", "c"]
    assert summary["images"][1]["resized_to"] == [26, 34] and summary["images"][0]["resized_to"] is None
    assert read(out / "semseg" / "a.png").shape == (26, 34) and read(out / "semseg" / "b.png").shape == (40, 50)
    with torch.no_grad():                                                  # frame a: grey in [0, 1], grid as given
        logits = model(torch.from_numpy(grey).float()[None, None] / 255, torch.from_numpy(grid)[None])["semseg"]
    np.testing.assert_array_equal(read(out / "semseg" / "a.png"), logits[0].argmax(0).numpy())
    panel_a = read(out / "panels" / "a.png")
    assert panel_a.shape[1] > 3 * 256                                       # frame | events | semseg
    b_grid = voxel_grid(*(window[k] for k in ("x", "y", "t", "p")), 40, 50)
    assert event_image(b_grid).shape == (3, 40, 50)
    assert summary["images"][2]["events"].endswith("c.h5")

    (events / "c.h5").unlink()
    with pytest.raises(ValueError, match=r"no event file .* named like the frame\(s\) c\.png among --events"):
        predict(cfg, tmp_path / "mambaseg.pth", [frames], out, events=[events], device=CPU)
    with pytest.raises(ValueError, match="give the event file of each image with --events"):
        predict(cfg, tmp_path / "mambaseg.pth", [frames], out, device=CPU)
    np.save(events / "c.npy", grid[:, :20])
    with pytest.raises(ValueError, match=r"c\.npy: a voxel grid of shape \(10, 26, 34\) .* got \(10, 20, 34\)"):
        predict(cfg, tmp_path / "mambaseg.pth", [frames / "c.png"], out, events=[events], device=CPU)
