"""The event image of a voxel grid and the TensorBoard grid of frame + event models."""
from __future__ import annotations

import torch

from utils.visualize import colorize_labels, event_image, label_set, prediction_grid


def test_event_image_on_a_hand_built_grid():
    grid = torch.zeros(3, 2, 3)
    grid[0, 0, 0], grid[2, 0, 0] = 1.0, 1.0        # net +2
    grid[:, 0, 1] = torch.tensor([-2.0, -1.0, -1.0])  # net -4, spread over the bins
    grid[0, 0, 2], grid[1, 0, 2] = 1.0, -1.0        # cancels: net 0
    grid[1, 1, 2] = 0.5                             # net +0.5
    expected = torch.zeros(3, 2, 3, dtype=torch.uint8)
    expected[0, 0, 0] = 128                         # round(255 * 2 / 4), red
    expected[2, 0, 1] = 255                         # blue
    expected[0, 1, 2] = 32                          # round(255 * 0.5 / 4)
    assert torch.equal(event_image(grid, quantile=1.0), expected)
    assert torch.equal(event_image(torch.zeros(10, 4, 5)), torch.zeros(3, 4, 5, dtype=torch.uint8))


def test_event_image_scale_ignores_a_few_busy_pixels():
    grid = torch.zeros(2, 1, 101)
    grid[0, 0, :100] = -1.0
    grid[1, 0, 100] = 1000.0
    image = event_image(grid)                       # the 99th percentile of the 101 magnitudes is 1
    assert (image[2, 0, :100] == 255).all() and image[0, 0, 100] == 255
    assert (image[1] == 0).all() and (image[0, 0, :100] == 0).all()


def test_grid_of_frame_events_prediction_target():
    h, w, classes = 4, 5, 6
    frame = torch.rand(2, 1, h, w)                  # grey in [0, 1], not normalised
    events = torch.randn(2, 10, h, w)
    preds = {"semseg": torch.randn(2, classes, h, w)}
    target = torch.randint(0, classes, (2, 1, h, w)).float()
    grids = prediction_grid(frame, preds, {"events": events, "semseg": target}, ["semseg"], "DDD17", max_items=1,
                            normalized=False)
    grid = grids["semseg"]
    assert grid.shape == (3, h, 4 * w) and grid.dtype == torch.uint8
    assert torch.equal(grid[:, :, :w], (frame[0] * 255).round().to(torch.uint8).expand(3, -1, -1))
    assert torch.equal(grid[:, :, w:2 * w], event_image(events[0]))
    ddd17 = label_set("DDD17", "semseg", classes)
    assert torch.equal(grid[:, :, 2 * w:3 * w], colorize_labels(preds["semseg"][0].argmax(0), ddd17))
    assert torch.equal(grid[:, :, 3 * w:], colorize_labels(target[0, 0].long(), ddd17))

    rgb = torch.rand(1, 3, h, w)                    # RGB frames in [0, 1] (DSEC) are drawn as they are
    grid = prediction_grid(rgb, {"semseg": preds["semseg"][:1]}, {"semseg": target[:1]}, ["semseg"], "DDD17",
                           normalized=False)["semseg"]
    assert grid.shape == (3, h, 3 * w)              # no events in the batch: no event column
    assert torch.equal(grid[:, :, :w], (rgb[0] * 255).round().to(torch.uint8))
