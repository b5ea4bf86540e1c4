"""MkDocs hook: the command-line reference, one page per verb, generated at build time from the parsers the CLI
parses with (`cringe.cli.verb_parsers()`), so a flag, its YAML key, type, default and help cannot drift from the
code. Pages: reference/cli/index.md and reference/cli/<verb>.md (never written to disk)."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import html
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "reference/cli"


def _type(action: argparse.Action) -> str:
    kind = getattr(action.type, "__name__", None) or ("bool" if action.nargs == 0 else "str")
    if kind == "string_to_bool" or isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        kind = "bool"
    if action.choices:
        kind = "one of " + ", ".join(f"`{getattr(c, 'value', c)}`" for c in action.choices)
    elif action.nargs in ("+", "*"):
        kind = f"list of {kind}"
    return kind


def _default(action: argparse.Action) -> str:
    if action.required:
        return "**required**"
    value = action.default
    if value is None or value is dataclasses.MISSING or value is argparse.SUPPRESS:
        return "—"
    if isinstance(value, enum.Enum):
        value = value.value
    text = repr(value) if isinstance(value, str) else str(value)
    return f"`{text}`" if len(text) < 60 else f"`{text[:57]}...`"


def _cell(text: str | None) -> str:
    """Help text for a markdown table cell: one line, no raw HTML, no cell-splitting pipes."""
    text = html.escape(" ".join((text or "").replace("%%", "%").split()), quote=False).replace("|", "\\|")
    parts = text.split("`")  # markup characters escaped outside code spans only (inside, a backslash would show)
    return "`".join(part if i % 2 else part.replace("*", "\\*").replace("_", "\\_") for i, part in enumerate(parts))


def rows(parser: argparse.ArgumentParser, section: str = "") -> list[str]:
    """One row per destination: every spelling of its flag, the YAML key (dotted inside a section), type,
    default and help. HfArgumentParser's `--no_X` negations are folded into X's row."""
    negations: dict[str, list[str]] = {}
    actions = []
    for action in parser._actions:
        if not action.option_strings or action.dest in ("help", "config"):
            continue
        if all(o.startswith(("--no_", "--no-")) for o in action.option_strings):
            negations.setdefault(action.dest, []).extend(action.option_strings[:1])
            continue
        actions.append(action)
    prefix = f"{section}." if section else ""
    out = ["| flag | YAML key | type | default | help |", "|---|---|---|---|---|"]
    for action in actions:
        flags = [o for o in action.option_strings if o.startswith("--")]
        main = next((o for o in flags if "_" in o or "-" not in o[2:]), flags[0])
        spelled = ", ".join(f"`--{prefix}{o[2:]}`" for o in [main] + negations.get(action.dest, []))
        out.append(
            f"| {spelled} | `{prefix}{action.dest}` | {_type(action)} | {_default(action)} | {_cell(action.help)} |"
        )
    return out


def verb_page(verb: str, parsers: dict) -> str:
    main = parsers[""]
    lines = [
        f"# cringe {verb}",
        "",
        "*Generated from the parser `cringe " + verb + "` parses with; every flag is "
        "also a key of the YAML file given with `--config FILE`, and both spellings (`--output_dir`, "
        "`--output-dir`) are accepted.*",
        "",
    ]
    if main.description:
        lines += [html.escape(" ".join(main.description.split()), quote=False), ""]
    lines += ["```text", main.format_usage().strip(), "```", "", "## Flags and YAML keys", ""] + rows(main)
    for name, parser in parsers.items():
        if name:
            lines += [
                "",
                f"## Section `{name}`",
                "",
                f"A YAML mapping `{name}:` in the config file; each key also as a dotted flag "
                f"`--{name}.KEY VALUE`, typed and checked like the top-level flags.",
                "",
            ] + rows(parser, name)
    if main.epilog:
        lines += ["", "## Notes", "", "```text", main.epilog.strip(), "```"]
    return "\n".join(lines) + "\n"


def index_page(all_parsers: dict) -> str:
    lines = [
        "# Command line",
        "",
        "One parser serves every verb, built from dataclasses with transformers' `HfArgumentParser` (as "
        "`trl dpo` is). `--config FILE` (or `--config=FILE`) reads a YAML mapping with the flags' names as "
        "keys; flags given on the command line override it. Values are typed and checked, YAML ones too; "
        "unknown keys are refused before any work, with the closest name suggested. A user error is one "
        "line and exit status 2 (`--debug` or `CRINGE_DEBUG=1` shows the traceback).",
        "",
        "| verb | what it does |",
        "|---|---|",
    ]
    for verb, parsers in all_parsers.items():
        description = " ".join((parsers[""].description or "").split()).split(". ")[0].rstrip(".")
        lines.append(f"| [`cringe {verb}`]({verb}.md) | {_cell(description)} |")
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from cringe.cli import verb_parsers

    all_parsers = verb_parsers()
    out = {f"{PREFIX}/index.md": index_page(all_parsers)}
    out.update({f"{PREFIX}/{verb}.md": verb_page(verb, parsers) for verb, parsers in all_parsers.items()})
    return out


def on_files(files, config):
    from mkdocs.structure.files import File

    for uri, content in pages().items():
        files.append(File.generated(config, uri, content=content))
    return files
