"""Logging setup: rank 0 logs INFO to the console and to ``run_dir/log.txt``; other ranks log warnings only.

Modules log through ``logging.getLogger(__name__)``; :func:`setup_logging` configures the root logger once per
process (calling it again replaces the handlers it installed, so nothing is logged twice).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Optional

__all__ = ["setup_logging", "log_fatal", "LOG_FORMAT"]

LOG_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"
DATE_FORMAT = "%m-%d %H:%M:%S"
_MARK = "_mtl_handler"      # attribute set on the handlers installed here


def setup_logging(run_dir: Optional[Path], rank: int = 0) -> logging.Logger:
    """Configure the root logger for this process and return it.

    Args:
        run_dir: run directory; on rank 0 the log is appended to ``run_dir/log.txt`` (created if needed).
            ``None`` logs to the console only.
        rank: distributed rank; rank 0 logs INFO and above, the other ranks WARNING and above, console only.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(handler)
        handler.close()
    level = logging.INFO if rank == 0 else logging.WARNING
    fmt = logging.Formatter(LOG_FORMAT if rank == 0 else f"[rank {rank}] {LOG_FORMAT}", datefmt=DATE_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stdout)]
    if rank == 0 and run_dir is not None:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(run_dir) / "log.txt", mode="a", encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(fmt)
        handler.setLevel(level)
        setattr(handler, _MARK, True)
        root.addHandler(handler)
    root.setLevel(level)
    return root


def log_fatal(exc: BaseException, message: str) -> None:
    """Record a fatal error: the traceback goes to ``log.txt`` only, ``message`` (one line) to the console too."""
    root = logging.getLogger()
    record = root.makeRecord(root.name, logging.ERROR, __file__, 0, "%s", (message,),
                             (type(exc), exc, exc.__traceback__))
    for handler in [h for h in root.handlers if getattr(h, _MARK, False)]:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
    print(f"error: {message}", file=sys.stderr, flush=True)
