"""scripts/check-imports: what counts as an import cycle, and that the project has none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "check-imports"


def check(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), str(root)], capture_output=True, text=True, check=False)


def tree(root: Path, files: dict[str, str]) -> Path:
    for package in ("gateway", "routing", "auth", "db"):
        (root / package).mkdir()
        (root / package / "__init__.py").write_text("")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_project_has_no_import_cycle() -> None:
    result = check(ROOT)
    assert result.returncode == 0, result.stdout
    assert " 0 cycles" in result.stdout


def test_a_cycle_through_relative_imports_class_bodies_and_try_blocks_fails(tmp_path: Path) -> None:
    result = check(tree(tmp_path, {
        "gateway/sub/__init__.py": "from . import a\n",
        "gateway/sub/a.py": "try:\n    from .b import thing\nexcept ImportError:\n    pass\n",
        "gateway/sub/b.py": "class C:\n    from gateway.sub import a\n",
    }))
    assert result.returncode == 1
    assert "gateway.sub.a -> gateway.sub.b -> gateway.sub.a" in result.stdout


def test_imports_under_type_checking_or_in_functions_do_not_count(tmp_path: Path) -> None:
    result = check(tree(tmp_path, {
        "db/x.py": "import routing.r\n",
        "routing/r.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from db import x\n"
                         "else:\n    import auth\n\ndef f():\n    import db.x\n"),
    }))
    assert result.returncode == 0, result.stdout
    assert "2 import-time imports" in result.stdout  # db.x -> routing.r and routing.r -> auth only


def test_a_package_importing_from_its_own_init_is_a_cycle(tmp_path: Path) -> None:
    result = check(tree(tmp_path, {
        "auth/__init__.py": "from auth.keys import KEY\nNAME = 'auth'\n",
        "auth/keys.py": "from auth import NAME\nKEY = NAME\n",
    }))
    assert result.returncode == 1
    assert "auth -> auth.keys -> auth" in result.stdout
