"""The policy package imports nothing from the simulator, trainer or critic packages, so an
integrator with another robot installs it alone (CI also runs these tests with those packages
made unimportable: GRRL_ABSENT_PACKAGES in test.sh and the root conftest.py)."""
import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1]
FORBIDDEN = ("bytemini_driver", "grrl_trainer", "grrl_critic")


def imported_modules(path: Path) -> set[str]:
    """Every module an import statement of ``path`` names (at any depth, lazy ones included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


SOURCES = sorted((PACKAGE / "grrl_policy").glob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=[p.name for p in SOURCES])
def test_no_module_imports_the_simulator_trainer_or_critic(path: Path):
    bad = sorted(m for m in imported_modules(path) if m.split(".")[0] in FORBIDDEN)
    assert not bad, f"{path.name} imports {bad}"


def test_the_package_manifest_does_not_depend_on_them():
    assert len(SOURCES) > 10, f"the package's modules were not found under {PACKAGE}"
    deps = {e.text for e in ET.parse(PACKAGE / "package.xml").getroot()
            if e.tag.endswith("depend")}
    assert not deps & set(FORBIDDEN)
