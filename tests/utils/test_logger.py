import logging

import pytest

from utils.logger import setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)


def _ours(root):
    return [h for h in root.handlers if getattr(h, "_mtl_handler", False)]


def test_rank0_writes_log_file_and_is_idempotent(tmp_path):
    root = setup_logging(tmp_path, rank=0)
    root = setup_logging(tmp_path, rank=0)
    assert len(_ours(root)) == 2                                   # console + file, not doubled
    logging.getLogger("some.module").info("hello %d", 7)
    for h in _ours(root):
        h.flush()
    text = (tmp_path / "log.txt").read_text()
    assert text.count("hello 7") == 1 and "some.module" in text
    setup_logging(tmp_path, rank=0)
    logging.getLogger("x").info("again")
    for h in _ours(logging.getLogger()):
        h.flush()
    assert "hello 7" in (tmp_path / "log.txt").read_text()        # appended, not truncated


def test_other_ranks_log_warnings_to_console_only(tmp_path, capsys):
    root = setup_logging(tmp_path / "r1", rank=1)
    assert len(_ours(root)) == 1 and root.level == logging.WARNING
    logging.getLogger("m").info("quiet")
    logging.getLogger("m").warning("loud")
    out = capsys.readouterr().out
    assert "loud" in out and "quiet" not in out and "rank 1" in out
    assert not (tmp_path / "r1" / "log.txt").exists()
