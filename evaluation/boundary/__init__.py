"""Boundary detection odsF / oisF / AP with the SEISM protocol used by InvPT and MTMamba (EVALUATION.md §7, §10).

GT = thin(seg2bmap(L)) (``gt``), SEISM NMS (``nms``), Guo–Hall thinning (``thin``), pixel matching behind one
interface (``match``: ``hk`` or the optional ``csa``), counting and aggregation (``seism``), image lists and the
protocol verdict (``image_list``), and the resumable multi-process runner (``runner``).
"""
from evaluation.boundary.runner import MODES, evaluate_boundaries
from evaluation.boundary.seism import HED_THRESHOLDS, MAX_DIST, PROXY_THRESHOLDS, BoundaryScores, aggregate, eval_image

__all__ = ["evaluate_boundaries", "MODES", "eval_image", "aggregate", "BoundaryScores", "HED_THRESHOLDS",
           "PROXY_THRESHOLDS", "MAX_DIST"]
