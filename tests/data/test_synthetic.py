"""The synthetic writers produce the released formats (DATA.md §2.3, §3, §6); the CLI works."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tests.data.conftest import NYUD_SIZE

REPO = Path(__file__).resolve().parents[2]


def test_nyud_formats(nyud_root):
    assert (nyud_root / "gt_sets" / "val.txt").read_text() == "0001\n0002\n"
    assert (nyud_root / "gt_sets" / "train.txt").read_text().split() == ["0003", "0004", "0005", "0006"]
    for folder, mode in (("images", "RGB"), ("segmentation", "L"), ("normals", "RGB"), ("edge", "L")):
        with Image.open(nyud_root / folder / "0001.png") as im:
            assert (im.format, im.mode, im.size) == ("PNG", mode, NYUD_SIZE[::-1]), folder
    assert set(np.unique(np.asarray(Image.open(nyud_root / "edge" / "0001.png")))) == {0, 255}
    depth = np.load(nyud_root / "depth" / "0001.npy")
    assert depth.ndim == 2 and depth.dtype == np.float32 and depth.shape == NYUD_SIZE
    assert (depth == 0).any() and depth.max() <= 10.5 and depth[depth > 0].min() >= 0.5


def test_pascal_formats(pascal_root):
    ids = (pascal_root / "ImageSets" / "Context" / "train.txt").read_text().split()
    assert ids == ["2008_000002", "2008_000003", "2008_000004", "2008_000005"]
    assert (pascal_root / "ImageSets" / "Parts").is_dir()
    with Image.open(pascal_root / "JPEGImages" / "2008_000002.jpg") as im:
        assert (im.format, im.mode) == ("JPEG", "RGB")
    assert (pascal_root / "semseg" / "VOC12" / "2008_000002.png").is_file()
    assert (pascal_root / "semseg" / "pascal-context" / "2008_000003.png").is_file()
    for folder, mode in (("normals_distill", "RGB"), ("sal_distill", "L")):
        with Image.open(pascal_root / folder / "2008_000002.png") as im:
            assert im.mode == mode
    lm = scipy.io.loadmat(str(pascal_root / "pascal-context" / "trainval" / "2008_000002.mat"))
    assert [k for k in lm if not k.startswith("__")] == ["LabelMap"] and lm["LabelMap"].dtype == np.uint16
    # anno struct: field order and the 0×0 empty parts (DATA.md §3.6.1)
    anno = scipy.io.loadmat(str(pascal_root / "human_parts" / "2008_000004.mat"))["anno"]
    assert anno.dtype.names == ("imname", "objects") and str(anno[0][0][0][0]) == "2008_000004"
    objs = anno[0][0][1]
    assert objs.shape == (1, 3) and objs.dtype.names == ("class", "class_ind", "mask", "parts")
    person, dog, cat = objs[0]
    assert person[1][0][0] == 15 and person[3].shape == (1, 24) and person[3].dtype.names == ("part_name", "mask")
    assert dog[1][0][0] == 12 and dog[3].shape == (0, 0) and cat[2].sum() == 0


def test_cli(tmp_path):
    for name, folder in (("nyud", "NYUDv2"), ("pascal", "PASCALContext")):
        out = subprocess.run([sys.executable, str(REPO / "scripts" / "make_synthetic_dataset.py"), "--dataset", name,
                              "--out", str(tmp_path), "--n-train", "1", "--n-val", "1", "--size", "12x16"],
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == str(tmp_path / folder)
    with Image.open(tmp_path / "NYUDv2" / "images" / "0002.png") as im:
        assert im.size == (16, 12)
    bad = subprocess.run([sys.executable, str(REPO / "scripts" / "make_synthetic_dataset.py"), "--dataset", "nyud",
                          "--out", str(tmp_path), "--size", "12by16"], capture_output=True, text=True)
    assert bad.returncode == 2 and "HxW" in bad.stderr


def test_cli_rejects_empty_splits_and_refuses_to_overwrite(tmp_path, capsys):
    from scripts.make_synthetic_dataset import main as make
    for args in (["--n-val", "-1"], ["--n-train", "0"]):
        with pytest.raises(SystemExit) as e:
            make(["--dataset", "nyud", "--out", str(tmp_path), *args])
        assert e.value.code == 2 and "a split needs at least 1 image" in capsys.readouterr().err
    make(["--dataset", "nyud", "--out", str(tmp_path), "--n-train", "1", "--n-val", "1", "--size", "12x16"])
    (tmp_path / "NYUDv2" / "gt_sets" / "train.txt").write_text("0002\nmine\n")
    with pytest.raises(SystemExit):
        make(["--dataset", "nyud", "--out", str(tmp_path), "--n-train", "1", "--n-val", "1"])
    assert "NYUDv2 already exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "NYUDv2" / "gt_sets" / "train.txt").read_text() == "0002\nmine\n"     # untouched
    make(["--dataset", "nyud", "--out", str(tmp_path), "--n-train", "1", "--n-val", "1", "--size", "12x16", "--force"])
    assert (tmp_path / "NYUDv2" / "gt_sets" / "train.txt").read_text() == "0002\n"
