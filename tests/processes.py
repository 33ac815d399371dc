"""Rank processes for tests: a free port, and ranks that are always reaped, stop together and never hang the suite.

Forked ranks copy the test process but none of its threads: a lock another thread holds at that moment stays locked
for good in the child, and a child of a process whose OpenMP pool has run blocks in its first parallel op. So
``run_ranks`` forks only while no other Python thread runs and torch uses one thread (``conftest.py`` sees to both),
and bounds every run by a deadline.
"""
from __future__ import annotations

import multiprocessing as mp
import socket
import threading
import time
from typing import Callable, Sequence

import torch


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _other_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t is not threading.main_thread()]


def run_ranks(target: Callable, rank_args: Sequence[tuple], timeout: float = 300, start_method: str = "fork"
              ) -> list[int]:
    """``target(*rank_args[r])`` in one process per rank; returns their exit codes (-9: SIGKILL).

    When a rank exits with an error the others are killed, as torchrun does. A run still going after ``timeout``
    seconds is killed and raises TimeoutError naming the ranks that had not finished.
    """
    if start_method == "fork":
        threads = _other_threads()
        if threads:
            raise RuntimeError(f"refusing to fork with other threads alive ({', '.join(threads)}): a lock one of "
                               f"them holds would stay locked in the children")
        if torch.get_num_threads() > 1:
            raise RuntimeError(f"refusing to fork with torch using {torch.get_num_threads()} threads: the children "
                               f"would block in their first parallel op (torch.set_num_threads(1) first)")
    ctx = mp.get_context(start_method)
    procs = [ctx.Process(target=target, args=args) for args in rank_args]
    try:
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        while any(p.is_alive() for p in procs) and all(p.exitcode in (None, 0) for p in procs):
            if time.monotonic() > deadline:
                running = [r for r, p in enumerate(procs) if p.is_alive()]
                raise TimeoutError(f"ranks {running} still running after {timeout:g} s (killed)")
            time.sleep(0.05)
    finally:                                    # a failed rank, a deadline or an error here: stop the rest
        for p in procs:
            if p.is_alive():
                p.kill()
            if p.pid is not None:
                p.join()
    return [p.exitcode for p in procs]
