"""A plain (non-editable) install must carry the SQL migrations inside the package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_migrations_and_console_script(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("plugin_gateway-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n.removeprefix("gateway/migrations/") for n in names if n.startswith("gateway/migrations/"))
    assert shipped == sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "gateway = gateway.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
