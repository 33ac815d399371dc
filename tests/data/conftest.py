"""Synthetic NYUDv2 / PASCAL-Context datasets shared by the data tests (written once per module)."""
from __future__ import annotations

import pytest

from data.synthetic import write_nyud, write_pascal

NYUD_SIZE = (45, 56)        # tiny; any size ≤ 448×576 exercises the same rules
PASCAL_SIZE = (36, 48)      # orientation alternates per id
NYUD_TEMPLATE = (448, 576)
PASCAL_TEMPLATE = (512, 512)


@pytest.fixture(scope="module")
def nyud_root(tmp_path_factory):
    return write_nyud(tmp_path_factory.mktemp("db"), n_train=4, n_val=2, size=NYUD_SIZE)


@pytest.fixture(scope="module")
def pascal_root(tmp_path_factory):
    return write_pascal(tmp_path_factory.mktemp("db"), n_train=4, n_val=2, size=PASCAL_SIZE)


# ---- event datasets: written and prepared once per session, read-only for the tests that share them ----
@pytest.fixture(scope="session")
def ddd17_root(tmp_path_factory):
    from data.ddd17 import extract_frames
    from data.synthetic_events import write_ddd17
    root = write_ddd17(tmp_path_factory.mktemp("ev"), n_frames=5, first_label=3, events_per_frame=300)
    extract_frames(root, progress=False)
    return root


@pytest.fixture(scope="session")
def dsec_root(tmp_path_factory):
    from data.dsec import make_ev_inf
    from data.synthetic_events import write_dsec
    root = write_dsec(tmp_path_factory.mktemp("ev"), n_labels=7, events_per_label=400, frame_size=(135, 180))
    make_ev_inf(root, progress=False)
    return root
