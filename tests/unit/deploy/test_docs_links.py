"""Every relative link in the README, the changelog and docs/ points to a file or
directory that exists (relative to the linking file's directory, anchors stripped)."""

import re

from tests.paths import ROOT

DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target); the target ends at whitespace or ")"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = ("http://", "https://", "mailto:")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")


def relative_links(text: str):
    """Targets of the markdown links outside code blocks and code spans."""
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    for target in LINK.findall(text):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        yield target.split("#", 1)[0]


def test_the_documents_exist():
    assert all(path.is_file() for path in DOCS)
    assert len(DOCS) > 3


def test_relative_links_point_to_existing_files():
    broken = [f"{doc.relative_to(ROOT)}: {target}"
              for doc in DOCS
              for target in relative_links(doc.read_text())
              if not (doc.parent / target).exists()]
    assert broken == []


def test_the_link_pattern_finds_links():
    text = "see [a](docs/a.md#x), ![p](../p.png), [w](https://x.org), [h](#top), `[c](no.md)`"
    assert list(relative_links(text)) == ["docs/a.md", "../p.png"]
