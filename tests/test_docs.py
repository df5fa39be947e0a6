"""The README and the guides under docs/: every link resolves (files and #anchors, by GitHub's heading rule), the
README stays a ten-minute read with the two fresh-machine commands, it quotes only numbers the results summary holds,
each guide opens with the commands it is about, and every place the harness points a user at ("docs/scale.md,
'Quantization memory'") exists."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
GUIDES = sorted((ROOT / "docs").glob("*.md"))
SUMMARY = ROOT / "docs/results/summary.md"
# human-written pages; the report copies under docs/results/<run>/ are a run's output, kept as written
PAGES = [README, *GUIDES, ROOT / "docs/results/README.md", SUMMARY, ROOT / "harness/texts/README.md",
         ROOT / "harness/tasks/data/README.md"]
FRESH = ["python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/harness gate",
         "python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && .venv/bin/python -m pytest"]
MD = MarkdownIt("commonmark").enable("table")


def slugs(path: Path) -> set[str]:
    """GitHub's anchors: the heading's text lower-cased, punctuation but '-' and '_' dropped, spaces to '-'; a
    repeated heading gets -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    tokens = MD.parse(path.read_text())
    for i, tok in enumerate(tokens):
        if tok.type != "heading_open":
            continue
        text = "".join(c.content for c in tokens[i + 1].children if c.type in ("text", "code_inline"))
        s = re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")
        n = seen.get(s, 0)
        seen[s] = n + 1
        out.add(s if n == 0 else f"{s}-{n}")
    return out


def links(path: Path) -> list[str]:
    out = []
    for tok in MD.parse(path.read_text()):
        for child in tok.children or []:
            if child.type in ("link_open", "image"):
                out.append(child.attrGet("href") if child.type == "link_open" else child.attrGet("src"))
    return out


def test_slugs_follow_github_s_rule():
    """By hand, as GitHub renders these headings (docs/results/README.md's own links use the same anchors)."""
    page = ROOT / "docs/results/README.md"
    s = slugs(page)
    assert "h200-2026-11-30-pytest--m-gpu-and-pytest--m-recipes-pass-recipes-and-layers-on-real-weights-a-cached-gate-in-process" in s
    assert "which-layers-hurt-harness-sensitivity" in slugs(ROOT / "docs/sensitivity.md")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_resolves(page):
    bad = []
    for href in links(page):
        if re.match(r"^[a-z]+:", href):  # https:, mailto: (not checked: no network)
            continue
        target, _, anchor = href.partition("#")
        dest = (page.parent / target).resolve() if target else page
        if not dest.exists():
            bad.append(f"{href}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in slugs(dest):
            bad.append(f"{href}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert not bad, bad


def test_the_readme_is_a_ten_minute_read_with_the_two_commands():
    text = README.read_text()
    assert len(text.splitlines()) <= 250
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    assert [b.strip() for b in blocks[:2]] == FRESH  # the first two code blocks, unchanged
    ci = (ROOT / ".ci/run").read_text()
    assert re.search(r'"\$venv/bin/python" -m pytest\b', ci) and "-e '.[dev]'" in ci  # CI runs the second command


def prose_numbers(text: str) -> set[str]:
    """Decimal numbers outside code blocks and inline code (version numbers like 0.26.0 are not measurements)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    return set(re.findall(r"(?<![\w.])\d+\.\d+(?!\.?\w)", text))


def test_every_number_the_readme_quotes_is_in_the_results_summary():
    summary = SUMMARY.read_text()
    missing = sorted(n for n in prose_numbers(README.read_text())
                     if not re.search(rf"(?<![\w.]){re.escape(n)}(?!\.?\w)", summary))
    assert not missing, f"numbers the README quotes that docs/results/summary.md does not hold: {missing}"


def test_prose_numbers_are_found_by_hand():
    assert prose_numbers("scored 99.31 with vLLM 0.26.0 (`x 1.5`), 24 s\n```\n7.25\n```\nand 0.916.") == {"99.31",
                                                                                                             "0.916"}


def test_each_summary_row_names_a_date_and_a_commit_the_notebook_records():
    notebook = (ROOT / "docs/results/README.md").read_text()
    rows = [r for r in SUMMARY.read_text().splitlines() if r.startswith("| ") and not r.startswith("| what")]
    rows = [r for r in rows if not set(r) <= set("|- ")]
    assert len(rows) >= 10
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        date, commit = cells[3], cells[4]
        assert re.fullmatch(r"20\d\d-\d\d-\d\d", date), row
        if commit.startswith("(published"):
            continue
        assert re.fullmatch(r"[0-9a-f]{7}", commit) and commit in notebook, row


@pytest.mark.parametrize("guide", GUIDES, ids=lambda p: p.name)
def test_each_guide_opens_with_its_commands(guide):
    tokens = [t for t in MD.parse(guide.read_text()) if t.type in ("heading_open", "fence", "paragraph_open")]
    assert tokens[0].type == "heading_open" and tokens[0].tag == "h1"
    assert tokens[1].type == "fence" and tokens[1].info == "bash", f"{guide.name}: the first block after the title"


POINTER = re.compile(r"""\b(README|docs/[\w./-]+\.md)(?:,\s*|\s+)['"]([^'"]{3,60})['"]""")


def pointer_files():
    """What the harness, the configs, the recipes and the scripts print or say to a user."""
    return [*ROOT.glob("harness/**/*.py"), *ROOT.glob("harness/**/*.yaml"), *ROOT.glob("configs/*.yaml"),
            *ROOT.glob("recipes/*.yaml"), *ROOT.glob("scripts/*"), *ROOT.glob("examples/**/*.yml"),
            ROOT / ".ci/run"]


def test_every_page_and_section_the_harness_points_at_exists():
    """A page named (docs/scale.md) exists; a section named after a page ("README 'Sizing'", "docs/scale.md,
    'Quantization memory'") is a heading of that page."""
    pages = sections = 0
    bad = []
    for f in pointer_files():
        text = f.read_text(errors="replace")
        for m in re.finditer(r"\bdocs/[\w./-]+\.md", text):
            pages += 1
            if not (ROOT / m.group(0)).exists():
                bad.append(f"{f.relative_to(ROOT)}: {m.group(0)} does not exist")
        for m in POINTER.finditer(text):
            sections += 1
            page = README if m.group(1) == "README" else ROOT / m.group(1)
            heads = re.findall(r"^#+ (.+)$", page.read_text(), re.M) if page.exists() else []
            section = m.group(2).split("\n")[0].strip()  # a pointer wrapped over lines: its first line
            if not any(h.startswith(section) for h in heads):
                bad.append(f"{f.relative_to(ROOT)}: {m.group(1)} has no section {m.group(2)!r}")
    assert not bad, bad
    assert pages >= 5 and sections >= 5  # the pointers are there to be checked (quantize, config, init, report, vLLM)
