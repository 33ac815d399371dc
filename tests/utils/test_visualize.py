import cv2
import numpy as np
import pytest
import torch

from data.cityscapes import CITYSCAPES_CLASSES
from data.ddd17 import DDD17_CLASSES
from data.dsec import DSEC_CLASSES
from data.nyud import NYUD_CLASSES
from data.pascal_context import HUMAN_PARTS_CLASSES, PASCAL_CLASSES
from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from utils.visualize import (LABEL_SETS, colorize_labels, denormalize_image, depth_to_image, edge_to_image, label_set,
                             legend, normals_to_image, panel, prediction_grid, prediction_maps, text_patch,
                             voc_colormap)


def ref_voc_color(entry):
    """The VOC devkit colour map (VOClabelcolormap.m): bit 3j+c of the entry is bit 7-j of channel c."""
    return [sum(((entry >> (3 * j + c)) & 1) << (7 - j) for j in range(3)) for c in range(3)]


def contains(image, patch):
    """Whether ``patch`` occurs in ``image`` exactly (the best match of OpenCV's search, checked pixel by pixel)."""
    patch = np.ascontiguousarray(patch)
    _, _, (x, y), _ = cv2.minMaxLoc(cv2.matchTemplate(image, patch, cv2.TM_SQDIFF))
    return np.array_equal(image[y:y + patch.shape[0], x:x + patch.shape[1]], patch)


def test_palettes_per_dataset():
    assert voc_colormap().tolist() == [ref_voc_color(e) for e in range(256)]
    sizes = {("NYUD", "semseg", 40), ("PASCALContext", "semseg", 21), ("PASCALContext", "human_parts", 7),
             ("Cityscapes", "semseg", 19), ("DDD17", "semseg", 6), ("DSEC", "semseg", 11), ("DSEC", "semseg", 19)}
    assert set(LABEL_SETS) == sizes and all(len(s.names) == key[2] for key, s in LABEL_SETS.items())
    for dataset, task, n in sizes:
        colors = label_set(dataset, task, n).colors.tolist()
        assert len(colors) == n and len({tuple(c) for c in colors}) == n
    cityscapes = label_set("Cityscapes", "semseg", 19)
    assert cityscapes.names == CITYSCAPES_CLASSES and cityscapes.colors[0].tolist() == [128, 64, 128]     # road
    assert cityscapes.colors[13].tolist() == [0, 0, 142]                                                  # car
    assert label_set("DSEC", "semseg", 11).names == DSEC_CLASSES[11] and label_set("DDD17", "semseg", 6).names \
        == DDD17_CLASSES
    # the colour of a class is the VOC colour of its value in the dataset's label PNGs: NYUD stores class k as k + 1
    assert label_set("NYUD", "semseg", 40).colors.tolist() == [ref_voc_color(k + 1) for k in range(40)]
    pascal = label_set("PASCALContext", "semseg", 21).colors.tolist()
    assert pascal[0] == [0, 0, 0] and pascal[1] == [128, 0, 0] and pascal[15] == [192, 128, 128]   # bg, plane, person
    assert label_set("NYUD", "semseg", 40).names == NYUD_CLASSES
    assert label_set("PASCALContext", "semseg", 21).names == PASCAL_CLASSES
    assert label_set("PASCALContext", "human_parts", 7).names == HUMAN_PARTS_CLASSES
    with pytest.raises(ValueError, match=r"task .human_parts. with 7 classes on dataset .NYUD.; known: NYUD/semseg "
                                         r"\(40\)"):
        label_set("NYUD", "human_parts", 7)


def test_colorize_labels_palette_and_ignore():
    nyud = label_set("NYUD", "semseg", 40)
    img = colorize_labels(torch.tensor([[0, 1], [255, 40]]), nyud)
    assert img.shape == (3, 2, 2) and img.dtype == torch.uint8
    assert img[:, 0, 0].tolist() == [128, 0, 0] and img[:, 0, 1].tolist() == [0, 128, 0]
    assert img[:, 1, 0].tolist() == img[:, 1, 1].tolist() == [224, 224, 192]      # ignored, out of range: void


@pytest.mark.parametrize("key", list(LABEL_SETS))
def test_legend_lists_every_class_with_its_colour(key):
    labels_of = LABEL_SETS[key]
    image = legend(labels_of)
    assert image.dtype == np.uint8 and image.ndim == 3
    for k, (name, color) in enumerate(zip(labels_of.names, labels_of.colors.numpy())):
        assert contains(image, text_patch(f"{k} {name}")), name
        solid = cv2.erode(np.all(image == color, axis=-1).astype(np.uint8), np.ones((12, 12), np.uint8))
        assert solid.any(), (name, color)                                   # a 12x12 swatch of the class colour


def test_depth_normals_edge_images():
    depth = depth_to_image(torch.tensor([[[1.0, 3.0], [2.0, 255.0]]]))
    assert depth.shape == (3, 2, 2) and depth.dtype == torch.uint8
    # inferno over [1, 3] m: the nearest pixel takes the top of the map, the farthest its bottom; ignored is black
    lut = cv2.cvtColor(cv2.applyColorMap(np.array([[255, 0, 128]], np.uint8), cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
    assert depth[:, 0, 0].tolist() == lut[0, 0].tolist() and depth[:, 0, 1].tolist() == lut[0, 1].tolist()
    assert depth[:, 1, 0].tolist() == lut[0, 2].tolist() and depth[:, 1, 1].tolist() == [0, 0, 0]
    normals = torch.tensor([1.0, 0.0, -1.0]).view(3, 1, 1).repeat(1, 1, 2)
    normals[:, 0, 1] = 255
    n = normals_to_image(normals)
    assert n[:, 0, 0].tolist() == [255, 128, 0] and n[:, 0, 1].tolist() == [0, 0, 0]
    e = edge_to_image(torch.tensor([[0.0, 100.0]]))
    assert e.shape == (3, 1, 2) and e[0].tolist() == [[127, 255]]           # floor(255·σ), as saved for the benchmark
    t = edge_to_image(torch.tensor([[1.0, 255.0]]), logits=False)
    assert t[0].tolist() == [[255, 0]]


def test_prediction_maps_encodings():
    logits = torch.tensor([[[0.0, 2.0]], [[1.0, -1.0]]])                       # (2, 1, 2)
    parts = prediction_maps("human_parts", logits, label_set("PASCALContext", "human_parts", 7))
    assert parts.data.tolist() == [[1, 0]] and parts.color.tolist() == [[[128, 0, 0], [0, 0, 0]]]
    sal = prediction_maps("sal", logits)
    assert sal.data.tolist() == [[round(255 / (1 + np.exp(-1.0))), round(255 / (1 + np.exp(3.0)))]]
    assert sal.color is None and sal.preview.shape == (1, 2, 3)
    depth = prediction_maps("depth", torch.tensor([[[1.2344, -0.5, 70.0]]]))
    assert depth.data.dtype == np.uint16 and depth.data.tolist() == [[1234, 0, 65535]]    # mm; ≥ 0; saturates
    assert depth.value_range == (0.0, 70.0) and depth.color.shape == (1, 3, 3)
    with pytest.raises(ValueError, match="needs its LabelSet"):
        prediction_maps("semseg", logits)


def test_panel_titles_and_layout():
    a = np.zeros((10, 20, 3), np.uint8)
    out = panel([("input", a), ("depth 0.50-2.00 m", a + 200)], size=40, gap=4, title_height=22)
    title = text_patch("depth 0.50-2.00 m", 22)
    first = max(40, text_patch("input", 22).shape[1])
    assert out.shape[0] == 22 + 20 and out.shape[1] == first + 4 + max(40, title.shape[1])
    assert contains(out, title)
    with pytest.raises(ValueError, match="one size"):
        panel([("a", a), ("b", a[:5])])


def test_denormalize_inverts_imagenet_normalisation():
    rgb = torch.tensor([0.2, 0.5, 0.8]).view(3, 1, 1)
    norm = (rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert denormalize_image(norm).flatten().tolist() == [51, 128, 204]


def test_prediction_grid_shapes():
    torch.manual_seed(0)
    b, h, w = 3, 8, 10
    tasks = ["semseg", "sal", "edge", "normals", "depth"]
    preds = {"semseg": torch.randn(b, 21, h, w), "sal": torch.randn(b, 2, h, w), "edge": torch.randn(b, 1, h, w),
             "normals": torch.randn(b, 3, h, w), "depth": torch.rand(b, 1, h // 2, w // 2)}
    batch = {"semseg": torch.randint(0, 21, (b, 1, h, w)).float(), "sal": torch.randint(0, 2, (b, 1, h, w)).float(),
             "edge": torch.randint(0, 2, (b, 1, h, w)).float(),
             "normals": torch.nn.functional.normalize(torch.randn(b, 3, h, w), dim=1), "depth": torch.rand(b, 1, h, w)}
    grids = prediction_grid(torch.randn(b, 3, h, w), preds, batch, tasks, dataset="PASCALContext", max_items=2)
    assert set(grids) == set(tasks)
    for g in grids.values():
        assert g.shape == (3, 2 * h, 3 * w) and g.dtype == torch.uint8
    # the semseg prediction cell is the colour of the argmax class, the target cell that of the target class
    cls, target = int(preds["semseg"][0, :, 0, 0].argmax()), int(batch["semseg"][0, 0, 0, 0])
    colors = label_set("PASCALContext", "semseg", 21).colors
    assert grids["semseg"][:, 0, w].tolist() == colors[cls].tolist()
    assert grids["semseg"][:, 0, 2 * w].tolist() == colors[target].tolist()
    # without targets: input | prediction
    only = prediction_grid(torch.randn(1, 3, h, w), {"edge": preds["edge"][:1]}, {}, ["edge"], dataset="NYUD")
    assert only["edge"].shape == (3, h, 2 * w)
