"""Encoder weights (models/pretrained.py, pretrained_ckpts/fetch.py).

``fetch.py --from`` on full-size synthetic files in the exact published key layouts (Microsoft, timm and mmseg Swin-L,
timm's ViT-L/16-384, VMamba-T), checked against the full-size encoders on the meta device; a missing or mis-shaped key
and a file of another architecture are named; the offline download fails at once with its advice, and a partial
download resumes with an HTTP Range request and is verified. Training stops before building anything when a recipe's
encoder weights can be neither loaded nor downloaded, starts with a warning when they are declined, and logs the loaded
fraction with the file's sha256.
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.server
import json
import logging
import threading
import time
from pathlib import Path

import pytest
import timm
import torch

import models.weights
import utils.trainer
from models.encoders import SwinEncoder
from models.pretrained import CATALOGUE
from models.weights import PretrainedWeightsError
from pretrained_ckpts import fetch
from tests.test_encoders import original_layout
from tests.test_vmamba import MANIFESTS as MAMBASEG_MANIFESTS
from tests.test_vmamba import random_state_dict
from utils.config import ConfigError, load_config
from utils.distributed import init_distributed
from utils.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = json.loads((REPO / "tests/assets/official_state_dict_manifests.json").read_text())["models"]

SWIN_L = 195_201_204                         # mmseg Swin-L with its output norms (test_encoders)
SWIN_L_OUT_NORMS = 2 * (192 + 384 + 768 + 1536)
VIT_L = 304_715_752 - (1024 * 1000 + 1000) - 1024   # timm's ViT-L/16-384 without its classifier and class token
VMAMBA_T = 29_481_408                        # VMamba-T with its output norms, without the classifier (MAMBASEG.md §2)
VMAMBA_T_OUT_NORMS = 2 * (96 + 192 + 384 + 768)


# ----------------------------------------------------------------------------------------------------------------
# Full-size synthetic files in the published layouts (random values; views of one pool per file, so files stay small)
# ----------------------------------------------------------------------------------------------------------------
def entries(state_dict):
    return [(k, tuple(v.shape)) for k, v in state_dict.items()]


def microsoft_buffers():
    """The buffers Microsoft's Swin-L 384 file stores: relative_position_index in all 24 blocks, attn_mask in the
    shifted (odd) blocks of stages 0-2 (stage 3 is one 12×12 window: no shift), nW = (96 / 2**i / 12)**2 windows."""
    out = []
    for i, depth in enumerate((2, 2, 18, 2)):
        for j in range(depth):
            out.append((f"layers.{i}.blocks.{j}.attn.relative_position_index", (144, 144)))
            if i < 3 and j % 2:
                out.append((f"layers.{i}.blocks.{j}.attn_mask", ((8 // 2 ** i) ** 2, 144, 144)))
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("weights")
    with torch.device("meta"):
        timm_swin = timm.create_model("swin_large_patch4_window12_384").state_dict()     # head.fc.*, norm.*
        timm_vit = timm.create_model("vit_large_patch16_384").state_dict()               # cls_token, pos_embed, head.*
    swin = random_state_dict(entries(timm_swin), seed=1)
    # the mmseg layout of MTMamba's converted ImageNet file: the released backbone keys without norm0..3, plus norm.*
    mmseg = [(k.removeprefix("module.backbone."), tuple(s)) for k, s in OFFICIAL["mtmamba_nyud"]["entries"]
             if k.startswith("module.backbone.") and not k.startswith("module.backbone.norm")]
    dicts = {
        "swin_microsoft": {"model": original_layout(swin) | random_state_dict(microsoft_buffers(), seed=2)},
        "swin_timm": swin,
        "swin_mmseg": {"state_dict": random_state_dict(mmseg + [("norm.weight", (1536,)), ("norm.bias", (1536,))],
                                                       seed=3)},
        "vit": random_state_dict(entries(timm_vit), seed=4),
        "vmamba": {"model": random_state_dict(MAMBASEG_MANIFESTS["vssm1_tiny_0230s"]["entries"], seed=5)},
    }
    paths = {}
    for name, content in dicts.items():
        paths[name] = folder / f"{name}.pth"
        torch.save(content, paths[name])
    return {"paths": paths, "dicts": dicts, "n_timm_swin": len(timm_swin), "n_timm_vit": len(timm_vit)}


def run_fetch(capsys, *args):
    rc = fetch.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ----------------------------------------------------------------------------------------------------------------
# fetch.py --from
# ----------------------------------------------------------------------------------------------------------------
SWIN_L_SIZES = "embed dim 192, depths [2, 2, 18, 2]"


@pytest.mark.parametrize("name,file,holds,notes", [
    ("swin_large", "swin_microsoft", f"Swin in the Microsoft layout ({SWIN_L_SIZES})",
     ["skipped head.* (2 keys", "skipped norm.* (2 keys", "skipped relative_position_index / attn_mask (35 keys",
      "no output norms in the file: norm0..norm3 (8 keys)"]),
    ("swin_large", "swin_timm", f"Swin in the timm layout ({SWIN_L_SIZES})",
     ["skipped head.* (2 keys", "skipped norm.* (2 keys"]),
    ("swin_large", "swin_mmseg", f"Swin in the mmseg layout ({SWIN_L_SIZES})",
     ["skipped norm.* (2 keys", "skipped relative_position_index / attn_mask (24 keys"]),
    ("vit_large", "vit", "ViT (width 1024, depth 24)",
     ["skipped cls_token, head.* (3 keys"]),
    ("vmamba_t", "vmamba", "VMamba (dim 96, depths [2, 2, 8, 2])",
     ["skipped classifier.* (4 keys", "not in the file: outnorm0, outnorm1, outnorm2, outnorm3 (8 keys"]),
])
def test_fetch_from_matches_every_key_of_the_full_size_encoder(files, tmp_path, capsys, name, file, holds, notes):
    source = files["paths"][file]
    n_keys, n_loaded, n_total = {
        "swin_large": (files["n_timm_swin"] - 4, SWIN_L - SWIN_L_OUT_NORMS, SWIN_L),      # all but head.fc, norm
        "vit_large": (files["n_timm_vit"] - 3, VIT_L, VIT_L),                           # all but cls_token, head
        "vmamba_t": (276 - 4, VMAMBA_T - VMAMBA_T_OUT_NORMS, VMAMBA_T),                 # all but the classifier
    }[name]
    rc, out, err = run_fetch(capsys, name, "--from", source, "--out", tmp_path / "ckpts")
    assert rc == 0, err
    dest = tmp_path / "ckpts" / Path(CATALOGUE[name].file).with_suffix(".pth").name
    assert dest.read_bytes() == source.read_bytes()
    sha = hashlib.sha256(source.read_bytes()).hexdigest()
    assert f"sha256   {sha}, not recorded yet" in out
    assert f"matched  all {n_keys} keys the {name} encoder takes from it: {n_loaded} of {n_total} encoder " \
           f"parameters" in out
    assert f"holds    {holds}" in out and all(note in out for note in notes), out
    assert out.rstrip().endswith(f"model.pretrained_path={dest}")


@pytest.mark.parametrize("name,file,edit,message", [
    ("swin_large", "swin_microsoft", ("model", "layers.2.blocks.7.mlp.fc2.weight", None),
     "missing: swin.layers.2.blocks.7.mlp.fc2.weight"),
    ("swin_large", "swin_mmseg", ("state_dict", "stages.1.blocks.0.attn.w_msa.qkv.weight", (1152, 380)),
     "mismatch: swin.layers.1.blocks.0.attn.qkv.weight: expected (1152, 384), got (1152, 380)"),
    ("vit_large", "vit", (None, "blocks.23.norm2.bias", None), 'Missing key(s) in state_dict: "blocks.23.norm2.bias"'),
    ("vmamba_t", "vmamba", ("model", "layers.2.blocks.5.op.x_proj_weight", (4, 25, 384)),
     "mismatch: layers.2.blocks.5.op.x_proj_weight: expected (4, 26, 384), got (4, 25, 384)"),
])
def test_a_missing_or_misshaped_key_is_named(files, tmp_path, capsys, name, file, edit, message):
    wrapper, key, shape = edit
    content = dict(files["dicts"][file])
    sd = dict(content[wrapper]) if wrapper else content
    assert key in sd
    if shape is None:
        del sd[key]
    else:
        sd[key] = torch.randn(shape)
    torch.save({wrapper: sd} if wrapper else sd, tmp_path / "edited.pth")
    rc, out, err = run_fetch(capsys, name, "--from", tmp_path / "edited.pth", "--out", tmp_path / "ckpts")
    assert rc == 1 and message in err and f"does not fit the full-size {name} encoder" in err
    assert not (tmp_path / "ckpts").exists()                # a file that does not fit is not copied


@pytest.mark.parametrize("name,file,holds", [
    ("swin_large", "vmamba", "holds a VMamba (dim 96, depths [2, 2, 8, 2]), not the Swin weights"),
    ("vit_large", "swin_mmseg", "holds a Swin in the mmseg layout (embed dim 192, depths [2, 2, 18, 2]), not the ViT"),
    ("vmamba_t", "vit", "holds a ViT (width 1024, depth 24), not the VMamba weights"),
])
def test_a_file_of_another_architecture_is_named(files, tmp_path, capsys, name, file, holds):
    rc, out, err = run_fetch(capsys, name, "--from", files["paths"][file], "--out", tmp_path)
    assert rc == 1 and holds in err and CATALOGUE[name].file in err


# ----------------------------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------------------------
def test_offline_download_fails_within_seconds_saying_how_to_bring_the_file(tmp_path, capsys):
    start = time.monotonic()
    rc, out, err = run_fetch(capsys, "swin_large", "--url", "http://127.0.0.1:9/swin.pth", "--out", tmp_path)
    assert rc == 1 and time.monotonic() - start < 5
    assert "this machine looks offline" in err
    assert "python pretrained_ckpts/fetch.py swin_large --from /path/to/swin_large_patch4_window12_384_22kto1k.pth" \
           in err
    assert list(tmp_path.iterdir()) == []


class RangeServer(http.server.BaseHTTPRequestHandler):
    """Serves ``data`` at any path, honouring ``Range: bytes=N-``; records the Range headers it got."""

    data = b""
    ranges: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        asked = self.headers.get("Range")
        self.ranges.append(asked)
        start = int(asked.removeprefix("bytes=").rstrip("-")) if asked else 0
        self.send_response(206 if asked else 200)
        self.send_header("Content-Length", str(len(self.data) - start))
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        self.end_headers()
        self.wfile.write(self.data[start:])

    def log_message(self, *args):
        """Quiet: the tests read the files, not the server's request log."""


@pytest.fixture
def server(files):
    data = files["paths"]["vmamba"].read_bytes()
    handler = type("Handler", (RangeServer,), {"data": data, "ranges": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/vssm.pth", handler, data
    httpd.shutdown()
    httpd.server_close()


def test_download_resumes_a_partial_file_and_verifies_it(server, tmp_path, capsys, monkeypatch):
    url, handler, data = server
    sha = hashlib.sha256(data).hexdigest()
    monkeypatch.setitem(CATALOGUE, "vmamba_t", dataclasses.replace(CATALOGUE["vmamba_t"], size=len(data), sha256=sha))
    dest = tmp_path / "vssm1_tiny_0230s_ckpt_epoch_264.pth"
    third = len(data) // 3
    (tmp_path / f"{dest.name}.part").write_bytes(data[:third])          # an interrupted earlier download
    rc, out, err = run_fetch(capsys, "vmamba_t", "--url", url, "--out", tmp_path)
    assert rc == 0, err
    assert handler.ranges == [f"bytes={third}-"]
    assert dest.read_bytes() == data and not (tmp_path / f"{dest.name}.part").exists()
    assert f"sha256   {sha}, matches the published file" in out and f"size     {len(data)} bytes, matches" in out
    assert out.rstrip().endswith(f"model.pretrained_path={dest}")

    monkeypatch.setitem(CATALOGUE, "vmamba_t", dataclasses.replace(CATALOGUE["vmamba_t"], sha256="0" * 64))
    rc, out, err = run_fetch(capsys, "vmamba_t", "--url", url, "--out", tmp_path / "again")
    assert rc == 1 and f"sha256 {sha} differs from the published" in err and handler.ranges[-1] is None
    rc, out, err = run_fetch(capsys, "vmamba_t", "--from", dest, "--out", tmp_path)   # a copy: reported, not enforced
    assert rc == 0 and f"sha256   {sha}, differs from the published file's {'0' * 64}" in out


# ----------------------------------------------------------------------------------------------------------------
# Training: no accidental random encoder; the log names the file
# ----------------------------------------------------------------------------------------------------------------
class Built(Exception):
    """Raised instead of building the model: training got past the weight check."""


@pytest.fixture
def before_build(monkeypatch):
    """Trainer without data and without the model: it stops with :class:`Built` where the model would be built."""
    def build(cfg):
        raise Built

    monkeypatch.setattr(utils.trainer, "build_dataloaders", lambda cfg, seed: (None, None))
    monkeypatch.setattr(utils.trainer, "build_model", build)
    monkeypatch.setattr(models.weights, "_cached", lambda model_name: False)
    monkeypatch.setattr(models.weights, "hub_reachable", lambda timeout=0: False)        # offline


@pytest.mark.parametrize("config,name", [("mtmamba_nyud.yml", "swin_large"), ("mtmamba_plus_pascal.yml", "swin_large"),
                                         ("bim_nyud.yml", "swin_large"), ("pame_swin_pascal.yml", "swin_large"),
                                         ("pame_vit_nyud.yml", "vit_large"), ("mambaseg_ddd17.yml", "vmamba_t")])
def test_recipe_without_weights_stops_and_declining_starts_with_a_warning(before_build, monkeypatch, tmp_path,
                                                                          caplog, config, name):
    info = init_distributed()
    cfg = load_config(REPO / "configs" / config)
    assert cfg.model.pretrained is True and cfg.model.pretrained_path is None
    with pytest.raises(PretrainedWeightsError, match=rf"`python pretrained_ckpts/fetch\.py {name}`.*"
                                                     rf"model\.pretrained_path=pretrained_ckpts/"
                                                     rf"{CATALOGUE[name].file}.*model\.pretrained=false"):
        Trainer(cfg, tmp_path, info)
    with caplog.at_level(logging.WARNING, logger="models.pretrained"), pytest.raises(Built):
        Trainer(load_config(REPO / "configs" / config, ["model.pretrained=false"]), tmp_path, info)
    assert f"model.pretrained=false: the {name} encoder starts from random weights" in caplog.text
    monkeypatch.setattr(models.weights, "hub_reachable", lambda timeout=0: True)          # online: timm downloads
    if name == "vmamba_t":
        with pytest.raises(PretrainedWeightsError, match="timm has no VMamba weights"):
            Trainer(cfg, tmp_path, info)
    else:
        with pytest.raises(Built):
            Trainer(cfg, tmp_path, info)


def test_a_given_file_must_exist_and_test_sizes_need_none(before_build, tmp_path):
    info = init_distributed()
    missing = load_config(REPO / "configs/mtmamba_nyud.yml", [f"model.pretrained_path={tmp_path / 'swin.pth'}"])
    with pytest.raises(PretrainedWeightsError, match=r"swin\.pth': no such file; get "
                                                     r"swin_large_patch4_window12_384_22kto1k\.pth with `python "
                                                     r"pretrained_ckpts/fetch\.py swin_large`"):
        Trainer(missing, tmp_path, info)
    tiny = [load_config(REPO / "configs/demo_nyud.yml", ["model.pretrained=true"]),
            load_config(REPO / "configs/pame_vit_nyud.yml", ["model.backbone=vit_custom"]),
            load_config(REPO / "configs/mambaseg_ddd17.yml", ["model.mambaseg.dims=[16,16,32,32]"])]
    for cfg in tiny:                       # no published weights: nothing to load, training starts
        assert cfg.model.pretrained is True
        with pytest.raises(Built):
            Trainer(cfg, tmp_path, info)
    with pytest.raises(ConfigError, match=r"model\.pretrained=false declines the encoder weights, but "
                                          r"model\.pretrained_path='x\.pth' names a file"):
        load_config(REPO / "configs/mtmamba_nyud.yml", ["model.pretrained=false", "model.pretrained_path=x.pth"])


def test_training_log_states_the_loaded_fraction_and_the_file_sha256(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(utils.trainer, "build_dataloaders", lambda cfg, seed: (None, None))
    arch = dict(embed_dim=24, depths=(2, 2, 2, 2), num_heads=(1, 2, 3, 6), window_size=4)   # demo_nyud's Swin
    source = SwinEncoder("custom", img_size=(96, 128), **arch)
    path = tmp_path / "tiny_swin.pth"
    torch.save({k.removeprefix("swin."): v for k, v in source.state_dict().items() if k.startswith("swin.")}, path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    n_total = sum(p.numel() for p in source.parameters())
    n_loaded = n_total - 2 * (24 + 48 + 96 + 192)                                           # all but norm0..3
    info = init_distributed()
    with caplog.at_level(logging.INFO, logger="models.pretrained"):
        Trainer(load_config(REPO / "configs/demo_nyud.yml", ["model.pretrained=true", f"model.pretrained_path={path}"]),
                tmp_path / "run", info)
        Trainer(load_config(REPO / "configs/demo_nyud.yml"), tmp_path / "run2", info)
    n_keys = len(source.swin.state_dict())
    assert (f"encoder weights (encoder): {path} (sha256 {sha}): {n_loaded} of {n_total} parameters "
            f"({100 * n_loaded / n_total:.3f} %), {n_keys} keys, Swin, timm layout") in caplog.text
    assert f"encoder weights (encoder): random init, 0 of {n_total} parameters (0.000 %)" in caplog.text


# ----------------------------------------------------------------------------------------------------------------
# Documentation
# ----------------------------------------------------------------------------------------------------------------
def section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_readmes_document_every_file_and_point_to_pretrained_ckpts(capsys):
    folder = (REPO / "pretrained_ckpts/README.md").read_text()
    for w in CATALOGUE.values():
        assert f"`{w.name}`" in folder and f"`{w.file}`" in folder and w.url in folder
    assert "model.pretrained_path" in folder and "CQC-gogopro/PAME" in folder
    assert "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384.npz" \
           in folder and timm.models.get_pretrained_cfg("vit_large_patch16_384").url.endswith(
               "L_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1--imagenet2012-steps_20k-lr_0.01-res_384.npz")
    assert timm.models.get_pretrained_cfg("swin_large_patch4_window12_384").url == CATALOGUE["swin_large"].url
    main = (REPO / "README.md").read_text()
    assert "pretrained_ckpts/" in section(main, "Install") and "pretrained_ckpts/" in section(main, "Training and "
                                                                                                   "inference")
    rc, out, err = run_fetch(capsys, "--list")
    assert rc == 0 and all(w.name in out and w.file in out for w in CATALOGUE.values())
