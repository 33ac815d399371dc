import torch

from data.transforms import IMAGENET_MEAN, IMAGENET_STD
from utils.visualize import (colorize_labels, denormalize_image, depth_to_image, edge_to_image, normals_to_image,
                             palette, prediction_grid)


def test_colorize_labels_palette_and_ignore():
    img = colorize_labels(torch.tensor([[0, 1], [255, 7]]), num_classes=3)
    assert img.shape == (3, 2, 2) and img.dtype == torch.uint8
    assert img[:, 0, 0].tolist() == [128, 0, 0] and img[:, 0, 1].tolist() == [0, 128, 0]
    assert img[:, 1, 0].tolist() == [0, 0, 0] and img[:, 1, 1].tolist() == [0, 0, 0]    # ignored, out of range
    assert len({tuple(c) for c in palette(40).tolist()}) == 40 and [0, 0, 0] not in palette(40).tolist()


def test_depth_normals_edge_images():
    depth = depth_to_image(torch.tensor([[[1.0, 3.0], [2.0, 255.0]]]))
    assert depth.shape == (3, 2, 2) and depth.dtype == torch.uint8
    assert depth[0].tolist() == [[0, 255], [128, 0]]
    normals = torch.tensor([1.0, 0.0, -1.0]).view(3, 1, 1).repeat(1, 1, 2)
    normals[:, 0, 1] = 255
    n = normals_to_image(normals)
    assert n[:, 0, 0].tolist() == [255, 128, 0] and n[:, 0, 1].tolist() == [0, 0, 0]
    e = edge_to_image(torch.tensor([[0.0, 100.0]]))
    assert e.shape == (3, 1, 2) and e[0].tolist() == [[128, 255]]
    t = edge_to_image(torch.tensor([[1.0, 255.0]]), logits=False)
    assert t[0].tolist() == [[255, 0]]


def test_denormalize_inverts_imagenet_normalisation():
    rgb = torch.tensor([0.2, 0.5, 0.8]).view(3, 1, 1)
    norm = (rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    assert denormalize_image(norm).flatten().tolist() == [51, 128, 204]


def test_prediction_grid_shapes():
    torch.manual_seed(0)
    b, h, w = 3, 8, 10
    tasks = ["semseg", "sal", "edge", "normals", "depth"]
    preds = {"semseg": torch.randn(b, 5, h, w), "sal": torch.randn(b, 2, h, w), "edge": torch.randn(b, 1, h, w),
             "normals": torch.randn(b, 3, h, w), "depth": torch.rand(b, 1, h // 2, w // 2)}
    batch = {"semseg": torch.randint(0, 5, (b, 1, h, w)).float(), "sal": torch.randint(0, 2, (b, 1, h, w)).float(),
             "edge": torch.randint(0, 2, (b, 1, h, w)).float(),
             "normals": torch.nn.functional.normalize(torch.randn(b, 3, h, w), dim=1), "depth": torch.rand(b, 1, h, w)}
    grids = prediction_grid(torch.randn(b, 3, h, w), preds, batch, tasks, max_items=2)
    assert set(grids) == set(tasks)
    for g in grids.values():
        assert g.shape == (3, 2 * h, 3 * w) and g.dtype == torch.uint8
    # the semseg prediction cell is the colour of the argmax class
    cls = int(preds["semseg"][0, :, 0, 0].argmax())
    assert grids["semseg"][:, 0, w].tolist() == palette(5)[cls].tolist()
    # without targets: input | prediction
    only = prediction_grid(torch.randn(1, 3, h, w), {"edge": preds["edge"][:1]}, {}, ["edge"])
    assert only["edge"].shape == (3, h, 2 * w)
