"""The package list in pyproject.toml is explicit (the family files are mapped in from the top level), so a new
subpackage must be added there or a wheel would silently lack it."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_and_the_family_folder_are_packaged():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "hooked_av").rglob("*.py")
               if "__pycache__" not in p.parts}
    assert set(setuptools["packages"]) == on_disk | {"hooked_av.model_configs"}
    assert setuptools["package-dir"] == {"hooked_av.model_configs": "model_configs"}
    assert sorted(p.name for p in (ROOT / "model_configs").glob("*.yaml"))
