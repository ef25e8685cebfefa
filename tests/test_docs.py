"""The documentation stays true to the repository: links resolve, the README stays short, its layout table
matches the files and their docstrings, every `make` target the docs name exists, and the Helm chart's
README documents every value.

Everything is read from the files at test time (no hard-coded module list): moving a module fails
`test_layout_table_lists_every_folder_and_module` with the row to paste into the README.
"""

from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
README_MAX_BYTES = 15_000
MODULE_FOLDERS = ("neurovit", "training", "handlers", "monitoring")

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`\n]*`")
FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
MAKE_TARGET = re.compile(r"(?<![\w./-])make ([a-z][a-z0-9-]*)")


def documents() -> list[Path]:
    """The Markdown files whose links are checked."""
    found = [README, ROOT / "helm" / "neurovit" / "README.md", ROOT / "manifests" / "README.md"]
    found += sorted((ROOT / "docs").rglob("*.md")) + sorted((ROOT / "monitoring").glob("*.md"))
    return [path for path in found if path.is_file()]


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def code_text(text: str) -> str:
    """Fenced code blocks and inline code spans: where commands are written."""
    parts, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
        elif fenced:
            parts.append(line)
        else:
            parts += [span.strip("`") for span in INLINE_CODE.findall(line)]
    return "\n".join(parts)


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-', and
    '-1', '-2', ... appended to repeats."""
    seen: dict[str, int] = {}
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = HEADING.match(line)
        if not match:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(2)).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


@pytest.mark.parametrize("document", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_relative_links_point_to_existing_files_and_headings(document: Path):
    broken = []
    for line in prose_lines(document.read_text(encoding="utf-8")):
        for target in LINK.findall(INLINE_CODE.sub("", line)):
            if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            file_part, _, anchor = target.partition("#")
            linked = (document.parent / file_part).resolve() if file_part else document
            if not linked.exists():
                broken.append(f"{target}: no such file")
            elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
                broken.append(f"{target}: no heading #{anchor} in {linked.relative_to(ROOT)}")
    assert not broken, f"{document.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_is_at_most_15_kb():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md: {size} bytes, over {README_MAX_BYTES}; move detail to docs/"


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-zA-Z_][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))


@pytest.mark.parametrize("document", documents(), ids=lambda path: str(path.relative_to(ROOT)))
def test_every_make_target_the_docs_name_exists(document: Path):
    named = set(MAKE_TARGET.findall(code_text(document.read_text(encoding="utf-8"))))
    assert not named - make_targets(), f"{document.relative_to(ROOT)} names unknown targets"


# ---- the README's layout table ------------------------------------------------------------------
#
# Rule for a module row: its description, normalised (backticks dropped, whitespace collapsed, a final
# '.' dropped, case kept), is the module docstring's first line normalised the same way, or a prefix of it
# that ends where a clause ends: the rest of the line starts with ':', ';', ',', '(' or '—' (spaces
# allowed before), or the prefix itself ends with '?'. So a row may shorten the first line to its leading
# clause but never reword it: fix the docstring and the row together.


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("\\|", "|").replace("`", "")).strip().rstrip(".").rstrip()


def agrees(cell: str, first_line: str) -> bool:
    cell, line = normalise(cell), normalise(first_line)
    if not cell or not line.startswith(cell):
        return False
    rest = line[len(cell) :]
    return rest == "" or bool(re.match(r"\s*[:;,(—]", rest)) or (cell.endswith("?") and rest[:1] == " ")


def layout_rows() -> dict[str, str]:
    """``{path: description}`` from the table under the README's "## Layout" heading."""
    rows, inside = {}, False
    for line in README.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## Layout"
        elif inside and line.startswith("|"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            match = re.fullmatch(r"`([^`]+)`", cells[0]) if cells else None
            if match and len(cells) >= 2:
                rows[match.group(1)] = cells[1]
    return rows


def ignored_top_level() -> list[str]:
    patterns = []
    for raw in (ROOT / ".gitignore").read_text().splitlines():
        raw = raw.strip()
        if raw and not raw.startswith("#") and "/" not in raw.rstrip("/"):
            patterns.append(raw.rstrip("/"))
    return patterns


def top_level_folders() -> list[str]:
    ignored = ignored_top_level()
    return sorted(
        path.name
        for path in ROOT.iterdir()
        if path.is_dir()
        and not path.name.startswith(".")
        and not any(fnmatch.fnmatch(path.name, pattern) for pattern in ignored)
    )


def modules() -> list[Path]:
    found = []
    for folder in MODULE_FOLDERS:
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if path.name != "__init__.py" and not {"__pycache__", "tests"} & set(relative.parts):
                found.append(path)
    return found


def first_docstring_line(path: Path) -> str | None:
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    return docstring.strip().splitlines()[0] if docstring and docstring.strip() else None


def test_layout_table_lists_every_folder_and_module():
    rows = layout_rows()
    missing = [name for name in top_level_folders() if f"{name}/" not in rows]
    problems = [f"no row for folder: | `{name}/` | <what it holds> |" for name in missing]
    for path in modules():
        relative = path.relative_to(ROOT).as_posix()
        first = first_docstring_line(path)
        if first is None:
            problems.append(f"{relative} has no module docstring")
        elif relative not in rows:
            problems.append(f"no row for module: | `{relative}` | {first.rstrip('.')} |")
        elif not agrees(rows[relative], first):
            problems.append(f"{relative}: row {rows[relative]!r} is not its docstring's first line {first!r}")
    assert not problems, "README.md layout table:\n" + "\n".join(problems)


def test_layout_table_rows_name_existing_paths():
    stale = [path for path in layout_rows() if not (ROOT / path).exists()]
    assert not stale, f"README.md layout rows for paths that do not exist: {stale}"


@pytest.mark.parametrize(
    ("cell", "line", "expected"),
    [
        ("The core of serving", "The core of serving: one request item in.", True),
        ("The core of serving: one request item in", "The core of serving: one request item in.", True),
        ("`neurovit` command line", "`neurovit` command line: the main job.", True),
        ("How good is an explanation map?", "How good is an explanation map? Localisation.", True),
        ("The core of", "The core of serving: one request item in.", False),
        ("The heart of serving", "The core of serving: one request item in.", False),
        ("", "Anything.", False),
    ],
)
def test_layout_rule(cell, line, expected):
    assert agrees(cell, line) is expected


# ---- the Helm chart's README --------------------------------------------------------------------


def test_helm_readme_documents_every_top_and_second_level_value():
    chart = ROOT / "helm" / "neurovit"
    values = yaml.safe_load((chart / "values.yaml").read_text())
    table = (chart / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\|\s*`([\w.-]+)`\s*\|", table, flags=re.MULTILINE))
    keys = []
    for key, value in values.items():
        keys.append(key)
        if isinstance(value, dict):
            keys += [f"{key}.{child}" for child in value]
    missing = [key for key in keys if not any(row == key or row.startswith(f"{key}.") for row in documented)]
    assert not missing, f"helm/neurovit/README.md's values table lacks {missing}"
