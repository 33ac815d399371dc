"""Evaluation (EVALUATION.md): pooled metric meters (``miou``, ``depth``, ``normals``, ``saliency``; §2–6), Δm
(``delta_m``; §8) and the SEISM boundary protocol (``boundary``; §7, §10).

Submodules are imported explicitly (``from evaluation.miou import MIoUMeter``) so that boundary-evaluation worker
processes do not load torch.
"""
