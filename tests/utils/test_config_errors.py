"""Config mistakes a user makes, each reported as one error that names the key, the value and what is allowed."""
from __future__ import annotations

from pathlib import Path

import pytest

from utils.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]
NYUD = REPO / "configs" / "mtmamba_nyud.yml"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_misspelled_task_switch_is_an_error_even_when_false(tmp_path):
    cfg = _write(tmp_path / "x.yml", f"_base_: [{NYUD}]\ntask_dictionary: {{include_dpeth: false}}\n")
    with pytest.raises(ConfigError, match=r"task_dictionary\.include_dpeth: 'dpeth' is not a task of NYUD; did you "
                                          r"mean 'include_depth'\?"):
        load_config(cfg)
    with pytest.raises(ConfigError, match=r"task_dictionary\.include_depth='maybe' must be true or false"):
        load_config(NYUD, ["task_dictionary.include_depth=maybe"])


def test_exponent_numbers_in_files_are_floats_like_in_opts(tmp_path):
    cfg = load_config(_write(tmp_path / "x.yml", f"_base_: [{NYUD}]\noptimizer_kwargs: {{lr: 1e-4, eps: 1E-8}}\n"))
    assert cfg.optimizer_kwargs.lr == 1e-4 and isinstance(cfg.optimizer_kwargs.lr, float)
    assert cfg.optimizer_kwargs.eps == 1e-8
    assert load_config(NYUD, ["optimizer_kwargs.lr=3e-5"]).optimizer_kwargs.lr == 3e-5


@pytest.mark.parametrize("opt, pattern", [
    ("optimizer_kwargs.weight_decay=abc", r"optimizer_kwargs\.weight_decay='abc' must be a number >= 0"),
    ("optimizer_kwargs.momentum=0.9", r"optimizer_kwargs\.momentum=0\.9: AdamW has no argument 'momentum'; valid: "
                                      r"\[.*'amsgrad'.*'weight_decay'\]"),
    ("optimizer_kwargs.betas=[0.9]", r"optimizer_kwargs\.betas=\[0\.9\] must be two numbers in \[0, 1\)"),
    ("optimizer_kwargs.amsgrad=2", r"optimizer_kwargs\.amsgrad=2 must be true or false"),
    ("version_name=..", r"version_name='\.\.' must be a folder name inside out_dir"),
    ("version_name=a/b", r"version_name='a/b' must be a folder name inside out_dir"),
    ("model.dt_rank=abc", r"model\.dt_rank='abc' must be 'auto' \(ceil\(C/16\)\) or a positive integer"),
    ("model.d_state=0", r"model\.d_state=0 must be a positive integer"),
    ("model.drop_path_rate=1.5", r"model\.drop_path_rate=1\.5 must be a number in \[0, 1\)"),
    ("TRAIN.SCALE=[90,120]", r"TRAIN\.SCALE=\[90, 120\]: model 'mtmamba' needs sides that are multiples of 32, "
                             r"e\.g\. \[96, 128\]"),
    ("TEST.SCALE=[448,570]", r"TEST\.SCALE=\[448, 570\]: model 'mtmamba' needs sides that are multiples of 32"),
    ("dist_timeout=0", r"dist_timeout=0 must be a positive number of seconds"),
])
def test_bad_values_name_key_value_and_what_is_allowed(opt, pattern):
    with pytest.raises(ConfigError, match=pattern):
        load_config(NYUD, [opt])


def test_malformed_opts_value_names_the_override():
    with pytest.raises(ConfigError, match=r"--opts TRAIN\.SCALE=\[448, 576: not valid YAML"):
        load_config(NYUD, ["TRAIN.SCALE=[448, 576"])


def test_base_cycle_is_named(tmp_path):
    _write(tmp_path / "a.yml", "_base_: [b.yml]\nmax_iter: 3\n")
    _write(tmp_path / "b.yml", "_base_: [a.yml]\n")
    with pytest.raises(ConfigError, match=r"_base_ files form a cycle: a\.yml -> b\.yml -> a\.yml"):
        load_config(tmp_path / "a.yml")


def test_syntax_error_in_a_file_names_the_file(tmp_path):
    bad = _write(tmp_path / "bad.yml", "max_iter: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yml: not valid YAML"):
        load_config(bad)
