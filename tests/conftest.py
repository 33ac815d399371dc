"""Suite-wide settings: tests independent of the order they run in, and forks that cannot inherit a held lock."""
import random

import numpy as np
import pytest
import torch
import tqdm

# One intra-op thread in every test process, whichever test files it collected: a rank forked from a process whose
# OpenMP pool has run finds no pool threads and blocks in its first parallel op; and the many small scan ops crawl
# with oversubscribed threads.
torch.set_num_threads(1)
# tqdm's monitor thread wakes every 10 s and takes tqdm's lock; a rank forked at that moment would find the lock
# held forever (tests/processes.py forks only while no other Python thread runs)
tqdm.tqdm.monitor_interval = 0


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from the same random state, whichever tests ran before it in its process."""
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
