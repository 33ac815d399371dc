"""tests/processes.py: ranks stop together, a deadline ends a stuck run, no fork beside a thread or thread pool."""
import os
import signal
import threading
import time

import pytest
import torch

from tests.processes import run_ranks


def _exit_after(code: int, seconds: float) -> None:
    time.sleep(seconds)
    os._exit(code)


def test_a_failed_rank_stops_the_others():
    start = time.monotonic()
    assert run_ranks(_exit_after, [(3, 0.0), (0, 60.0)], timeout=30) == [3, -signal.SIGKILL]
    assert time.monotonic() - start < 20


def test_a_run_past_its_deadline_is_killed_and_named():
    with pytest.raises(TimeoutError, match=r"ranks \[1\] still running after 1 s \(killed\)"):
        run_ranks(_exit_after, [(0, 0.0), (0, 60.0)], timeout=1)


def test_no_fork_while_another_thread_runs():
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="holder")
    thread.start()
    try:
        with pytest.raises(RuntimeError, match=r"refusing to fork with other threads alive \(holder\)"):
            run_ranks(_exit_after, [(0, 0.0)])
    finally:
        stop.set()
        thread.join()


def test_no_fork_while_torch_uses_several_threads():
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError, match=r"refusing to fork with torch using 2 threads"):
            run_ranks(_exit_after, [(0, 0.0)])
    finally:
        torch.set_num_threads(1)
