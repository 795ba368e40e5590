"""The flag reference (``docs/flags.md``), generated from the settings dataclasses that make every
command's flags, so it cannot drift from ``--help`` (``tests/test_structure.py`` checks both).

    python -m grpo_math.flag_reference > docs/flags.md
"""

import dataclasses
import sys

from grpo_math.cli import COMMANDS, settings_type
from shared.settings import flag_of


def default_text(value) -> str:
    """A default as a flag takes it.

    >>> default_text(None), default_text(True), default_text(("q_proj", "v_proj")), default_text(5e-06)
    ('none', 'true', 'q_proj v_proj', '5e-06')
    """
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return " ".join(map(str, value)) if value else "(none)"
    return str(value)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    lines = [
        "# Flag reference",
        "",
        "Every command's flags, their defaults and what they set, generated from the settings",
        "dataclasses the flags are made from (`python -m grpo_math.flag_reference > docs/flags.md`;",
        "a test keeps it equal to `grpo-math COMMAND --help`). Every command also takes `--config FILE`",
        "(YAML or JSON, the names below with `_`; flags given too override it), and a run's own",
        "`settings.json` passed back with `--config` runs the same again. `none` is typed as is; a",
        "flag with several values takes them space-separated; `--x` / `--no-x` set a yes/no flag.",
    ]
    for command, (_, summary) in COMMANDS.items():
        settings = settings_type(command)
        if settings is None:
            continue
        lines += ["", f"## grpo-math {command}", "", f"{summary[0].upper()}{summary[1:]}.", ""]
        lines += ["| flag | default | what it sets |", "|---|---|---|"]
        for field in dataclasses.fields(settings):
            name = field.name if field.metadata.get("positional") else flag_of(field.name)
            help_text = cell(field.metadata.get("help", ""))
            lines.append(f"| `{name}` | `{cell(default_text(field.default))}` | {help_text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
    sys.exit(0)
