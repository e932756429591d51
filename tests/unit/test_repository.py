"""The repository stands on its own: every file it cites is one it holds."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOP_LEVEL = ("conf", "jobs", "udfs", "pipelines", "hybridrec", "tests", "notebooks", "benchmarks")
# A path into one of the project's folders, or any Markdown file, as cited in prose or code.
CITED = re.compile(
    r"(?<![\w./-])((?:\.ci|" + "|".join(TOP_LEVEL) + r")/[\w./-]*\w|[\w-]+\.md)(?![\w/-])"
)
# Where setup.py installs conf/ (in the wheel and the code zip): cited, though no checkout has it.
INSTALLED_ONLY = "hybridrec/conf"
# Tests that build fake source trees: their paths are fixtures, not citations.
FIXTURE_TREES = {"tests/unit/test_packaging.py"}
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".ipynb", ".cfg", ".txt", ""}


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    return [REPO / n for n in names if Path(n).suffix in TEXT_SUFFIXES and (REPO / n).is_file()]


def _exists(citation: str, cited_from: Path) -> bool:
    return (REPO / citation).exists() or (cited_from.parent / citation).exists()


def test_every_cited_file_is_in_the_repository():
    dangling = []
    for path in _tracked_text_files():
        if str(path.relative_to(REPO)) in FIXTURE_TREES:
            continue
        for match in CITED.finditer(path.read_text(encoding="utf-8", errors="replace")):
            citation = match.group(1).rstrip(".")
            installed_only = citation.split("/")[:2] == INSTALLED_ONLY.split("/")
            if not installed_only and not _exists(citation, path):
                dangling.append(f"{path.relative_to(REPO)}: {citation}")
    assert not dangling, "cited but not in the repository:\n" + "\n".join(sorted(set(dangling)))
