"""Settings, read the same way by every command: one frozen dataclass per command, argv → settings.

Each field is declared with ``setting(default, help, check=...)``: the flag is generated from it
(``max_lora_rank`` → ``--max-lora-rank``, with its type, default and help; ``--help`` shows every
default), and its check sits beside it. Checks that involve several fields go in the dataclass's
``__post_init__`` with ``require``. The checks run when the settings are built, so settings made
in code (the demo, the tests) are checked exactly like settings from a command line, and a bad
value is an error that names the flag: ``grpo-math train: error: --learning-rate must be > 0``.

Every command also takes ``--config FILE`` (YAML or JSON, field names as keys, as TRL's commands
take ``--config``); flags given as well override the file. A run's own ``settings.json`` passed back
with ``--config`` reproduces the run.

Flag types: booleans become ``--name/--no-name``; ``X | None`` accepts ``none``; ``tuple[X, ...]``
takes one or more values and may be given more than once (``--server-url A --server-url B``);
``Literal[...]`` gives choices.

>>> @dataclass(frozen=True)
... class Demo:
...     max_steps: int = setting(10, "optimizer steps", check=at_least(1))
...     seed: int | None = setting(None, "random seed")
...     eager: bool = setting(False, "no graphs")
...     modules: tuple[str, ...] = setting(("q_proj",), "targets")
...
...     def __post_init__(self):
...         check_fields(self)
>>> parse_settings(Demo, ["--max-steps", "3", "--eager", "--seed", "none", "--modules", "a", "b"], prog="demo")
Demo(max_steps=3, seed=None, eager=True, modules=('a', 'b'))
>>> Demo(max_steps=0)
Traceback (most recent call last):
...
shared.settings.SettingsError: --max-steps must be at least 1
"""

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

API_KEY_ENVIRONMENT = "GRPO_MATH_API_KEY"


class SettingsError(ValueError):
    """A setting has a bad value; the message starts with the flag that sets it."""

    def __init__(self, name: str, message: str) -> None:
        self.flag = flag_of(name)
        super().__init__(f"{self.flag} {message}")


@dataclass(frozen=True)
class Check:
    """A condition on one value and what to say when it fails (after the flag's name)."""

    holds: Callable[[Any], bool]
    message: str


def at_least(minimum: float) -> Check:
    return Check(lambda value: value >= minimum, f"must be at least {minimum}")


def positive() -> Check:
    return Check(lambda value: value > 0, "must be > 0")


def within(low: float, high: float) -> Check:
    return Check(lambda value: low <= value <= high, f"must be between {low} and {high}")


def setting(default, help: str, *, check: Check | None = None, metavar: str | None = None, positional: bool = False):
    """A settings field: its default, its help text, and the check its value must pass
    (skipped for ``None``)."""
    metadata = {"help": help, "check": check, "metavar": metavar, "positional": positional}
    if isinstance(default, list | dict | set):
        raise TypeError("mutable defaults are not allowed; use a tuple")
    return dataclasses.field(default=default, metadata=metadata)


def flag_of(name: str) -> str:
    """``max_lora_rank`` → ``--max-lora-rank``."""
    return "--" + name.replace("_", "-")


def require(condition: bool, name: str, message: str) -> None:
    """For checks across fields, in ``__post_init__``: raise unless ``condition`` holds."""
    if not condition:
        raise SettingsError(name, message)


def check_fields(settings) -> None:
    """Run every field's own check; raise ``SettingsError`` naming the first flag that fails."""
    for field in dataclasses.fields(settings):
        check: Check | None = field.metadata.get("check")
        value = getattr(settings, field.name)
        if typing.get_origin(_field_type(type(settings), field)[0]) is tuple and not isinstance(value, tuple | None):
            raise SettingsError(field.name, f"must be a tuple of values, got {value!r}")
        if check is not None and value is not None and not check.holds(value):
            raise SettingsError(field.name, check.message)


def read_api_key(api_key_file: str | None) -> str | None:
    """The API key, from ``api_key_file`` if given, else from ``$GRPO_MATH_API_KEY``; never from a
    flag value, which ``ps`` would show."""
    if api_key_file is not None:
        try:
            key = Path(api_key_file).read_text().strip()
        except OSError as error:
            raise SettingsError("api_key_file", f"{api_key_file}: {error.strerror}") from None
        if not key:
            raise SettingsError("api_key_file", f"{api_key_file} is empty")
        return key
    return os.environ.get(API_KEY_ENVIRONMENT) or None


# ---- argv → settings ------------------------------------------------------------------------


def _none_or(parse):
    def parse_optional(text: str):
        return None if text.lower() in ("none", "null") else parse(text)

    parse_optional.__name__ = parse.__name__  # argparse names the type in its error messages
    return parse_optional


def _field_type(settings_type: type, field: dataclasses.Field) -> tuple[Any, bool]:
    """(the field's type without ``| None``, whether ``None`` is allowed)."""
    annotation = typing.get_type_hints(settings_type)[field.name]
    arguments = typing.get_args(annotation)
    optional = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in arguments
    return (next(a for a in arguments if a is not type(None)) if optional else annotation), optional


class _Repeatable(argparse.Action):
    """``tuple[X, ...]`` flags: every occurrence in one parse adds its values; the first occurrence
    of a parse replaces what an earlier parse set (so flags replace a config file's list)."""

    def __call__(self, parser, namespace, values, option_string=None):
        seen = namespace.__dict__.setdefault("_repeated_in_this_parse", set())
        earlier = list(getattr(namespace, self.dest)) if self.dest in seen else []
        seen.add(self.dest)
        setattr(namespace, self.dest, earlier + list(values))


def add_flags(parser: argparse.ArgumentParser, settings_type: type) -> None:
    """One flag per field of ``settings_type``."""
    for field in dataclasses.fields(settings_type):
        base, optional = _field_type(settings_type, field)
        help_text = field.metadata.get("help", "") + " (default: %(default)s)"
        if field.metadata.get("positional"):
            parser.add_argument(
                field.name, type=base, nargs="?", default=field.default, help=field.metadata.get("help", "")
            )
            continue
        flag = flag_of(field.name)
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
        elif typing.get_origin(base) is tuple:  # tuple[X, ...]: one or more values
            item = typing.get_args(base)[0]
            choices = typing.get_args(item) if typing.get_origin(item) is typing.Literal else None
            parser.add_argument(
                flag,
                type=type(choices[0]) if choices else item,
                choices=choices,
                nargs="+",
                action=_Repeatable,
                default=field.default,
                help=help_text,
            )
        else:
            choices = typing.get_args(base) if typing.get_origin(base) is typing.Literal else None
            parse = type(choices[0]) if choices else base
            parser.add_argument(
                flag,
                type=_none_or(parse) if optional else parse,
                choices=choices,
                default=field.default,
                help=help_text,
                metavar=field.metadata.get("metavar"),
            )


def config_arguments(settings_type: type, config: dict) -> list[str]:
    """A config file's values as flags, so they are parsed and checked exactly like flags.

    >>> @dataclass(frozen=True)
    ... class Demo:
    ...     learning_rate: float = setting(1e-3, "rate")
    ...     resume: bool = setting(False, "continue")
    ...     modules: tuple[str, ...] = setting(("q_proj",), "targets")
    ...     output_dir: str | None = setting(None, "folder")
    >>> config_arguments(Demo, {"learning_rate": "2e-4", "resume": True, "modules": ["a", "b"], "output_dir": None})
    ['--learning-rate=2e-4', '--resume', '--modules', 'a', 'b', '--output-dir=none']
    """
    fields = {field.name: field for field in dataclasses.fields(settings_type)}
    arguments = []
    for name, value in config.items():
        key = name.replace("-", "_")
        if key not in fields:
            raise SettingsError(key, f"is not a setting of this command (known: {', '.join(sorted(fields))})")
        base, _ = _field_type(settings_type, fields[key])
        if base is bool:
            if not isinstance(value, bool):
                raise SettingsError(key, f"must be true or false in the config file, got {value!r}")
            arguments.append(flag_of(key) if value else "--no-" + key.replace("_", "-"))
        elif typing.get_origin(base) is tuple:
            values = list(value) if isinstance(value, list | tuple) else [] if value is None else [value]
            if values:  # an empty list (or null) keeps the default
                arguments += [flag_of(key), *map(str, values)]
        elif fields[key].metadata.get("positional"):
            arguments.append(str(value))
        else:
            arguments.append(f"{flag_of(key)}={'none' if value is None else value}")
    return arguments


def write_config(settings, path: str | Path) -> Path:
    """Settings as the JSON file ``--config`` reads back: how a run records its settings
    (``settings.json``) and how settings reach a child process."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(settings), indent=2, default=str) + "\n")
    return path


def read_config(path: str) -> dict:
    """A YAML or JSON file holding one mapping of settings."""
    text = Path(path).read_text()
    if path.endswith(".json"):
        config = json.loads(text)
    else:
        import yaml

        config = yaml.safe_load(text) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a mapping of setting names to values")
    return config


def parse_settings(settings_type: type, argv: list[str] | None, *, prog: str, description: str = ""):
    """``argv`` (with ``--config FILE`` read first, flags overriding it) → frozen settings. Any bad
    value ends the program with exit code 2 and a message naming the flag."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML or JSON file of settings (names as in settings.json); flags given too override it",
    )
    add_flags(parser, settings_type)
    argv = list(sys.argv[1:] if argv is None else argv)
    config_path = parser.parse_known_args(argv)[0].config
    arguments = argparse.Namespace()
    if config_path is not None:  # the file's values first, as flags; then the flags given replace them
        try:
            arguments = parser.parse_args(config_arguments(settings_type, read_config(config_path)))
        except (OSError, ValueError) as error:  # SettingsError is a ValueError
            parser.error(f"--config {config_path}: {error}")
        arguments._repeated_in_this_parse = set()
    arguments = parser.parse_args(argv, namespace=arguments)
    values = {field.name: getattr(arguments, field.name) for field in dataclasses.fields(settings_type)}
    try:
        return settings_type(**{name: tuple(v) if isinstance(v, list) else v for name, v in values.items()})
    except SettingsError as error:
        parser.error(str(error))
