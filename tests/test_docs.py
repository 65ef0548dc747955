"""The README stays short, and README.md and docs/*.md point at what exists: relative links and
anchors resolve, every `make` target is in the Makefile, every flag shown for a console script is
in its --help."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from cxr_lightning import commands

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 10_500

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
CODE = re.compile(r"^```[^\n]*\n(.*?)^```|`([^`]+)`", re.S | re.M)
SCRIPTS = ("predict", "export", "report", "cache", "cohort", "sample", "study")
SCRIPT_CALL = re.compile(rf"cxr-({'|'.join(SCRIPTS)})\b(.*?)(?=cxr-|$)", re.S)


def prose(text: str) -> str:
    """The text without fenced code blocks and code spans (links inside code are not links)."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a document's headings: lower case, punctuation dropped, spaces as
    hyphens, ``-1``, ``-2``... appended to repeats."""
    seen: dict[str, int] = {}
    result = set()
    for title in HEADING.findall(FENCE.sub("", markdown)):
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def broken_links(document: Path) -> list[str]:
    """Each relative link of ``document`` whose file or heading anchor does not exist."""
    broken = []
    for target in LINK.findall(prose(document.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.exists():
            broken.append(f"{target}: no file {path}")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path.read_text("utf-8")):
            broken.append(f"{target}: no heading #{anchor} in {path.name}")
    return broken


def test_readme_fits_on_a_few_screens() -> None:
    size = (ROOT / "README.md").stat().st_size
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; move reference text to docs/"


def test_readme_install_gives_the_cpu_only_route() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("## Install")
    install = " ".join(readme[start:readme.index("\n## ", start)].split())
    assert ("pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu"
            in install)
    assert "not tested here" in install  # these machines cannot try it


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(document: Path) -> None:
    assert broken_links(document) == []


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Weights & Biases\n\n## `make train` on the sample\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n"
        "[ok](other.md#weights--biases) [ok](other.md#make-train-on-the-sample) [ok](#title)\n"
        "[gone](missing.md) [bad anchor](other.md#weights-biases) [web](https://example.org/x)\n"
        "`[code](not-a-link.md)`\n"
    )
    assert broken_links(page) == [
        f"missing.md: no file {tmp_path / 'missing.md'}",
        "other.md#weights-biases: no heading #weights-biases in other.md",
    ]


def code(document: Path) -> list[str]:
    """The command lines of a document: each fenced block's lines (``\\`` continuations
    joined) and each code span."""
    pieces = []
    for block, span in CODE.findall(document.read_text(encoding="utf-8")):
        pieces += block.replace("\\\n", " ").splitlines() if block else [span]
    return pieces


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def shown_flags(pieces: list[str]) -> dict[str, set[str]]:
    """``{script: flags}`` for every ``cxr-<script> ... --flag`` in ``pieces``."""
    flags: dict[str, set[str]] = {}
    for piece in pieces:
        for script, rest in SCRIPT_CALL.findall(piece):
            flags.setdefault(script, set()).update(re.findall(r"(?<![\w-])--[a-z][\w-]*", rest))
    return flags


def help_text(script: str, monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture[str]) -> str:
    """``cxr-<script> --help``, run through the console script's own entry point."""
    monkeypatch.setattr(sys, "argv", [f"cxr-{script}", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        getattr(commands, script)()
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_make_targets_shown_exist(document: Path) -> None:
    shown = {m for piece in code(document) for m in re.findall(r"\bmake\s+([a-z][\w-]*)", piece)}
    assert shown - make_targets() == set()


def test_flags_shown_for_console_scripts_exist(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    shown = shown_flags([piece for document in DOCUMENTS for piece in code(document)])
    assert set(shown) == set(SCRIPTS)
    unknown = {}
    for script, flags in shown.items():
        text = help_text(script, monkeypatch, capsys)
        missing = sorted(f for f in flags if not re.search(rf"(?<![\w-]){f}(?![\w-])", text))
        if missing:
            unknown[script] = missing
    assert unknown == {}


def test_the_flag_check_reads_fenced_blocks_and_spans(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```bash\ncxr-predict --ckpt m.pt \\\n    [--heatmaps]\n```\n"
                    "Run `cxr-export --ckpt m.pt --out x` or `make train`; not--this.\n")
    assert shown_flags(code(page)) == {"predict": {"--ckpt", "--heatmaps"},
                                       "export": {"--ckpt", "--out"}}
