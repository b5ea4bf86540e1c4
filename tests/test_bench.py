"""bench/: scripts run as files (`python bench/<path>.py`) with cringe installed, and every bench path the project
cites exists."""

import glob
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
SCRIPTS = sorted(p for p in BENCH.rglob("*") if p.suffix in (".py", ".sh"))
# Where bench paths are cited. bench/results/ is left out: its files record the paths scripts had when they ran,
# and its README names deleted scripts on purpose.
CITING = sorted(
    {
        ROOT / "README.md",
        ROOT / "Makefile",
        BENCH / "README.md",
        *ROOT.glob("docs/**/*.md"),
        *ROOT.glob("cringe/**/*.py"),
        *ROOT.glob("examples/**/*.yaml"),
        *ROOT.glob("recipes/**/*.yaml"),
        *SCRIPTS,
    }
)
BENCH_PATH = re.compile(r"bench/[\w./*{},<>-]*")
# An output not written yet: bench/results/gpu_recipe-DATE-gpu.md, seeds-<date>.md
PLACEHOLDER = re.compile(r"<\w+>|\bDATE\b")


def test_no_bench_script_edits_sys_path():
    assert SCRIPTS, "no scripts under bench/"
    offenders = [str(p.relative_to(ROOT)) for p in SCRIPTS if "sys.path" in p.read_text()]
    assert offenders == [], "import cringe from the editable install (pip install -e .), not by editing sys.path"


def brace_expand(path: str) -> list[str]:
    """{a,b} is a shell brace expansion; {name} without a comma, a format field: it matches anything."""
    match = re.search(r"\{([^{}]*)\}", path)
    if not match:
        return [path]
    head, tail = path[: match.start()], path[match.end() :]
    choices = match.group(1).split(",") if "," in match.group(1) else ["*"]
    return [expanded for choice in choices for expanded in brace_expand(head + choice + tail)]


def cited_bench_paths(text: str) -> list[str]:
    paths = []
    for match in BENCH_PATH.finditer(text):
        path = match.group(0).rstrip(".,")
        # an f-string's or a shell parameter's brace that follows the path is not part of it
        while path.endswith("{") or path.count("}") > path.count("{"):
            path = path[:-1].rstrip(".,")
        paths.append(path)
    return paths


def test_cited_bench_paths_parse_as_expected():
    text = "`bench/results/*-2026-11-28-{xeon,epyc}.md`, f\"`python bench/gpu/x.py{' --smoke' if s else ''}`\" "
    text += "${R:-bench/results}. bench/results/{name}.md"
    assert cited_bench_paths(text) == [
        "bench/results/*-2026-11-28-{xeon,epyc}.md",
        "bench/gpu/x.py",
        "bench/results",
        "bench/results/{name}.md",
    ]
    assert brace_expand("a-{x,y}.{md,json}") == ["a-x.md", "a-x.json", "a-y.md", "a-y.json"]
    assert brace_expand("bench/gpu/gpu.sh{x}") == ["bench/gpu/gpu.sh*"]


def test_every_cited_bench_path_exists():
    missing = []
    for source in CITING:
        for cited in cited_bench_paths(source.read_text()):
            for path in brace_expand(cited):
                if PLACEHOLDER.search(path):
                    path = path.rsplit("/", 1)[0]  # a file a run will write: its folder must exist
                if not glob.glob(str(ROOT / path)):
                    missing.append(f"{source.relative_to(ROOT)}: {cited}")
    assert missing == []
