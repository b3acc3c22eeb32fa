"""The docs hold together: every relative link in README.md, BENCHMARKS.md and docs/*.md resolves to an
existing file and, for ``#anchor`` links into Markdown files, to a heading of that file (GitHub's slugs);
README links every docs/ page and stays a front door (at most 250 lines); every test file they name
(``tests/....py``, in prose, code or commands) exists, so a moved test cannot leave a stale path behind."""

from __future__ import annotations

import glob
import os
import re
from urllib.parse import unquote

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.*?)(?:[ \t]+#+)?[ \t]*$")
_INLINE_CODE = re.compile(r"(`+)(.+?)\1")
_LINK = re.compile(r"""!?\[(?:[^\[\]]|\[[^\]]*\])*\]   # [text], one level of nested brackets
                      \(\s*<?([^()\s>]*(?:\([^()\s]*\)[^()\s>]*)*)>?  # (target), balanced parentheses
                      (?:\s+["'][^"']*["'])?\s*\)""", re.X)     # optional "title"
_REFERENCE = re.compile(r"^ {0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)")
_EXTERNAL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|//)")


def docs() -> list[str]:
    """The Markdown files whose links are checked, relative to the repository root."""
    return ["README.md", "BENCHMARKS.md", *sorted(os.path.relpath(p, ROOT)
                                                  for p in glob.glob(os.path.join(ROOT, "docs", "*.md")))]


def _prose_lines(text: str):
    """(line number, line) outside fenced code blocks."""
    fence = None
    for n, line in enumerate(text.splitlines(), 1):
        m = _FENCE.match(line)
        if m and (fence is None or m.group(1) == fence):
            fence = None if fence else m.group(1)
            continue
        if fence is None:
            yield n, line


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (links and code marks dropped) lowercased, punctuation other
    than '-' and '_' dropped, spaces turned into '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](url) -> text
    text = re.sub(r"<[^>]+>", "", text).lower()  # inline HTML
    text = "".join(c for c in text if c.isalnum() or c in "-_ ")
    return text.replace(" ", "-")


def anchors(path: str) -> set[str]:
    """Every heading anchor of a Markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    seen: dict[str, int] = {}
    out = set()
    for _, line in _prose_lines(text):
        m = _HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return out


def links(text: str):
    """(line number, target) of every inline, image and reference-definition link outside code."""
    for n, line in _prose_lines(text):
        prose = _INLINE_CODE.sub("", line)
        m = _REFERENCE.match(prose)
        if m:
            yield n, m.group(1)
            continue
        for m in _LINK.finditer(prose):
            yield n, m.group(1)


def broken_links(path: str) -> list[str]:
    """``file:line: target (why)`` for each relative link of a Markdown file that does not resolve."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    out = []
    for n, target in links(text):
        if not target or _EXTERNAL.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(path), unquote(file_part))) if file_part else path
        if not os.path.exists(dest):
            out.append(f"{path}:{n}: {target} (no such file)")
        elif anchor and dest.endswith(".md") and os.path.isfile(dest) and unquote(anchor).lower() not in anchors(dest):
            out.append(f"{path}:{n}: {target} (no heading with anchor #{anchor})")
    return out


_TEST_PATH = re.compile(r"(?<![\w/.-])tests/[\w/.-]+\.py\b")


def missing_test_files(path: str, root: str = ROOT) -> list[str]:
    """``path:line: tests/...py`` for every test file the page names that does not exist under ``root``."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return [f"{path}:{n}: {name}" for n, line in enumerate(text.splitlines(), 1)
            for name in _TEST_PATH.findall(line) if not os.path.isfile(os.path.join(root, name))]


def test_every_named_test_file_exists():
    missing = [m for page in docs() for m in missing_test_files(os.path.join(ROOT, page))]
    assert missing == [], "\n".join(missing)


def test_a_planted_stale_test_path_is_found(tmp_path):
    (tmp_path / "tests" / "run").mkdir(parents=True)
    (tmp_path / "tests" / "run" / "test_here.py").write_text("")
    page = tmp_path / "page.md"
    page.write_text("`pytest tests/run/test_here.py -k x`\n\n```\npytest -s tests/train/test_moved.py\n```\n"
                    "see bench/tests/x.py and tests/run/test_here.py::test_a\n")
    assert missing_test_files(str(page), str(tmp_path)) == [f"{page}:4: tests/train/test_moved.py"]


def test_every_relative_link_resolves():
    pages = docs()
    assert "docs/evaluation.md" in pages and len(pages) > 3
    broken = [b for page in pages for b in broken_links(os.path.join(ROOT, page))]
    assert broken == [], "\n".join(broken)


def test_readme_is_a_front_door_that_links_every_docs_page():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert len(text.splitlines()) <= 250
    targets = {t.partition("#")[0] for _, t in links(text)}
    unlinked = [p for p in docs() if p.startswith("docs/") and p not in targets]
    assert unlinked == [], f"README.md does not link {unlinked}"


def test_slugs_follow_github():
    assert slug("What `make demo` does (the main job)") == "what-make-demo-does-the-main-job"
    assert slug("Will my recipe fit? The memory planner") == "will-my-recipe-fit-the-memory-planner"
    assert slug("7B / 8B recipes") == "7b--8b-recipes"
    assert slug("Storage for multi-host runs (gs://)") == "storage-for-multi-host-runs-gs"
    assert slug("GPU: train-step MFU and decoding (one H100)") == "gpu-train-step-mfu-and-decoding-one-h100"
    assert slug("snake_case and [a link](x.md)") == "snake_case-and-a-link"


def test_the_checker_finds_planted_broken_links(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "src.py").write_text("x = 1\n")
    (tmp_path / "docs" / "page.md").write_text(
        "# Page\n\n## Will it fit? The planner\n\n## Twice\n\n## Twice\n\n```\n# not a heading\n```\n")
    (tmp_path / "README.md").write_text(
        "# Top\n\n"
        "[ok](docs/page.md) [ok anchor](docs/page.md#will-it-fit-the-planner) [ok repeat](docs/page.md#twice-1)\n"
        "[ok file](src.py#L1) [ok self](#top) ![ok image](src.py) [ext](https://example.com/missing.md)\n"
        "[ok ref]: docs/page.md\n"
        "`[in code](docs/nope.md)`\n"
        "```\n[in a fence](docs/nope.md)\n```\n"
        "[missing](docs/nope.md)\n"
        "[bad anchor](docs/page.md#will-it-fit)\n"
        "[code comment is no heading](docs/page.md#not-a-heading)\n"
        "[bad self](#nowhere) [bad repeat](docs/page.md#twice-2)\n"
        "[bad ref]: ../outside.md\n")
    broken = broken_links(str(tmp_path / "README.md"))
    readme = str(tmp_path / "README.md")
    assert broken == [f"{readme}:10: docs/nope.md (no such file)",
                      f"{readme}:11: docs/page.md#will-it-fit (no heading with anchor #will-it-fit)",
                      f"{readme}:12: docs/page.md#not-a-heading (no heading with anchor #not-a-heading)",
                      f"{readme}:13: #nowhere (no heading with anchor #nowhere)",
                      f"{readme}:13: docs/page.md#twice-2 (no heading with anchor #twice-2)",
                      f"{readme}:14: ../outside.md (no such file)"]
