"""README and docs/ say what the code says: the key table is args.py's, the recipes in them pass the
plugin's checks, every link and anchor resolves, every module path named exists, and the README
stays a front door."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from axolotl_droplora.args import DropLoRAArgs

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)


def prose(page: Path) -> str:
    """The page without its fenced code blocks (whose `#` lines are not headings)."""
    return FENCE.sub("", page.read_text())


def squash(text: str) -> str:
    return " ".join(text.split())


def key_table() -> dict[str, tuple[str, str]]:
    """README's `| key | default | meaning |` table: key -> (default, meaning)."""
    lines = README.read_text().splitlines()
    start = lines.index("| key | default | meaning |")
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        key, default, meaning = (cell.strip() for cell in line.strip().strip("|").split(" | ", 2))
        rows[key.strip("`")] = (default.strip("`"), meaning)
    return rows


def test_the_key_table_lists_every_key_and_only_the_keys():
    assert set(key_table()) == set(DropLoRAArgs.model_fields)


@pytest.mark.parametrize("key", sorted(DropLoRAArgs.model_fields))
def test_the_key_table_says_what_args_py_says(key):
    default, meaning = key_table()[key]
    description = DropLoRAArgs.model_fields[key].json_schema_extra["description"]
    assert squash(meaning) == squash(description), f"README's row for {key} differs from args.py: copy it over"
    # the default column is the one the description names ("Default 0.3." / "`original` (default)")
    assert f"Default {default}." in description or f"`{default}` (default)" in description


def code_blocks(language: str):
    for page in PAGES:
        for block in re.findall(rf"^```{language}\n(.*?)^```", page.read_text(), re.DOTALL | re.MULTILINE):
            yield page.relative_to(ROOT), block


@pytest.mark.parametrize("page,block", list(code_blocks("yaml")))
def test_every_recipe_shown_passes_the_plugins_checks(page, block):
    config = yaml.safe_load(block)
    assert "axolotl_droplora.DropLoRAPlugin" in config["plugins"], page
    DropLoRAArgs.model_validate(config)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", prose(page), re.MULTILINE)}


def test_every_relative_link_and_anchor_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", prose(page)):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken


def test_every_module_path_named_exists():
    pattern = r"(?<![\w/.~-])((?:axolotl_droplora|scripts|bench|examples)/[\w/.-]*\w)"
    named = {path for page in PAGES for path in re.findall(pattern, page.read_text())}
    missing = sorted(path for path in named if not (ROOT / path).exists())
    assert not missing, missing


def test_every_docs_page_is_linked_from_the_readme():
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)", README.read_text()))
    assert linked == {f"docs/{page.name}" for page in PAGES[1:]}


def test_the_readme_is_a_front_door():
    assert len(README.read_text().splitlines()) <= 250, "README is the front door: move detail to docs/"
