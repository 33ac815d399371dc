"""Bad input fails with a DatasetError naming the culprit (path and/or id)."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from data.collate import collate_mil
from data.io import DatasetError
from data.nyud import NYUD_TASKS, NYUDv2
from data.pascal_context import PASCAL_TASKS, PASCALContext
from data.synthetic import write_nyud, write_pascal

SIZE = (18, 24)


@pytest.fixture
def nyud(tmp_path):
    return write_nyud(tmp_path, n_train=2, n_val=1, size=SIZE)


@pytest.fixture
def pascal(tmp_path):
    return write_pascal(tmp_path, n_train=2, n_val=1, size=SIZE)


def test_missing_root(tmp_path):
    root = tmp_path / "nowhere" / "NYUDv2"
    with pytest.raises(DatasetError, match=re.escape(str(root))) as exc:
        NYUDv2(root, "train", NYUD_TASKS)
    assert "gt_sets" in str(exc.value) and "NYUDv2.tar.gz" in str(exc.value)
    with pytest.raises(DatasetError, match="PASCALContext.tar.gz") as exc:
        PASCALContext(tmp_path / "PASCALContext", "train", PASCAL_TASKS)
    assert "ImageSets/Context" in str(exc.value)


def test_missing_task_folder(nyud):
    (nyud / "depth" / "0002.npy").unlink()
    for f in (nyud / "depth").iterdir():
        f.unlink()
    (nyud / "depth").rmdir()
    with pytest.raises(DatasetError, match="lacks depth"):
        NYUDv2(nyud, "val", NYUD_TASKS)
    assert len(NYUDv2(nyud, "val", ["semseg"])) == 1   # only the requested tasks' files are needed


def test_missing_split_file(nyud, pascal):
    (nyud / "gt_sets" / "val.txt").unlink()
    with pytest.raises(DatasetError, match=re.escape(str(nyud / "gt_sets" / "val.txt"))):
        NYUDv2(nyud, "val", NYUD_TASKS)
    (pascal / "ImageSets" / "Context" / "train.txt").unlink()
    with pytest.raises(DatasetError, match=re.escape(str(pascal / "ImageSets" / "Context" / "train.txt"))):
        PASCALContext(pascal, "train", PASCAL_TASKS)


def test_blank_line_in_split(nyud):
    (nyud / "gt_sets" / "train.txt").write_text("0002\n\n0003\n")
    with pytest.raises(DatasetError, match="line 2 is blank"):
        NYUDv2(nyud, "train", NYUD_TASKS)


def test_missing_task_file(nyud, pascal):
    path = nyud / "normals" / "0003.png"
    path.unlink()
    with pytest.raises(DatasetError, match=rf"id 0003: missing normals file {re.escape(str(path))}"):
        NYUDv2(nyud, "train", NYUD_TASKS)
    path = pascal / "sal_distill" / "2008_000003.png"
    path.unlink()
    with pytest.raises(DatasetError, match=rf"id 2008_000003: missing sal file {re.escape(str(path))}"):
        PASCALContext(pascal, "train", PASCAL_TASKS)
    (pascal / "semseg" / "pascal-context" / "2008_000003.png").unlink()
    with pytest.raises(DatasetError, match=r"id 2008_000003: missing semseg file .*VOC12.*pascal-context"):
        PASCALContext(pascal, "train", ["semseg"])


def test_corrupt_image(nyud, pascal):
    path = nyud / "images" / "0002.png"
    path.write_bytes(b"not a png")
    ds = NYUDv2(nyud, "train", NYUD_TASKS)
    with pytest.raises(DatasetError, match=rf"id 0002: cannot read {re.escape(str(path))}"):
        ds[0]
    # through DataLoader workers the message (id and path) reaches the main process
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=1, collate_fn=collate_mil, timeout=60)
    batches = iter(loader)
    with pytest.raises(DatasetError, match=r"id 0002: cannot read"):
        next(batches)
    del batches  # stop the worker now rather than at garbage collection
    mat = pascal / "human_parts" / "2008_000002.mat"
    mat.write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=rf"id 2008_000002: cannot read {re.escape(str(mat))}"):
        PASCALContext(pascal, "train", ["human_parts"], parts_cache_dir=pascal.parent / "cache")


def test_label_size_mismatch(nyud, pascal):
    path = nyud / "segmentation" / "0002.png"
    Image.fromarray(np.zeros((SIZE[0] + 1, SIZE[1]), np.uint8)).save(path)
    with pytest.raises(DatasetError, match=rf"id 0002: {re.escape(str(path))} is 19x24 but its image is 18x24"):
        NYUDv2(nyud, "train", NYUD_TASKS)[0]
    path = pascal / "pascal-context" / "trainval" / "2008_000002.mat"
    import scipy.io
    scipy.io.savemat(path, {"LabelMap": np.zeros((5, 5), np.uint16)})
    with pytest.raises(DatasetError, match=rf"id 2008_000002: {re.escape(str(path))} is 5x5"):
        PASCALContext(pascal, "train", ["edge"])[0]


def test_wrong_png_mode(nyud):
    path = nyud / "edge" / "0002.png"
    Image.fromarray(np.zeros(SIZE + (3,), np.uint8)).save(path)
    with pytest.raises(DatasetError, match=rf"id 0002: cannot read {re.escape(str(path))}.*single-channel"):
        NYUDv2(nyud, "train", ["edge"])[0]


def test_unknown_task_and_split(nyud, pascal):
    with pytest.raises(DatasetError, match=r"unknown task\(s\) \['human_parts'\] for NYUDv2"):
        NYUDv2(nyud, "train", ["semseg", "human_parts"])
    with pytest.raises(DatasetError, match=r"unknown task\(s\) \['depth'\] for PASCALContext"):
        PASCALContext(pascal, "train", ["depth"])
    with pytest.raises(DatasetError, match="split must be"):
        NYUDv2(nyud, "test", ["semseg"])


def test_unknown_part_name(pascal):
    import scipy.io
    path = pascal / "human_parts" / "2008_000002.mat"
    anno = scipy.io.loadmat(str(path))["anno"]
    anno[0][0][1][0][0][3][0][0][0] = np.array(["tail"])
    scipy.io.savemat(path, {"anno": anno})
    ds = PASCALContext(pascal, "train", ["human_parts", "sal"])
    with pytest.raises(DatasetError, match=rf"id 2008_000002: {re.escape(str(path))}: unknown person part name 'tail'"):
        ds[0]


def test_label_out_of_range_names_file_and_id(nyud, pascal):
    Image.fromarray(np.full(SIZE, 41, np.uint8)).save(nyud / "segmentation" / "0001.png")   # stored 1..40 only
    with pytest.raises(DatasetError, match=r"id 0001: .*segmentation/0001\.png has label values 40 outside 0\.\.39 "
                                           r"\(255 = ignore\)"):
        NYUDv2(nyud, "val", ["semseg"])[0]
    voc = next((pascal / "semseg" / "VOC12").glob("*.png"))
    label = np.array(Image.open(voc))
    label[0, :3] = [21, 30, 255]
    Image.fromarray(label).save(voc)
    ds = PASCALContext(pascal, ["train", "val"], ["semseg"])
    with pytest.raises(DatasetError, match=rf"id {voc.stem}: .* has label values 21, 30 outside 0\.\.20"):
        ds[ds.ids.index(voc.stem)]


def test_empty_split_and_duplicate_ids_are_rejected(nyud):
    split = nyud / "gt_sets" / "val.txt"
    split.write_text("\n")
    with pytest.raises(DatasetError, match=r"split file .*val\.txt is empty: it must list one image id per line"):
        NYUDv2(nyud, "val", NYUD_TASKS)
    split.write_text("0001\n0002\n0001\n")
    with pytest.raises(DatasetError, match=r"val\.txt: id 0001 is listed twice \(lines 1 and 3\)"):
        NYUDv2(nyud, "val", NYUD_TASKS)
