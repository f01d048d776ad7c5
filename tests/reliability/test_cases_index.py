"""Every bad-input case listed in the cases README is exercised by at least one test."""

from __future__ import annotations

import re
from pathlib import Path

TESTS_ROOT = Path(__file__).resolve().parents[1]
# A table row of the README: | case | fault kind | files | right outcome |
_CASE_ROW = re.compile(r"^\|\s*(\d+)\s*\|[^|]*\|([^|]*)\|")
_FILE_NAME = re.compile(r"`([^`]+\.[A-Za-z0-9]+)`")
# An f-string literal with a replacement field, e.g. f"17_trips_part_{month}.csv".
_TEMPLATE = re.compile(r"""\bf(["'])([^"'\n]*\{[^"'\n]*)\1""")


def listed_case_files(readme: Path) -> dict[str, list[str]]:
    """Return the file names each case row of the README lists, by case number."""
    cases: dict[str, list[str]] = {}
    for line in readme.read_text(encoding="utf-8").splitlines():
        match = _CASE_ROW.match(line)
        if match:
            cases[match.group(1)] = _FILE_NAME.findall(match.group(2))
    return cases


def test_readme_lists_case_files(cases_dir):
    cases = listed_case_files(cases_dir / "README.md")
    assert cases, "no case rows found in the cases README"
    for case, files in cases.items():
        assert files, f"case {case} lists no file"
        for name in files:
            assert (cases_dir / name).is_file(), f"case {case}: {name} is not in {cases_dir}"


def name_patterns(source: str) -> list[tuple[re.Pattern, int]]:
    """Return a pattern per f-string literal of ``source`` and the length of its fixed text.

    Each replacement field matches any text.
    """
    patterns = []
    for _, template in _TEMPLATE.findall(source):
        pieces = re.split(r"\{[^}]*\}", template)
        pattern = re.compile(".+".join(re.escape(piece) for piece in pieces))
        patterns.append((pattern, sum(len(piece) for piece in pieces)))
    return patterns


def is_referenced(name: str, source: str, patterns: list[tuple[re.Pattern, int]]) -> bool:
    """Return whether ``source`` names the file literally or through an f-string.

    An f-string counts when it matches the whole name and its fixed text is
    at least half of the name, so ``f"{path}"`` does not match every file.
    """
    if name in source:
        return True
    return any(pattern.fullmatch(name) and 2 * fixed >= len(name) for pattern, fixed in patterns)


def test_template_reference_counts():
    source = 'path = cases_dir / f"17_trips_part_{month}.csv"'
    patterns = name_patterns(source)
    assert is_referenced("17_trips_part_2024-01.csv", source, patterns)
    assert not is_referenced("16_pings_mixed_offsets.csv", source, patterns)
    anything = 'path = f"{directory}/{name}"'
    assert not is_referenced("16_pings_mixed_offsets.csv", anything, name_patterns(anything))


def test_every_case_file_has_a_test(cases_dir):
    test_sources = "\n".join(
        path.read_text(encoding="utf-8")
        for path in sorted(TESTS_ROOT.rglob("*.py"))
        if path.resolve() != Path(__file__).resolve()
    )
    patterns = name_patterns(test_sources)
    missing = [
        f"case {case}: {name}"
        for case, files in sorted(listed_case_files(cases_dir / "README.md").items())
        for name in files
        if not is_referenced(name, test_sources, patterns)
    ]
    assert not missing, "case files no test refers to: " + "; ".join(missing)
