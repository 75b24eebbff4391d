"""The sans-IO core stays sans-IO: no event loop, socket, TLS, selector, thread or clock."""

from __future__ import annotations

import ast
import json
import pathlib
import subprocess
import sys

import pytest

import leveret

FORBIDDEN = {"asyncio", "socket", "ssl", "selectors", "threading", "time"}
SRC = pathlib.Path(leveret.__file__).parent
# leveret.protocol and every leveret module it imports.
CORE_FILES = [
    *sorted((SRC / "protocol").glob("*.py")),
    SRC / "_properties.py",
    SRC / "exceptions.py",
    SRC / "_version.py",
]


def fresh_import(setup: str) -> dict[str, list[str]]:
    """Import leveret.protocol in a new interpreter; report what it loaded."""
    code = f"""
import json, sys
{setup}
before = set(sys.modules)
import leveret.protocol
added = set(sys.modules) - before
print(json.dumps({{
    "loaded": sorted(m for m in {sorted(FORBIDDEN)!r} if m in sys.modules),
    "added": sorted(m for m in {sorted(FORBIDDEN)!r} if m in added),
    "leveret": sorted(m for m in sys.modules if m.startswith("leveret")),
}}))
"""
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    report: dict[str, list[str]] = json.loads(result.stdout)
    return report


# Load leveret.protocol without running leveret/__init__.py (which imports the asyncio driver).
SKIP_TOP_LEVEL_PACKAGE = """
import importlib.util, types
spec = importlib.util.find_spec("leveret")
package = types.ModuleType("leveret")
package.__path__ = list(spec.submodule_search_locations)
sys.modules["leveret"] = package
"""
# pamqp, the reference codec, imports logging (hence threading); count only what leveret adds.
PAMQP_FIRST = "import pamqp.base, pamqp.commands, pamqp.decode, pamqp.encode, pamqp.frame"


def test_core_modules_load_no_io_modules() -> None:
    report = fresh_import(SKIP_TOP_LEVEL_PACKAGE + PAMQP_FIRST)
    assert report["added"] == []
    assert not {"asyncio", "socket", "ssl", "selectors"} & set(report["loaded"])
    assert report["leveret"] == [
        "leveret",
        "leveret._properties",
        "leveret._version",
        "leveret.exceptions",
        "leveret.protocol",
        "leveret.protocol._codec",
        "leveret.protocol._connection",
        "leveret.protocol._events",
    ]


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_core_source_imports_nothing_forbidden(path: pathlib.Path) -> None:
    """`time` is loaded at interpreter startup and pamqp's logging loads `threading`,
    so sys.modules cannot tell; the core's own import statements can."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert not imported & FORBIDDEN


def test_importing_leveret_protocol_starts_no_event_loop_machinery() -> None:
    report = fresh_import("")
    assert not {"asyncio", "socket", "ssl", "selectors"} & set(report["loaded"])
