"""The dependency set: what the code imports is listed, and what is installed is what the lock pins."""

import ast
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OPTIONAL = {"triton": "CUDA torch brings it; the Makefile installs the CPU interpreter's",
            "tinycudann": "used only when already installed"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _listed(path: Path) -> dict[str, str]:
    """name -> the requirement line, for each line of a requirements or constraints file."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out[_norm(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0])] = line
    return out


def _tracked_python_files() -> list[Path]:
    try:
        names = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True,
                               check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: every .py outside the venv
        return [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts]
    return [ROOT / n for n in names]


def _imported_top_level_modules() -> dict[str, str]:
    """Each top-level module imported anywhere in the project (functions and try blocks included) -> one file."""
    found = {}
    for path in _tracked_python_files():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for n in names:
                found.setdefault(n.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_module_the_code_imports_comes_from_a_listed_package():
    listed = _listed(ROOT / "requirements.txt")
    providers = metadata.packages_distributions()
    own = {p.name for p in ROOT.iterdir() if p.is_dir()} | {p.stem for p in (ROOT / "tests").glob("*.py")}
    unlisted = []
    for module, where in sorted(_imported_top_level_modules().items()):
        if module in sys.stdlib_module_names or module in own or module in OPTIONAL:
            continue
        dists = {_norm(d) for d in providers.get(module, [])}
        if not dists & set(listed):
            unlisted.append(f"{module} ({where}; from {sorted(dists) or 'no installed package'})")
    assert not unlisted, "imported but not in requirements.txt: " + ", ".join(unlisted)


def test_the_lock_pins_every_listed_package_but_torch_and_the_environment_is_the_locked_one():
    listed = _listed(ROOT / "requirements.txt")
    pins = _listed(ROOT / "constraints.txt")
    assert all("==" in line for line in pins.values())
    assert set(listed) - {"torch"} <= set(pins), sorted(set(listed) - {"torch"} - set(pins))
    assert "torch" not in pins and "triton" not in pins  # a user's CUDA build brings its own
    if not (ROOT / ".venv").resolve() == Path(sys.prefix).resolve():
        pytest.skip("not the project's .venv: the Makefile installs the lock there")
    wrong = []
    for name, line in pins.items():
        want = line.split("==", 1)[1]
        try:
            have = metadata.version(name)
        except metadata.PackageNotFoundError:
            wrong.append(f"{name} missing")
            continue
        if have != want:
            wrong.append(f"{name} {have} (locked {want})")
    assert not wrong, "the environment is not the tested set (make install): " + ", ".join(wrong)
