"""The documentation's links and quoted result files exist, and the README stays a front door.

Pure file reading: for README.md, every docs/*.md and benchmarks/README.md, every relative markdown
link (inline, image or reference definition; http(s):, mailto: and pure #anchors ignored, a #fragment
stripped) must name an existing file or folder relative to the document, and every quoted
`benchmarks/results/...` path (in inline code, a fenced block or a link) must exist in the repository.
"""

from __future__ import annotations

import glob
import itertools
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_BYTES = 15_360

DOCUMENTS = sorted({ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").glob("*.md")})

FENCE = re.compile(r"^( {0,3})(`{3,}|~{3,})[^\n]*\n.*?^\1\2[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"(`+)(.+?)\1", re.S)
INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
REFERENCE_DEF = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
RESULT_PATH = re.compile(r"benchmarks/results/(?:\{[^{}\s]*\}|[^\s`'\"()\[\]{}|,;])+")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")  # http:, https:, mailto:, ...


def _name(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _split_code(text: str) -> tuple[str, list[str]]:
    """The text outside code (fenced blocks and inline spans removed), and the code itself."""
    code = [m.group(0) for m in FENCE.finditer(text)]
    prose = FENCE.sub("\n", text)
    code += [m.group(2) for m in INLINE_CODE.finditer(prose)]
    return INLINE_CODE.sub(" ", prose), code


def _link_targets(prose: str) -> list[str]:
    return [m.group(1) for m in INLINE_LINK.finditer(prose)] + [m.group(1) for m in REFERENCE_DEF.finditer(prose)]


def _relative_targets(doc: Path) -> list[tuple[str, Path]]:
    """(as written, resolved path) for every relative link of ``doc``."""
    prose, _ = _split_code(doc.read_text(encoding="utf-8"))
    out = []
    for target in _link_targets(prose):
        if target.startswith("#") or EXTERNAL.match(target):
            continue
        path = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if path:
            out.append((target, (doc.parent / path).resolve()))
    return out


def _expand_braces(pattern: str) -> list[str]:
    """`a.{json,md}` -> [`a.json`, `a.md`] (every brace group, as a shell expands it)."""
    parts = re.split(r"\{([^{}]*,[^{}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(combo) for combo in itertools.product(*choices)]


def _quoted_result_paths(doc: Path) -> list[str]:
    """Every `benchmarks/results/...` path quoted in code, as written (trailing punctuation dropped)."""
    _, code = _split_code(doc.read_text(encoding="utf-8"))
    found = []
    for snippet in code:
        for match in RESULT_PATH.finditer(snippet):
            path = match.group(0).rstrip(".:")
            if "<" in path or path.endswith("/"):
                continue  # a placeholder such as benchmarks/results/<name>.json, or the folder itself
            found.append(path)
    return found


def test_the_documents_are_found():
    names = [_name(d) for d in DOCUMENTS]
    assert "README.md" in names and "benchmarks/README.md" in names, names
    assert any(n.startswith("docs/") for n in names), names
    for doc in DOCUMENTS:
        assert doc.is_file(), f"{_name(doc)}: missing"


@pytest.mark.parametrize("doc", DOCUMENTS, ids=_name)
def test_relative_links_resolve(doc: Path):
    broken = [f"{_name(doc)}: link ({target}) -> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} does not exist"
              for target, path in _relative_targets(doc) if not path.exists()]
    assert not broken, "\n" + "\n".join(broken)


@pytest.mark.parametrize("doc", DOCUMENTS, ids=_name)
def test_quoted_result_files_exist(doc: Path):
    missing = []
    for written in _quoted_result_paths(doc):
        for candidate in _expand_braces(written):
            hits = glob.glob(str(ROOT / candidate)) if any(c in candidate for c in "*?[") else \
                [str(ROOT / candidate)] if (ROOT / candidate).exists() else []
            if not hits:
                missing.append(f"{_name(doc)}: quoted result file `{written}` ({candidate}) does not exist")
    results = (ROOT / "benchmarks" / "results").resolve()
    for target, path in _relative_targets(doc):
        if path.is_relative_to(results) and not path.exists():
            missing.append(f"{_name(doc)}: linked result file ({target}) -> {path.relative_to(ROOT)} does not exist")
    assert not missing, "\n" + "\n".join(missing)


def test_readme_is_at_most_15_kib():
    size = len((ROOT / "README.md").read_bytes())
    assert size <= README_MAX_BYTES, (f"README.md: {size:,} bytes, over the {README_MAX_BYTES:,}-byte limit; "
                                      "move detail into docs/")


def test_the_configuration_reference_lists_every_config_field():
    """docs/configuration.md has a row for every field of every config section, so a new key is documented."""
    import dataclasses

    from kdistill import config

    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    sections = [config.RunConfig, config.TaskConfig, config.DataConfig, config.TeacherConfig, config.SelectionConfig, config.EndpointConfig,
                config.ModelConfig, config.EnsembleConfig, config.CETerm, config.KDTerm, config.HiddenTerm,
                config.BalanceTerm, config.TrainingConfig, config.EvaluationConfig, config.SearchConfig,
                config.StageConfig]
    missing = [f"{cls.__name__}.{f.name}" for cls in sections for f in dataclasses.fields(cls)
               if f.init and f"| `{f.name}` |" not in text]
    assert not missing, f"docs/configuration.md has no row for: {', '.join(missing)}"
