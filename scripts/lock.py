#!/usr/bin/env python
"""Regenerate constraints.txt: the exact versions of every package that requirements.txt pulls in.

requirements.txt lists what the code imports directly, with ranges (a user's CUDA torch must fit);
constraints.txt pins each package of a clean install of it, transitive ones included, so that
`make test` and `make demo` install what CI tested, months from now. Run it on purpose
(`make lock`), then run `make test` with the new lock and commit both files together.

What it does: a fresh virtual environment in a temporary folder; pip, torch==2.13.0 (the CPU
build), `-r requirements.txt` and triton==3.6.0 installed into it as the Makefile does; then
every installed distribution pinned, except torch, triton and what torch alone needs (sympy,
nvidia-*, ...): a user's CUDA torch brings its own, and pinning them would fight it.

    python scripts/lock.py                      # writes constraints.txt
    python scripts/lock.py --out /tmp/c.txt     # somewhere else (to compare)
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH = "torch==2.13.0"
TRITON = "triton==3.6.0"
UNPINNED = {"torch", "triton"}  # the user's build: a CUDA torch brings its own triton
# Inside the fresh environment: each installed distribution's version and the names it requires here.
GRAPH = r"""
import json, re
from importlib import metadata
from packaging.requirements import Requirement
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
out = {}
for d in metadata.distributions():
    deps = []
    for r in d.requires or []:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            deps.append(norm(req.name))
    out[norm(d.metadata["Name"])] = {"name": d.metadata["Name"], "version": d.version, "deps": deps}
print(json.dumps(out))
"""


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def direct_names(requirements: Path) -> list[str]:
    names = []
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(norm(re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0]))
    return names


def locked(graph: dict, roots: list[str]) -> list[tuple[str, str]]:
    """The distributions reachable from ``roots`` without passing through torch or triton, plus pip."""
    keep, todo = set(), [r for r in roots if r not in UNPINNED] + ["pip"]
    while todo:
        name = todo.pop()
        if name in keep or name in UNPINNED or name not in graph:
            continue
        keep.add(name)
        todo.extend(graph[name]["deps"])
    return sorted((graph[n]["name"], graph[n]["version"]) for n in keep)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--requirements", type=Path, default=ROOT / "requirements.txt")
    ap.add_argument("--out", type=Path, default=ROOT / "constraints.txt")
    args = ap.parse_args()
    roots = direct_names(args.requirements)
    with tempfile.TemporaryDirectory(prefix="lock-") as tmp:
        py = str(Path(tmp) / "bin" / "python")
        steps = [[sys.executable, "-m", "venv", tmp],
                 [py, "-m", "pip", "install", "--quiet", "--upgrade", "pip"],
                 [py, "-m", "pip", "install", "--quiet", TORCH],
                 [py, "-m", "pip", "install", "--quiet", "-r", str(args.requirements)],
                 [py, "-m", "pip", "install", "--quiet", TRITON]]
        for i, cmd in enumerate(steps, 1):
            print(f"[{i}/{len(steps)}] {' '.join(cmd[2:] if i > 1 else cmd[1:3])}", flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["(no output)"]
                print(f"lock: {' '.join(cmd[2:])} failed: {tail[0]}", file=sys.stderr)
                return 1
        done = subprocess.run([py, "-c", GRAPH], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"lock: reading the installed packages failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}",
                  file=sys.stderr)
            return 1
        graph = json.loads(done.stdout)
    missing = [r for r in roots if r not in graph]
    if missing:
        print(f"lock: {', '.join(missing)} from {args.requirements.name} did not install", file=sys.stderr)
        return 1
    pins = locked(graph, roots)
    left = sorted(graph[n]["name"] for n in graph if n not in {norm(p) for p, _ in pins} and n not in ("setuptools",))
    text = ("# The tested versions of every package requirements.txt pulls in: `make` installs with\n"
            "#   pip install -c constraints.txt -r requirements.txt\n"
            "# Generated by `make lock` (scripts/lock.py) from a clean install; refresh it on purpose, run\n"
            "# `make test`, and commit it with requirements.txt. Left out, as a user's CUDA torch brings its own:\n"
            f"#   {', '.join(left)}\n" + "".join(f"{n}=={v}\n" for n, v in pins))
    tmp_out = args.out.with_name(args.out.name + ".tmp")
    tmp_out.write_text(text)
    tmp_out.replace(args.out)
    print(f"wrote {args.out} ({len(pins)} packages pinned; left out: {', '.join(left)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
