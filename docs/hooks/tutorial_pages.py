"""mkdocs hook: every tutorial in tutorials/ (jupytext percent format) becomes a page of the site at build time,
tutorials/<name>.md: its markdown cells as text, its code cells as Python blocks. The scripts stay the one source;
tests/test_tutorials.py runs them, this renders them."""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

TUTORIALS = Path(__file__).resolve().parents[2] / "tutorials"
CELL = "# %%"


def tutorial_scripts() -> list[Path]:
    """The tutorials, without their shared helper module (_common.py)."""
    return sorted(p for p in TUTORIALS.glob("*.py") if not p.name.startswith("_"))


def cells(text: str) -> list[tuple[str, list[str]]]:
    """("markdown" | "code", lines) per `# %%` cell, in order; lines before the first marker are code."""
    out: list[tuple[str, list[str]]] = [("code", [])]
    for line in text.splitlines():
        if line.startswith(CELL):
            out.append(("markdown" if "[markdown]" in line else "code", []))
        else:
            out[-1][1].append(line)
    return [(kind, lines) for kind, lines in out if any(line.strip() for line in lines)]


def uncomment(line: str) -> str:
    return line[2:] if line.startswith("# ") else line.lstrip("#")


def percent_to_markdown(text: str, source: str) -> str:
    """The page of one tutorial script (`source`: its path in the repository, named at the end of the page)."""
    blocks = []
    for kind, lines in cells(text):
        if kind == "markdown":
            blocks.append("\n".join(uncomment(line) for line in lines).strip())
        else:
            blocks.append("```python\n" + "\n".join(lines).strip("\n") + "\n```")
    blocks.append(f"*This page is `{source}`, rendered. Run it with `python {source}` from a checkout, or open it "
                  f"as a notebook with `jupytext --to notebook {source}`; it prints the figure's path and numbers "
                  f"([Tutorials](../tutorials.md)).*")
    return "\n\n".join(blocks) + "\n"


def on_files(files, config):
    for script in tutorial_scripts():
        page = percent_to_markdown(script.read_text(encoding="utf-8"), f"tutorials/{script.name}")
        files.append(File.generated(config, f"tutorials/{script.stem}.md", content=page))
    return files
