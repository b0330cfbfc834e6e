"""The documentation links only to what a clone has: every relative link resolves to a file inside the repository."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", ROOT / "k8s" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def _relative_links(document: Path) -> list[str]:
    targets = [target.split("#", 1)[0] for target in _LINK.findall(document.read_text())]
    return [target for target in targets if target and not re.match(r"[a-z]+:", target)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve_inside_the_repository(document: Path) -> None:
    for target in _relative_links(document):
        resolved = (document.parent / target).resolve()
        assert resolved.is_relative_to(ROOT), f"{document.name} links outside the repository: {target}"
        assert resolved.exists(), f"{document.name} links to a missing file: {target}"


def test_the_architecture_is_in_the_repository() -> None:
    assert "docs/architecture.md" in _relative_links(ROOT / "README.md")


def test_the_link_check_sees_a_link_out_of_the_clone(tmp_path: Path) -> None:
    document = tmp_path / "README.md"
    document.write_text("The design is in [ARCHITECTURE](../shared/ARCHITECTURE.md) and [docs](https://x.org).\n")
    assert _relative_links(document) == ["../shared/ARCHITECTURE.md"]
