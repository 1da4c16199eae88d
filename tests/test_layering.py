"""Lower layers never import upper ones: the core imports neither analyses nor families, data imports no analysis."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hooked_av"
FORBIDDEN = {
    "model": ("hooked_av.analysis", "hooked_av.families", "hooked_av.data", "hooked_av.eval", "hooked_av.plot"),
    "data": ("hooked_av.analysis", "hooked_av.plot"),
    "eval": ("hooked_av.analysis", "hooked_av.plot"),
}


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_does_not_import_the_layers_above_it(layer):
    offending = sorted(f"{path.relative_to(PACKAGE)} imports {name}"
                       for path in (PACKAGE / layer).rglob("*.py") for name in imported_modules(path)
                       if name.startswith(FORBIDDEN[layer]))
    assert not offending


FAMILY_PACKAGES = sorted(p.name for p in (PACKAGE / "families").iterdir() if (p / "__init__.py").is_file())


@pytest.mark.parametrize("family", FAMILY_PACKAGES)
def test_a_family_package_imports_no_other_familys_package(family):
    """What two families share lives in a shared module of hooked_av.families (chat, whisper_frames), so a
    family can be removed or changed without touching another."""
    others = tuple(f"hooked_av.families.{other}" for other in FAMILY_PACKAGES if other != family)
    offending = sorted(f"{path.relative_to(PACKAGE)} imports {name}"
                       for path in (PACKAGE / "families" / family).rglob("*.py") for name in imported_modules(path)
                       if name.startswith(others))
    assert not offending
