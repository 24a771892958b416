"""The Markdown docs: every relative link points at a file or folder that exists (and at a heading that exists,
for `page.md#anchor`), and README.md stays a front page that carries the two quickstart commands exactly.

No torch import: this runs in well under a second.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKDOWN = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "conversion" / "README.md",
            ROOT / "notebooks" / "README.md"]
DEMO_COMMAND = ("python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e '.[bitsandbytes]' "
                "&& .venv/bin/codellama-hf demo")
FRONT_PAGE_MAX_LINES = 220

FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
COMMENT = re.compile(r"<!--.*?-->", re.S)
CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}\s+(.*?)(?:\s+#+)?\s*$")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http:, https:, mailto:, ...


def prose_lines(text: str) -> list[str]:
    """The file's lines with fenced code blocks and HTML comments blanked (line numbers kept)."""
    text = COMMENT.sub(lambda m: "\n" * m.group().count("\n"), text)
    out, fence = [], None
    for line in text.splitlines():
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            out.append("")
        elif fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) and not line.strip(fence[0] + " "):
                fence = None
            out.append("")
        else:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: link text kept, lowercase, punctuation (backticks too) dropped except
    hyphens and spaces (letters, digits and underscores stay), spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file; repeated headings get -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) for every inline link or image outside code, in order."""
    found = []
    for number, line in enumerate(prose_lines(path.read_text(encoding="utf-8")), start=1):
        line = CODE_SPAN.sub(lambda m: "x" * len(m.group()), line)
        found += [(number, m.group(1)) for m in LINK.finditer(line)]
    return found


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """One message per relative link in `path` whose target (file, folder or #anchor) does not exist."""
    problems = []
    for number, target in links(path):
        where = f"{path.relative_to(root)}:{number}: ({target})"
        if not target:
            problems.append(f"{where} empty link")
            continue
        if SCHEME.match(target):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / unquote(file_part)).resolve() if file_part else path
        if not dest.is_relative_to(root.resolve()):
            problems.append(f"{where} points outside the repository")
        elif not dest.exists():
            problems.append(f"{where} no such file or folder")
        elif anchor and dest.suffix == ".md" and dest.is_file() and anchor not in anchors(dest):
            problems.append(f"{where} no heading #{anchor} in {dest.name} (has: {', '.join(sorted(anchors(dest)))})")
    return problems


@pytest.mark.parametrize("path", MARKDOWN, ids=[str(p.relative_to(ROOT)) for p in MARKDOWN])
def test_relative_links_resolve(path):
    assert path.is_file(), f"{path.relative_to(ROOT)} is missing"
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_docs_pages_are_collected():
    names = {p.relative_to(ROOT).as_posix() for p in MARKDOWN}
    assert {"docs/index.md", "docs/converting.md", "docs/tokenizer.md", "docs/pipelines.md", "docs/big-models.md",
            "docs/benchmarks.md"} <= names


def test_readme_is_a_front_page():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) < FRONT_PAGE_MAX_LINES, (f"README.md has {len(lines)} lines; keep it a front page under "
                                               f"{FRONT_PAGE_MAX_LINES} and move detail to docs/")
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip().startswith("python3 -m venv")]
    assert len(ci) == 1, ".ci/run should hold one `python3 -m venv ...` test command line"
    assert ci[0] in lines, f"README.md must hold the test command exactly as .ci/run runs it:\n{ci[0]}"
    assert DEMO_COMMAND in lines, f"README.md must hold the demo command exactly:\n{DEMO_COMMAND}"
    assert "](docs/index.md)" in README.read_text(encoding="utf-8"), "README.md must link docs/index.md"


# The checker itself, on deliberately broken Markdown: it must be able to fail.

def test_slug_follows_github():
    assert slug("The 12 variants") == "the-12-variants"
    assert slug("The `kernels-community` line") == "the-kernels-community-line"
    assert slug("`--format llama`: for stock Transformers and other Llama readers") == \
        "--format-llama-for-stock-transformers-and-other-llama-readers"
    assert slug("Tokenizer (`benchmarks/bench_tokenizer.py`)") == "tokenizer-benchmarksbench_tokenizerpy"
    assert slug("Pipelines: infilling, completion and chat") == "pipelines-infilling-completion-and-chat"
    assert slug("See [the API](api.md)") == "see-the-api"


def test_checker_finds_broken_links(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "page.md").write_text("# Page\n\n## Two words\n\n## Two words\n")
    (tmp_path / "script.py").write_text("")
    doc = tmp_path / "doc.md"
    doc.write_text("\n".join([
        "# Doc",
        "## Local `heading`",
        "[ok file](script.py) [ok folder](sub/) [ok anchor](sub/page.md#two-words)",
        "[ok repeated heading](sub/page.md#two-words-1) [ok here](#local-heading) [web](https://example.com/x)",
        "[mail](mailto:a@b.c) [code anchor](script.py#L1)",
        "[missing file](nope.md)",
        "[missing anchor](sub/page.md#three-words)",
        "[missing local anchor](#nowhere)",
        "[outside](../elsewhere.md)",
        "`[in a code span](nope2.md)`",
        "```markdown",
        "[in a fence](nope3.md)",
        "```",
        "<!-- [in a comment](nope4.md) -->",
        "![missing image](img.png)",
    ]) + "\n")
    outside = tmp_path.parent / "elsewhere.md"
    outside.write_text("# Elsewhere\n")
    try:
        problems = broken_links(doc, root=tmp_path)
    finally:
        outside.unlink()
    assert [p.split(":")[1] for p in problems] == ["6", "7", "8", "9", "15"], problems
    assert "no such file" in problems[0] and "nope.md" in problems[0]
    assert "no heading #three-words" in problems[1]
    assert "no heading #nowhere" in problems[2]
    assert "outside the repository" in problems[3]
    assert "img.png" in problems[4]
