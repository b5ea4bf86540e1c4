"""The documentation: the site builds with `mkdocs build --strict` (no broken link, no missing page, the generated
reference included), and every command the README shows runs as written or is on the list of slow ones below."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# README commands too slow (or needing the network) for the suite; each was run by hand as written.
SLOW = {
    "make test",  # builds .venv and runs this suite
    "make demo",  # about 24 min on 2 CPU cores
    "pip install torch",  # the network, and the user's choice of build
    'pip install -e ".[dev]"',
    "cringe iterate --config examples/iterate_smollm2.yaml",  # about 5 min on 2 CPU cores
}


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def readme_commands() -> list[str]:
    """Shell lines of the README's bash blocks, comments dropped, continuations joined."""
    commands = []
    for block in readme_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                commands.append(" ".join(line.split()))
    return commands


def test_readme_is_short_and_starts_quickly():
    lines = README.read_text().splitlines()
    assert len(lines) <= 210
    assert lines.index("## Quick start") < 40
    # nothing outside the repository's own files: no parent-directory links, no issue references
    text = README.read_text()
    assert "](../" not in text and not re.search(r"\bissue #?\d", text, re.I)
    for target in re.findall(r"\]\(([^)#]+)", text):
        assert (ROOT / target).exists(), f"README links to a missing file: {target}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A fresh directory holding the repository's examples, so README commands write their runs/ there."""
    work = tmp_path_factory.mktemp("readme")
    (work / "examples").symlink_to(ROOT / "examples")
    return work


def run(command: str) -> None:
    """A `cringe` command through the CLI's own entry point, in this process (a subprocess each would spend most
    of the test importing torch); anything else would need a shell and is not in the README."""
    from cringe.cli import main

    argv = shlex.split(command)
    assert argv[0] == "cringe", f"{command!r}: add it to SLOW or teach this test to run it"
    try:
        main(argv[1:])
    except SystemExit as exit_info:
        assert exit_info.code in (0, None), f"{command!r} exited with {exit_info.code}"


def test_every_readme_command_runs_or_is_listed_as_slow(workdir, monkeypatch):
    commands = readme_commands()
    assert "cringe train --config examples/train_tiny.yaml" in commands
    unlisted = set(SLOW) - set(commands)
    assert not unlisted, f"listed as slow but no longer in the README: {unlisted}"
    monkeypatch.chdir(workdir)
    for command in commands:
        if command not in SLOW:
            run(command)
    # what the commands were run for
    assert (workdir / "runs" / "train-tiny" / "model.safetensors").exists()
    assert (workdir / "runs" / "iterate-tiny" / "report" / "report.html").exists()
    page = (workdir / "runs" / "report-tiny" / "report.html").read_text()
    assert "iterate-tiny-dpo" in page and "data:image/png;base64," in page


def test_readme_python_runs(workdir, monkeypatch):
    (code,) = readme_blocks("python")
    monkeypatch.chdir(workdir)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    assert (workdir / "runs" / "pc-python" / "model.safetensors").exists()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]'; make test installs it)")
    pytest.importorskip("material", reason="mkdocs-material is not installed (the docs extra)")
    pytest.importorskip("mkdocstrings_handlers.python", reason="mkdocstrings-python is not installed (the docs extra)")
    site = tmp_path_factory.mktemp("docs") / "site"
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(ROOT / "mkdocs.yml"), "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return site


def test_site_builds_strict_with_the_generated_reference(site):
    iterate = (site / "reference" / "cli" / "iterate" / "index.html").read_text()
    # generated from the parser: a top-level key, a dotted section key, and its default
    assert "--rounds" in iterate and "train.learning_rate" in iterate and "sampling.max_new_tokens" in iterate
    assert "CringeTrainer" in (site / "reference" / "python" / "index.html").read_text()
    for page in ("getting-started", "concepts/losses", "guides/report", "results/frontier", "performance", "scale"):
        assert (site / page / "index.html").exists(), page


def test_docs_point_nowhere_outside_the_repository():
    docs = ROOT / "docs"
    for path in docs.rglob("*.md"):
        text = path.read_text()
        assert not re.search(r"\bissue #?\d|\.\./shared", text, re.I), f"{path}: points outside the repository"
        assert "](http" not in text, f"{path}: a link outside the repository"
        for target in re.findall(r"\]\((?!https?:|#)([^)#\s]+)", text):
            resolved = (path.parent / target).resolve()
            assert resolved.is_relative_to(docs), f"{path}: {target} leaves docs/ (the site cannot serve it)"


@pytest.mark.slow  # about 10-40 s (subprocesses); make test-slow runs it
def test_site_and_report_render_in_chromium(site, tmp_path):
    """A real browser draws the site's front page and a report page (the demo's, the renderer every report uses)
    as more than a blank page, and the report's widest table within a 1280-pixel window: Chromium loads them from
    disk, offline."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import screenshot

    from cringe.report import html_page

    chromium = screenshot.find_chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install chromium)")
    for page in (site / "index.html", ROOT / "docs" / "demo" / "report.html"):
        png = tmp_path / f"{page.parent.name}.png"
        screenshot.screenshot(page, png, chromium)
        assert screenshot.distinct_colours(png) >= 16, f"{page} rendered blank"
    # The demo's main table, twelve columns, fits a 1280-pixel window: its last columns show without scrolling.
    # And the measure can fail: a table wider than its box (a cell that cannot wrap) is seen as wider.
    main_table, *_ = screenshot.table_widths(ROOT / "docs" / "demo" / "report.html", chromium)
    assert main_table[0] <= main_table[1], main_table
    wide = tmp_path / "wide.html"
    wide.write_text(html_page(f"| {'x' * 400} | 1 |\n|---|---|\n| {'y' * 400} | 2 |\n", tmp_path))
    [(drawn, visible)] = screenshot.table_widths(wide, chromium)
    assert drawn > visible
    # and the check can fail: an empty page is blank to it
    empty = tmp_path / "empty.html"
    empty.write_text("<!doctype html><html><body></body></html>")
    screenshot.screenshot(empty, tmp_path / "empty.png", chromium)
    assert screenshot.distinct_colours(tmp_path / "empty.png") < 16
