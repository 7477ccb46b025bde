"""The claims tables cannot rot: every test id docs/testing.md names still
collects, every test name docs/tcp-conformance.md gives exists, each RFC
9293 MUST is in its table exactly once, and the counts that page shows
are the ones computed here from the table and from pytest's collection."""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
TESTING = ROOT / "docs" / "testing.md"
CONFORMANCE = ROOT / "docs" / "tcp-conformance.md"
TCP_TESTS = ROOT / "tests" / "iolib" / "tcp"

NODE_ID = re.compile(r"`(tests/[\w/]+\.py(?:::[\w\[\]-]+)?)`")


def collect(*targets: str) -> list[str]:
    """The node ids pytest collects for ``targets`` (one subprocess)."""
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *targets], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return [line for line in done.stdout.splitlines() if "::" in line]


def test_every_test_id_in_testing_md_collects():
    named = sorted(set(NODE_ID.findall(TESTING.read_text())))
    assert len(named) > 50
    files = sorted({n.split("::")[0] for n in named})
    missing_files = [f for f in files if not (ROOT / f).is_file()]
    assert not missing_files, f"docs/testing.md names files that do not exist: {missing_files}"
    collected = collect(*files)
    missing = [n for n in named if "::" in n
               and not any(c == n or c.startswith(n + "[") or c.startswith(n + "::") for c in collected)]
    assert not missing, f"docs/testing.md names tests that do not collect: {missing}"


def test_every_row_of_testing_md_names_a_test_or_says_why_not():
    section = ""
    for line in TESTING.read_text().splitlines():
        if line.startswith("## "):
            section = line
        if section.startswith("## Mutation testing"):
            continue  # its tables are scores and mutants, not claims
        if line.startswith("| ") and not line.startswith(("| claim", "|---")):
            assert (NODE_ID.search(line) or "**no test**" in line or "*rule for" in line
                    or "bench/" in line or "see the" in line), f"row without a test: {line}"


def tcp_test_names() -> set[str]:
    names = set()
    for path in TCP_TESTS.glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test_"):
                names.add(node.name)
    return names


def test_every_test_named_in_tcp_conformance_exists():
    text = CONFORMANCE.read_text()
    named = set(re.findall(r"`(test_\w+)(?:\[[^`\]]*\])?`", text))
    qualified = re.findall(r"`(tests/[\w/]+\.py)::(test_\w+)`", text)
    local = tcp_test_names()
    assert not named - local - {name for _path, name in qualified}, \
        f"tcp-conformance.md names tests that do not exist: {sorted(named - local)}"
    for path, name in qualified:
        tree = ast.parse((ROOT / path).read_text())
        assert any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name
                   for n in ast.walk(tree)), f"{path}::{name} does not exist"


def must_rows() -> dict[int, str]:
    """MUST number -> the status/test cell of its row in the Appendix B table."""
    rows: dict[int, str] = {}
    for line in CONFORMANCE.read_text().splitlines():
        m = re.match(r"\| MUST-([\d., ]+) \| [^|]* \| (.*) \|$", line)
        if not m:
            continue
        numbers: list[int] = []
        for part in m.group(1).split(","):
            part = part.strip()
            if ".." in part:
                lo, hi = part.split("..")
                numbers += range(int(lo), int(hi) + 1)
            else:
                numbers.append(int(part))
        for n in numbers:
            assert n not in rows, f"MUST-{n} is in the table twice"
            rows[n] = m.group(2)
    return rows


def computed_counts() -> dict[str, int]:
    rows = must_rows()
    not_implemented = [n for n, cell in rows.items() if "**not implemented**" in cell]
    collected = collect(str(TCP_TESTS.relative_to(ROOT)))
    return {
        "tests": len(collected),
        "files": len({c.split("::")[0] for c in collected}),
        "musts": len(rows),
        "must_tested": len(rows) - len(not_implemented),
        "must_not_implemented": len(not_implemented),
    }


def test_every_rfc9293_must_is_in_the_table_once():
    assert sorted(must_rows()) == list(range(1, 70))


def test_the_counts_shown_in_tcp_conformance_are_the_computed_ones():
    text = CONFORMANCE.read_text()
    block = re.search(r"<!-- counts: computed.*?-->\n(.*?)<!-- /counts -->", text, re.S)
    assert block, "tcp-conformance.md has lost its counts block"
    shown = {key: int(value) for key, value in re.findall(r"<!-- (\w+) -->(\d+)", block.group(1))}
    assert shown == computed_counts(), "update the counts block of docs/tcp-conformance.md"


def test_the_equivalent_mutants_table_parses_and_names_modules_that_exist():
    # bench/mutation.py reads this table to tell equivalents from survivors:
    # a row it cannot parse, or one naming a module that is gone, would
    # silently stop counting.
    from bench.mutation import equivalents

    rows = equivalents(TESTING)
    assert len(rows) > 20
    for module, line_number, operator, line in rows:
        assert (ROOT / module).is_file(), module
        assert 0 < line_number <= len((ROOT / module).read_text().splitlines()), (module, line_number)
        assert operator.startswith("core/"), operator
        assert line, (module, operator)
