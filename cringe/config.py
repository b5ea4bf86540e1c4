"""Command-line and YAML arguments for every `cringe` verb, driven by dataclasses (transformers' HfArgumentParser).

What this adds to HfArgumentParser, the parser TRL's `trl dpo --config` uses:
  * `--config FILE` and `--config=FILE`: a YAML mapping whose keys are the same names as the flags; flags given on
    the command line override it. Unknown keys are refused when the file is read, before any work, with the
    closest known name suggested. YAML values are typed like command-line values: `learning_rate: 1e-5` (a
    string to YAML 1.1) becomes the float 1e-5.
  * Nested sections (`train:`, `sampling:`, ... in an iterate config), with dotted flags reaching into them
    (`--train.learning_rate 1e-5`); each section's keys are checked and typed against its own dataclass.
  * Parse errors raise `UsageError` (one line, exit status 2 from the CLI) instead of printing usage and exiting,
    so a library caller can catch them.

Flags accept both spellings, `--output_dir` and `--output-dir`, for every field.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from cringe.errors import UserError


class UsageError(UserError):
    """Bad command-line flags or config keys."""


# ----- fields several verbs share: declared once, each verb's dataclass takes a fresh copy --------------------------
DTYPES = ("float32", "bfloat16", "float16", "auto")


def trust_remote_code_field():
    return dataclasses.field(default=False, metadata={"help": "run model code from the hub (off by default)"})


def device_field(help: str = "where models run: auto = cuda when available, else cpu"):
    return dataclasses.field(default="auto", metadata={"help": help})


def dtype_field(help: str = "weights dtype (default: bfloat16 on a GPU, float32 on a CPU; auto: as saved)"):
    return dataclasses.field(default=None, metadata={"help": help, "choices": DTYPES})


def _suggest(key: str, known, sections: dict | None = None, as_flag: bool = False) -> str:
    """' (did you mean ...?)' for an unknown top-level key or flag, or ''. sections: name -> parser (None for a
    free-form one). A key of a section is pointed into it (`--alpha` -> `--train.alpha`) rather than given a
    top-level alias, which would collide where a key exists at both levels (`seed`, `max_prompt_length`)."""
    inner = {name: _actions_by_key(p) for name, p in (sections or {}).items() if p is not None}
    candidates = list(known) + sorted({k for keys in inner.values() for k in keys} - set(known))
    close = [key] if any(key in keys for keys in inner.values()) else difflib.get_close_matches(key, candidates, n=1)
    if not close:
        return ""
    if close[0] in known:
        return f" (did you mean '--{close[0]}'?)" if as_flag else f" (did you mean {close[0]!r}?)"
    homes = [name for name, keys in inner.items() if close[0] in keys]
    if as_flag:
        spelled = [f"'--{name}.{close[0]}'" for name in homes]
    else:
        spelled = [f"'{name}: {{{close[0]}: ...}}'" for name in homes]
    return f" (did you mean {' or '.join(spelled)}?)"


def make_parser(dataclass_types, prog: str, description: str | None = None, epilog: str | None = None):
    """An HfArgumentParser over `dataclass_types` with `--config`, whose errors raise UsageError."""

    parser = HfArgumentParser(
        dataclass_types,
        prog=prog,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="YAML file of arguments (the same names as the flags); flags override it",
    )

    def error(message: str):
        raise UsageError(f"{message} (see {prog} --help)")

    parser.error = error
    return parser


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a user's file, with errors that name the file."""

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise UserError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of argument names to values, got {type(values).__name__}")
    return values


def pop_flag(argv: list[str], flag: str, what: str = "a value") -> tuple[str | None, list[str]]:
    """(value given with `FLAG VALUE` or `FLAG=VALUE`, the other arguments); dotted `FLAG.key` forms stay."""
    rest, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == flag:
            if i + 1 >= len(argv) or argv[i + 1].startswith("--"):
                raise UsageError(f"{flag} needs {what}")
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith(flag + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def pop_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """(path given with --config FILE or --config=FILE, the other arguments)."""
    return pop_flag(argv, "--config", "a file path")


def _actions_by_key(parser) -> dict[str, argparse.Action]:
    """Every spelling of every option (without the dashes) -> its action, `--help`/`--config` excluded."""
    out = {}
    for option, action in parser._option_string_actions.items():
        if option.startswith("--") and action.dest not in ("help", "config"):
            out[option[2:]] = action
    return out


def typed_value(action: argparse.Action, value: Any, where: str) -> Any:
    """`value` (from YAML or a command line) converted the way argparse converts that flag's strings."""
    convert = action.type
    if action.nargs in ("+", "*") and isinstance(value, str):
        value = _yaml_value(value) if value.startswith("[") else [value]
    try:
        if isinstance(value, list) and action.nargs in ("+", "*"):
            value = [convert(v) if isinstance(v, str) and convert not in (None, str) else v for v in value]
        elif isinstance(value, str) and convert not in (None, str):
            value = convert(value)
        elif isinstance(value, int) and not isinstance(value, bool) and convert is float:
            value = float(value)
    except (TypeError, ValueError, argparse.ArgumentTypeError) as err:
        raise UsageError(f"{where}: invalid value {value!r} ({err})") from None
    if action.choices is not None:
        bad = [v for v in (value if isinstance(value, list) else [value]) if v not in action.choices]
        if bad:
            raise UsageError(f"{where}: invalid choice {bad[0]!r}; choose from {', '.join(map(str, action.choices))}")
    return value


def typed_section(parser, values: dict, where: str, sections: dict | None = None) -> dict:
    """A config section checked and typed against `parser`'s dataclass fields: unknown keys are refused (with the
    closest key suggested, among `sections`' too: see _suggest)."""
    actions = _actions_by_key(parser)
    out = {}
    for key, value in values.items():
        action = actions.get(str(key))
        if action is None:
            raise UsageError(f"{where}: unknown key {key!r}{_suggest(str(key), actions, sections)}")
        out[action.dest] = typed_value(action, value, f"{where}.{key}")
    return out


def parse(
    parser,
    argv: list[str],
    dataclass_count: int,
    file_values: dict | None = None,
    source: str = "config",
    sections: dict | None = None,
) -> tuple:
    """Parse `argv` (with its --config file, or `file_values` already read from `source`) into
    `dataclass_count` dataclasses; file values are typed and checked like flags; flags override the file.
    sections: the nested sections beside these flags (parse_with_sections), searched when suggesting a name."""
    config_path, argv = pop_config_flag(argv)
    values = dict(file_values or {})
    if config_path:
        values.update(read_yaml(config_path))
        source = config_path
    if values:
        typed = typed_section(parser, values, source, sections)
        parser.set_defaults(**typed)
        for action in parser._actions:  # satisfied by the file: no longer required on the command line
            if action.dest in typed:
                action.required = False
    try:
        *parsed, remaining = parser.parse_args_into_dataclasses(argv, return_remaining_strings=True)
    except ValueError as err:  # a dataclass's own check of a value the user gave (__post_init__)
        if isinstance(err, UserError):
            raise
        raise UsageError(str(err).strip().splitlines()[0]) from err
    if remaining:
        flag = next((a for a in remaining if a.startswith("-")), remaining[0])
        hint = (
            _suggest(flag[2:].split("=", 1)[0], _actions_by_key(parser), sections, True)
            if flag.startswith("--")
            else ""
        )
        raise UsageError(f"unknown option {flag}{hint}" if flag.startswith("-") else f"unexpected argument {flag!r}")
    return tuple(parsed[:dataclass_count])


# ----- nested sections (iterate configs) --------------------------------------------------------------------


def _yaml_value(text: str) -> Any:
    """A command-line value for a free-form section: YAML, with floats like 1e-5 read as floats (YAML 1.1 wants
    a dot)."""

    try:
        return float(text) if any(c in text for c in "eE.") and not text.isalpha() else yaml.safe_load(text)
    except ValueError:
        pass
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:  # not YAML (a judge template with "A: {a}" in it): the string as given
        return text


def split_dotted(argv: list[str], sections: set[str]) -> tuple[list[str], dict[str, dict[str, str]]]:
    """Separate `--section.key value` / `--section.key=value` flags from the rest."""
    rest, dotted, i = [], {}, 0
    while i < len(argv):
        arg = argv[i]
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if "." in name:
            section, key = name.split(".", 1)
            section = section.replace("-", "_")
            if section not in sections:
                raise UsageError(
                    f"--{name}: {section!r} is not a config section; sections: {', '.join(sorted(sections))}"
                )
            if "=" in arg:
                value, i = arg.split("=", 1)[1], i + 1
            elif i + 1 < len(argv):
                value, i = argv[i + 1], i + 2
            else:
                raise UsageError(f"--{name} needs a value")
            target = dotted.setdefault(section, {})
            parts = key.split(".")
            for part in parts[:-1]:
                target = target.setdefault(part, {})
            target[parts[-1]] = value
            continue
        rest.append(arg)
        i += 1
    return rest, dotted


def merge_section(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge_section(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def free_form(values: dict) -> dict:
    """A section without a dataclass (e.g. a reward spec): command-line strings read as YAML values."""
    return {
        k: free_form(v) if isinstance(v, dict) else _yaml_value(v) if isinstance(v, str) else v
        for k, v in values.items()
    }


def flat_dataclass(cls, exclude: set[str]):
    """A dataclass with `cls`'s fields minus `exclude`, types resolved: what HfArgumentParser parses for the
    top level of a config whose excluded fields are nested sections."""
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        if f.name in exclude or not f.init:
            continue
        spec = dataclasses.field(default=f.default, default_factory=f.default_factory, metadata=f.metadata)
        fields.append((f.name, hints[f.name], spec))
    return dataclasses.make_dataclass(f"{cls.__name__}Flags", fields)


def parse_with_sections(
    parser, argv: list[str], dataclass_count: int, sections: dict, base_values: dict | None = None
) -> tuple[tuple, dict]:
    """Parse `--config FILE` plus flags where some keys are nested sections. sections: name -> a parser to type
    and check that section's keys (make_parser over its dataclass), or None for a free-form mapping. base_values:
    values under the file's (a caller's defaults). Returns (the flat dataclasses, {section name: typed mapping}
    for the sections that were given)."""
    config_path, argv = pop_config_flag(argv)
    values = merge_section(base_values or {}, read_yaml(config_path) if config_path else {})
    source = config_path or "config"
    given = {name: values.pop(name) for name in sections if name in values}
    argv, dotted = split_dotted(argv, set(sections))
    flat = parse(parser, argv, dataclass_count, file_values=values, source=source, sections=sections)
    merged = {}
    for name, section_parser in sections.items():
        value = given.get(name)
        if value is not None and not isinstance(value, dict):
            raise UsageError(f"{source}: {name} must be a mapping, got {type(value).__name__}")
        if value is None and name not in dotted:
            continue
        if section_parser:
            value = merge_section(value or {}, dotted.get(name, {}))
            merged[name] = typed_section(section_parser, value, f"{source}: {name}")
        else:  # only the command line's strings are read as YAML: the file's values are typed already
            merged[name] = merge_section(value or {}, free_form(dotted.get(name, {})))
    return flat, merged
