"""Every command and snippet of the README runs as written. Each code block says how it is tested in
an HTML comment right above it:

    <!-- readme-test: run -->                      every line (shell) or the block (Python), as written
    <!-- readme-test: run, replacing "A" by "B" --> the same with smaller sizes, where the README says so
    <!-- readme-test: skip: WHY -->                not here, and why (the README says so too)

A block without one fails the test, so a new example cannot go untested by accident."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))  # the README's documents: their blocks are held to the same rule
DIRECTIVE = re.compile(r"<!-- readme-test: (run|skip)(.*?)-->\s*\n```(\w*)\n(.*?)```", re.S)
BLOCK = re.compile(r"\n```(\w*)\n(.*?)```", re.S)


def blocks() -> list[tuple[str, str, str, str]]:
    """(how, details, language, body) of every fenced block of the README and its documents; a block
    without a directive is an error."""
    found = []
    for path in (README, *DOCS):
        text = path.read_text()
        mine = [(m.group(1), m.group(2).strip(), m.group(3), m.group(4)) for m in DIRECTIVE.finditer(text)]
        assert len(mine) == len(BLOCK.findall(text)), (
            f"a code block of {path.name} has no <!-- readme-test --> above it"
        )
        found += mine
    return found


def _replacements(details: str) -> list[tuple[str, str]]:
    return re.findall(r'replacing "([^"]*)" by "([^"]*)"', details)


def _id(block: tuple[str, str, str, str]) -> str:
    return block[3].strip().splitlines()[0][:60]


BLOCKS = blocks()


def test_every_block_says_how_it_is_tested():
    for how, details, _, body in BLOCKS:
        if how == "skip":
            assert details.startswith(":") and len(details) > 10, f"a skip must say why: {body[:60]!r}"
        for old, _new in _replacements(details):
            assert old in body, f"{old!r} is not in the block it replaces it in: {body[:60]!r}"


@pytest.mark.real_data
@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.parametrize("block", [b for b in BLOCKS if b[0] == "run"], ids=_id)
def test_the_readme_block_runs(block, tmp_path):
    _, details, language, body = block
    for old, new in _replacements(details):
        body = body.replace(old, new)
    made_before = _folders()
    env = {**os.environ, "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    try:
        if language == "python":
            # the block as a script, from the repository (the examples write under results/)
            script = tmp_path / "block.py"
            script.write_text(body)
            done = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{body}\n--- stderr ---\n{done.stderr[-4000:]}"
            return
        folders: dict[str, str] = {}
        for line in (raw.split("#", 1)[0].strip() for raw in body.splitlines()):
            if not line:
                continue
            for placeholder, value in folders.items():  # a folder an earlier line printed
                line = line.replace(placeholder, value)
            done = subprocess.run(line, shell=True, cwd=ROOT, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"{line}\n--- stderr ---\n{done.stderr[-4000:]}"
            said = done.stdout + done.stderr
            found = re.search(r"fedsim: sweep in (\S+?)[:;]", said)
            if found:
                folders["results/sweeps/fashion_mnist_mlp_fedavg/<timestamp>"] = found.group(1)
    finally:
        new = _folders() - made_before  # what the examples wrote under results/ goes again
        for folder in sorted(new):
            if folder.parent not in new:
                shutil.rmtree(folder, ignore_errors=True)


def _folders() -> set[Path]:
    results = ROOT / "results"
    return {p for p in results.rglob("*") if p.is_dir()} if results.is_dir() else set()
