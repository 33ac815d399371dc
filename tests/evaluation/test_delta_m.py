"""Δm reproduces MTMamba Table 2 (MODELS.md §5.1, EVALUATION.md §8) with the paper's truncation rule."""
import pytest

from evaluation.delta_m import default_baseline, delta_m, format_delta_m, truncate_2dp

TABLE2 = [  # (mIoU, RMSE, mErr, odsF, printed Δm, full-precision Δm from EVALUATION.md §8)
    (53.72, 0.5239, 19.97, 76.50, -1.87, -1.8772),
    (54.61, 0.5059, 19.00, 77.40, 0.95, 0.9569),
    (54.66, 0.4984, 18.81, 78.20, 1.84, 1.8489),
    (54.75, 0.5054, 18.81, 78.20, 1.55, 1.5515),
    (55.82, 0.5066, 18.63, 78.70, 2.38, 2.3819),
]


def _results(miou, rmse, merr, odsf):
    return {"semseg": {"mIoU": miou}, "depth": {"rmse": rmse}, "normals": {"mErr": merr}, "edge": {"odsF": odsf}}


@pytest.mark.parametrize("row", TABLE2)
def test_table2_rows(row):
    *metrics, printed, full = row
    d = delta_m(_results(*metrics), default_baseline("NYUD"))
    assert d.value == pytest.approx(full, abs=5e-5)
    assert truncate_2dp(d.value) == printed
    assert not d.proxy and d.label == "Δm"


def test_mtmamba_terms_and_units():
    base = default_baseline("NYUD")
    d = delta_m(_results(55.82, 0.5066, 18.63, 78.70), base)
    assert [round(v, 3) for v in d.terms.values()] == [2.761, 1.936, 3.019, 1.811]
    frac = delta_m(_results(55.82, 0.5066, 18.63, 0.787), base, units={"edge": "fraction"})
    assert frac.value == pytest.approx(d.value)
    assert "MTMamba" in base.provenance and "Table 2" in base.provenance


def test_proxy_and_missing_baseline():
    res = _results(55.82, 0.5066, 18.63, 78.70)
    del res["edge"]
    with pytest.raises(KeyError, match="edge"):
        delta_m(res, default_baseline("NYUD"))
    p = delta_m(res, default_baseline("NYUD"), proxy=True)
    assert p.proxy and p.excluded == ("edge",) and "proxy" in p.label
    assert p.value == pytest.approx((2.7614 + 1.9357 + 3.0193) / 3, abs=1e-3)
    assert default_baseline("PASCALContext") is None
    assert "n/a (no published single-task baseline)" in format_delta_m("PASCALContext")
    line = format_delta_m("NYUD", _results(55.82, 0.5066, 18.63, 78.70))
    assert "+2.38" in line and "proxy" not in line
    assert "proxy" in format_delta_m("NYUD", _results(55.82, 0.5066, 18.63, 78.70), proxy=True)
