"""The layout's promises: library modules never import the command line (so the CLI is a thin layer
that can change alone), and the CLI package has no import cycle back into itself."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "dise_cli"


def _library_modules() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(REPO).with_suffix("")
        if rel.parts[1] in ("cli", "__main__"):
            continue
        names.append(".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts))
    return names


def test_library_modules_never_import_the_cli():
    modules = _library_modules()
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n"
            "    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.startswith('dise_cli.cli')))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]", f"library modules pulled in {res.stdout.strip()}"


def test_command_modules_do_not_import_the_app():
    """Commands are plain functions registered in dise_cli/cli/__init__.py; none imports it back."""
    for path in (PACKAGE / "cli").glob("*.py"):
        if path.name == "__init__.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "dise_cli.cli":
                assert all(a.name not in ("app", "COMMANDS") for a in node.names), f"{path.name} imports the app"
            if isinstance(node, ast.ImportFrom) and node.module == "dise_cli":
                assert all(a.name != "cli" for a in node.names), path.name
