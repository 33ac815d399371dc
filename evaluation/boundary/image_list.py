"""Which images the boundary evaluation scores, and whether that is the published protocol (EVALUATION.md §0, §7.1).

- NYUD: all 654 test ids (``gt_sets/val.txt`` = SEISM ``gt_sets/NYUD/test_new.txt``).
- PASCAL-Context: the 2498 ids of SEISM's public ``gt_sets/PASCALContext/test_new.txt``. We do not ship that list;
  the user passes it and we check its count and sha256. Without it, all 5105 val ids are scored and every output
  says that this is not the published protocol.

The sha256 is taken over the sorted, CR-stripped ids joined by newlines (with or without a final newline).
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ImageSelection", "resolve_image_list", "read_ids", "ids_sha256"]

logger = logging.getLogger(__name__)

# dataset -> (published id count, sha256 prefix, sha256 suffix); §0 gives the NYUD digest only abbreviated
_PUBLISHED = {
    "pascal": (2498, "1998ea178a4683c851a7db0c5c6d41dcbc026e9502d4a6f10bb3668862cff0ce", ""),
    "nyud": (654, "36252ced", "f7c8a"),
}
# default list inside the dataset root when --image_list is not given (DATA.md §2.1, §3.1)
_DEFAULT_LIST = {"nyud": Path("gt_sets") / "val.txt", "pascal": Path("ImageSets") / "Context" / "val.txt"}


@dataclass(frozen=True)
class ImageSelection:
    ids: tuple[str, ...]
    source: str
    sha256: str
    published: bool
    note: str

    @property
    def protocol_label(self) -> str:
        return "published protocol" if self.published else f"NOT the published protocol ({self.note})"


def read_ids(path: str | Path) -> list[str]:
    """One id per line; CR and surrounding blanks stripped, empty lines dropped."""
    with open(path) as f:
        return [line.strip() for line in f.read().replace("\r", "").split("\n") if line.strip()]


def ids_sha256(ids: list[str] | tuple[str, ...], final_newline: bool = True) -> str:
    text = "\n".join(sorted(ids)) + ("\n" if final_newline else "")
    return hashlib.sha256(text.encode()).hexdigest()


def _matches(ids: list[str], dataset: str) -> tuple[bool, str]:
    count, prefix, suffix = _PUBLISHED[dataset]
    if len(ids) != count:
        return False, f"{len(ids)} ids, the published list has {count}"
    for final_newline in (True, False):
        digest = ids_sha256(ids, final_newline)
        if digest.startswith(prefix) and digest.endswith(suffix):
            return True, "count and sha256 match"
    return False, f"{len(ids)} ids but sha256 {ids_sha256(ids)[:12]}… differs from the published list"


def resolve_image_list(dataset: str, db_root: str | Path, image_list: str | Path | None = None) -> ImageSelection:
    """Ids to score plus a verdict on the protocol; logs a warning when it is not the published one."""
    if dataset not in _PUBLISHED:
        raise ValueError(f"dataset {dataset!r} is not supported; valid: {sorted(_PUBLISHED)}")
    path = Path(image_list) if image_list is not None else Path(db_root) / _DEFAULT_LIST[dataset]
    if not path.is_file():
        raise FileNotFoundError(f"image list not found: {path}")
    ids = read_ids(path)
    if len(set(ids)) != len(ids):
        raise ValueError(f"image list {path} contains duplicate ids")
    published, why = _matches(ids, dataset)
    if dataset == "pascal" and image_list is None:
        published, why = False, (f"all {len(ids)} val images; pass --image_list with SEISM's "
                                 "gt_sets/PASCALContext/test_new.txt (2498 ids)")
    selection = ImageSelection(tuple(ids), str(path), ids_sha256(ids), published, why)
    if not published:
        logger.warning("boundary evaluation on %s: %s", path, selection.protocol_label)
    return selection
