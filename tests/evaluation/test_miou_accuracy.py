"""mIoU and pixel accuracy from one confusion matrix (MAMBASEG.md §6) against values computed by hand."""
import pytest
import torch

from evaluation.miou import MIoUMeter


def _pixels(confusion, ignored=0):
    """(pred, gt) label vectors realising ``confusion[gt][pred]``, plus ``ignored`` pixels of GT 255."""
    gt, pred = [], []
    for g, row in enumerate(confusion):
        for p, count in enumerate(row):
            gt += [g] * count
            pred += [p] * count
    gt += [255] * ignored
    pred += [0] * ignored
    return torch.tensor(pred).view(1, 1, -1), torch.tensor(gt).view(1, 1, -1)


def test_miou_and_accuracy_by_hand():
    confusion = [[3, 1, 0],     # GT 0: 3 right, 1 taken for class 1
                 [0, 2, 1],     # GT 1
                 [1, 0, 4]]     # GT 2
    # IoU_c = TP / (row + column − TP): 3 / (4 + 4 − 3), 2 / (3 + 3 − 2), 4 / (5 + 5 − 4);
    # acc = 9 right of 12 valid pixels
    iou = [3 / 5, 2 / 4, 4 / 6]
    m = MIoUMeter(3)
    m.update(*_pixels(confusion, ignored=5))               # ignored pixels count nowhere
    out = m.compute()
    assert m.confusion.tolist() == confusion
    assert out["IoU"] == pytest.approx([100 * v for v in iou], abs=1e-12)
    assert out["mIoU"] == pytest.approx(100 * sum(iou) / 3, abs=1e-12)
    assert out["acc"] == pytest.approx(75.0, abs=1e-12)


def test_ranks_merge_to_the_single_rank_result():
    """Each rank holds a shard; summing the confusion states (what the all-reduce does) gives the 1-rank result."""
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 5, 7)
    gt = torch.randint(0, 6, (4, 1, 5, 7))
    gt[gt == 3] = 255
    whole, rank0, rank1 = MIoUMeter(6), MIoUMeter(6), MIoUMeter(6)
    whole.update(logits, gt)
    rank0.update(logits[0::2], gt[0::2])
    rank1.update(logits[1::2], gt[1::2])
    rank0.merge(rank1.state())
    assert rank0.compute() == whole.compute()
    valid = gt[:, 0] != 255
    assert whole.compute()["acc"] == pytest.approx(100 * (logits.argmax(1) == gt[:, 0])[valid].double().mean().item())
