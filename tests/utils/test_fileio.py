"""Run files: a failed write names the path (and the free space on a full disk), never leaves a half file."""
from __future__ import annotations

import contextlib
import subprocess

import numpy as np
import pytest
import torch

from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.fileio import WriteError, remove_stale_temp_files, write_png, write_text


@contextlib.contextmanager
def tmpfs(path, options: str):
    """A tmpfs mounted at ``path`` for the block (skips the test where mounting is not allowed)."""
    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB file system."""
    with tmpfs(tmp_path / "small", "size=1m") as path:
        yield path


@pytest.fixture
def read_only(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as path:
        yield path


def test_full_disk_save_names_path_and_free_space_and_keeps_the_old_file(full_disk):
    target = full_disk / "checkpoints" / "last.pth"
    save_checkpoint(target, {"iteration": 1, "w": torch.zeros(1000)})
    with pytest.raises(WriteError, match=r"cannot write .*checkpoints/last\.pth: .*\(\d+(\.\d)? [KM]?B free on its "
                                         r"file system\)"):
        save_checkpoint(target, {"iteration": 2, "w": torch.zeros(2_000_000)})      # 8 MB on a 1 MB disk
    assert load_checkpoint(target)["iteration"] == 1                                 # the last good one
    assert not list(target.parent.glob(".*.tmp"))                                    # no temp file left


def test_read_only_folder_names_the_file(read_only):
    with pytest.raises(WriteError, match=r"cannot write .*ro/predictions/edge/0001\.png: Read-only file system"):
        write_png(read_only / "predictions" / "edge" / "0001.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(WriteError, match=r"cannot write .*ro/metrics\.json: Read-only file system"):
        write_text(read_only / "metrics.json", "{}")


def test_stale_temp_files_are_removed(tmp_path):
    (tmp_path / ".last.pth.abc123.tmp").write_bytes(b"partial")
    (tmp_path / ".best.pth.x.tmp").write_bytes(b"partial")
    (tmp_path / "last.pth").write_bytes(b"keep")
    removed = remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in removed) == [".best.pth.x.tmp", ".last.pth.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]
