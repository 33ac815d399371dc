#!/usr/bin/env python
"""Get, verify and check the encoder weights a recipe starts from (see pretrained_ckpts/README.md).

    python pretrained_ckpts/fetch.py swin_large                    # download (resumable), verify, check
    python pretrained_ckpts/fetch.py vmamba_t --from ~/Downloads/vssm1_tiny_0230s_ckpt_epoch_264.pth
    python pretrained_ckpts/fetch.py --list                        # the names, files and recipes

The file goes to ``--out`` (default: this folder). A download (from the publisher, or ``--url`` for a mirror) is
written to ``FILE.part`` and resumed from there (HTTP Range) when interrupted; its size and, once recorded, its sha256
must match. Without internet it fails at once and says how to bring the file (``--from``); a file brought that way may
be another layout of the same weights (mmseg, timm), so its hash is reported, not enforced. Then the file is checked
strictly against the full-size encoder, with the encoder's own loader on the meta device: every key and shape the
encoder needs must be there; what the recipes skip (a classifier, a stem rebuilt for other input channels) is listed.
The last line is the config setting that loads it. Exit status: 0 when the file fits, 1 otherwise (the message says
why).
"""
from __future__ import annotations

import argparse
import os
import pickle
import shutil
import sys
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tqdm import tqdm  # noqa: E402

from models.pretrained import CATALOGUE, PublishedWeights, check_weights_file  # noqa: E402
from models.weights import LoadedWeights, sha256_file  # noqa: E402

HERE = Path(__file__).resolve().parent
TIMEOUT_S = 10.0            # seconds to connect, and between two pieces of a download
CHUNK = 1 << 20


class FetchError(RuntimeError):
    """The file could not be obtained or is not the published one; the message says what to do."""


class OfflineError(FetchError):
    """The server cannot be reached."""


def offline_message(weights: PublishedWeights, url: str, reason: object) -> str:
    return (f"cannot download {url} ({reason}): this machine looks offline, or cannot reach that server.\n"
            f"Download the file on a machine with internet:\n  {url}\n"
            f"copy it to this machine and run:\n  python pretrained_ckpts/fetch.py {weights.name} --from "
            f"/path/to/{weights.file}")


def download(url: str, dest: Path, weights: PublishedWeights, timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial ``.part`` with an HTTP Range request.

    Raises :class:`OfflineError` when the server cannot be reached, :class:`FetchError` on an HTTP error, an
    interrupted transfer (the ``.part`` file stays, for the next attempt to resume) or a truncated file.
    """
    part = dest.with_name(dest.name + ".part")
    start = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "pretrained_ckpts-fetch",
                                                   **({"Range": f"bytes={start}-"} if start else {})})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:        # the .part file already holds everything the server has
            part.replace(dest)
            return dest
        raise FetchError(f"{url}: the server answered HTTP {e.code} {e.reason}") from e
    except OSError as e:                      # URLError (no route, refused, DNS) or a connect timeout
        raise OfflineError(offline_message(weights, url, getattr(e, "reason", e))) from e
    with response:
        if start and response.status != 206:   # the server ignores Range: start over
            start = 0
        length = response.headers.get("Content-Length")
        total = start + int(length) if length is not None else None
        with open(part, "ab" if start else "wb") as f, tqdm(total=total, initial=start, unit="B", unit_scale=True,
                                                            unit_divisor=1024, desc=dest.name) as bar:
            try:
                while piece := response.read(CHUNK):
                    f.write(piece)
                    bar.update(len(piece))
            except OSError as e:              # reset, or no data for `timeout` seconds
                raise FetchError(f"the download of {url} stopped after {f.tell()} bytes ({e}); run the same "
                                 f"command again to resume from {part}") from e
    size = part.stat().st_size
    if total is not None and size != total:
        raise FetchError(f"the download of {url} ended at {size} of {total} bytes; run the same command again to "
                         f"resume from {part}")
    part.replace(dest)
    return dest


def verify(path: Path, weights: PublishedWeights, strict: bool) -> tuple[int, str]:
    """The file's size and sha256; with ``strict`` (a download), they must equal the recorded ones where known."""
    size, digest = path.stat().st_size, sha256_file(path)
    for what, expected, got in (("size", weights.size, size), ("sha256", weights.sha256, digest)):
        if strict and expected is not None and expected != got:
            raise FetchError(f"{path}: {what} {got} differs from the published {weights.file}'s {expected}: the file "
                             f"is damaged or another one; delete it and fetch it again")
    return size, digest


def config_path(path: Path) -> str:
    """``path`` relative to the working directory when it lies inside it, else absolute."""
    path = path.resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def print_catalogue() -> None:
    for w in CATALOGUE.values():
        print(f"{w.name:<11} {w.file}\n{'':<11} {w.recipes}\n{'':<11} {w.url}")


def obtain(weights: PublishedWeights, url: str | None, dest: Path) -> Path:
    """``dest`` when it is already there, else downloaded."""
    if dest.is_file():
        print(f"{dest} is already there (delete it to download it again)")
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    print(f"downloading {url or weights.url}")
    return download(url or weights.url, dest, weights)


def place(source: Path, dest: Path) -> Path:
    """``dest``, a copy of ``source`` unless they are the same file."""
    if not (dest.exists() and os.path.samefile(source, dest)):
        dest.parent.mkdir(parents=True, exist_ok=True)
        print(f"copying {source} -> {dest}")
        shutil.copyfile(source, dest)
    return dest


def describe(weights: PublishedWeights, loaded: LoadedWeights, description: str, size: int, digest: str) -> str:
    """What the check found: size, sha256, architecture, matched keys and parameters, skips."""
    def recorded(expected, got):
        if expected is None:
            return "not recorded yet (pretrained_ckpts/README.md)"
        return "matches the published file" if expected == got else \
            f"differs from the published file's {expected} (another copy or layout; the key check decides)"

    lines = [f"  size     {size} bytes, {recorded(weights.size, size)}",
             f"  sha256   {digest}, {recorded(weights.sha256, digest)}",
             f"  holds    {description}",
             f"  matched  all {loaded.n_keys} keys the {weights.name} encoder takes from it: {loaded.n_loaded} of "
             f"{loaded.n_total} encoder parameters ({100.0 * loaded.fraction:.3f} %)"]
    lines += [f"  note     {note}" for note in loaded.notes]
    lines += [f"  recipes  {weights.recipes}", f"  use      {weights.use}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", nargs="?", choices=sorted(CATALOGUE), help="the encoder whose weights to get")
    parser.add_argument("--from", dest="source", metavar="FILE", help="a copy of the file you already have")
    parser.add_argument("--out", metavar="DIR", default=str(HERE), help="where the file goes (default: %(default)s)")
    parser.add_argument("--url", help="download from this address instead of the publisher's (a mirror)")
    parser.add_argument("--list", action="store_true", help="list the names, files and recipes")
    args = parser.parse_args(argv)
    if args.list:
        print_catalogue()
        return 0
    if args.name is None:
        parser.error("give the NAME of the weights (--list shows them)")
    weights = CATALOGUE[args.name]
    dest = Path(args.out) / weights.file
    if args.source is not None and Path(args.source).suffix != dest.suffix:   # keep the format's extension
        dest = dest.with_suffix(Path(args.source).suffix)
    try:
        if args.source is not None and not Path(args.source).is_file():
            raise FetchError(f"--from {args.source}: no such file")
        path = Path(args.source) if args.source is not None else obtain(weights, args.url, dest)
        size, digest = verify(path, weights, strict=args.source is None)
        loaded, description = check_weights_file(weights.name, path)
        path = place(path, dest)
    except (RuntimeError, ValueError, OSError, pickle.UnpicklingError) as e:   # also a file the reader refuses
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{weights.name}: {path}\n{describe(weights, loaded, description, size, digest)}\n"
          f"config line (--opts, or model.pretrained_path in the YAML):\n"
          f"  model.pretrained_path={config_path(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
