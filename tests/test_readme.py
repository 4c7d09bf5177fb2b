"""The README's examples that say they run, run."""

from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
MARK = "<!-- this block runs in tests/test_readme.py -->"


def test_the_marked_readme_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the blocks write their run folders under results/
    text = README.read_text()
    blocks = []
    for part in text.split(MARK)[1:]:
        body = part.split("```python", 1)[1].split("```", 1)[0]
        blocks.append(body)
    assert blocks, "no marked block in the README"
    for i, body in enumerate(blocks):
        exec(compile(body, f"README block {i}", "exec"), {})
