"""What the tool tests share: the repository's root, and loading one of Kiln's scripts (not a package) as a module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load(name: str, path: Path) -> ModuleType:
    """The file at path as module name, registered in sys.modules (dataclasses look their module up there); one
    module per file however many test files load it (kiln_cli imports kiln_ready: the suites see the same one)."""
    known = sys.modules.get(name)
    if known is not None and Path(getattr(known, "__file__", "") or "").resolve() == path.resolve():
        return known
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader, path
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
