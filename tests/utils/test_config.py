from pathlib import Path

import pytest

import utils.config
from utils.config import DEFAULTS, ConfigError, load_config, save_config

REPO = Path(__file__).resolve().parents[2]
NYUD = REPO / "configs" / "mtmamba_nyud.yml"


@pytest.fixture(autouse=True)
def _no_model_zoo(monkeypatch):
    # the model-choice validation imports the whole model zoo (seconds); tests/test_models.py covers it
    monkeypatch.setattr(utils.config, "_validate_model", lambda cfg: None)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_unknown_top_level_key_names_key_valid_keys_and_suggestion(tmp_path):
    cfg = _write(tmp_path / "x.yml", f"_base_: [{NYUD}]\nmax_iters: 10\n")
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    msg = str(e.value)
    assert "'max_iters'" in msg and "did you mean 'max_iter'" in msg and "'trBatch'" in msg and "x.yml" in msg


def test_unknown_nested_key_names_dotted_key_and_section_keys(tmp_path):
    cfg = _write(tmp_path / "x.yml", f"_base_: [{NYUD}]\nmodel: {{stm_block: 1}}\n")
    with pytest.raises(ConfigError, match=r"'model\.stm_block'.*'model\.stm_blocks'.*section 'model'.*'ctm_fusion'"):
        load_config(cfg)


def test_unknown_key_via_opts():
    with pytest.raises(ConfigError, match=r"'model\.foo' \(from --opts\).*'wmsa_heads'"):
        load_config(NYUD, ["model.foo=1"])
    with pytest.raises(ConfigError, match=r"'TRAIN\.SIZE'.*\['SCALE'\]"):
        load_config(NYUD, ["TRAIN.SIZE=[1,2]"])


def test_free_form_sections_accept_any_key():
    cfg = load_config(NYUD, ["optimizer_kwargs.amsgrad=true", "model.backbone_kwargs.embed_dim=24"])
    assert cfg.optimizer_kwargs.amsgrad is True and cfg.model.backbone_kwargs == {"embed_dim": 24}


@pytest.mark.parametrize("opt, pattern", [
    ("optimizer=sgd", r"optimizer='sgd'.*\['adamw', 'adam'\]"),
    ("amp=fp8", r"amp='fp8'.*\[None, 'bf16', 'fp16'\]"),
    ("loss_kwargs.loss_scheme=mean", r"loss_scheme='mean'.*\['sum', 'log'\]"),
    ("sal_maxF_mode=x", r"\['invpt_compat', 'atrc'\]"),
    ("eval_boundary=1", r"eval_boundary=1.*\[True, False\]"),
    ("max_iter=0", "max_iter=0 must be a positive integer"),
    ("trBatch=-1", "trBatch=-1 must be a positive integer"),
    ("TRAIN.SCALE=[448]", r"TRAIN\.SCALE"),
    ("grad_clip=-1", "grad_clip"),
    ("save_predictions=[sal]", r"save_predictions.*\['semseg', 'depth', 'normals', 'edge'\]"),
    ("val_db_name=PASCALContext", "val_db_name"),
])
def test_bad_values_name_key_and_choices(opt, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(NYUD, [opt])


def test_defaults_fill_missing_keys(tmp_path):
    cfg = load_config(_write(tmp_path / "tiny_exp.yml", f"_base_: [{REPO / 'configs/_base_/nyud.yml'}]\n"))
    assert cfg.version_name == "tiny_exp"                                # from the file stem
    assert cfg.val_interval == DEFAULTS["val_interval"] and cfg.save_predictions == []
    assert cfg.model.ctm_fusion == "adaptive" and cfg.model.backbone_kwargs is None
    assert cfg.scheduler_kwargs.power == 0.9 and cfg.val_db_name == "NYUD"
    assert cfg.loss_kwargs.edge_w == 0.95 and cfg.loss_kwargs.loss_weights.depth == 1.0


def test_base_inheritance_order_and_opts_last(tmp_path):
    a = _write(tmp_path / "a.yml", f"_base_: [{NYUD}]\nmax_iter: 10\ntrBatch: 3\n")
    b = _write(tmp_path / "b.yml", "max_iter: 20\nvalBatch: 5\n")
    c = _write(tmp_path / "c.yml", "_base_: [a.yml, b.yml]\nvalBatch: 7\n")
    cfg = load_config(c, ["trBatch=4"])
    assert (cfg.max_iter, cfg.trBatch, cfg.valBatch) == (20, 4, 7)      # later base wins, file over bases, opts last
    assert cfg.version_name == "c"                                     # not inherited from mtmamba_nyud.yml
    assert load_config(c, ["version_name=named"]).version_name == "named"


def test_save_config_round_trip(tmp_path):
    cfg = load_config(NYUD, ["max_iter=123", "optimizer_kwargs.lr=2e-4", "save_predictions=[edge]"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    text = path.read_text()
    assert "!!" not in text and "max_iter: 123" in text                # plain YAML types only
    again = load_config(path)
    assert again == cfg


def test_every_repo_config_loads():
    files = sorted((REPO / "configs").glob("*.yml")) + sorted((REPO / "configs" / "ablations").glob("*.yml"))
    assert len(files) >= 20
    for f in files:
        cfg = load_config(f)
        assert cfg.version_name == f.stem
        assert cfg.TASKS.NAMES
