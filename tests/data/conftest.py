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
