"""Command-line flags generated from a frozen settings dataclass, one flag per field.

A field ``max_lora_rank: int = field(default=16, metadata={"help": "..."})`` becomes
``--max-lora-rank`` with ``type=int``, that default and that help; ``--help`` shows every default.
Booleans become ``--name/--no-name``; ``X | None`` fields accept ``none``; ``tuple[X, ...]``
takes one or more values. Field names follow the
flags one-to-one, so ``settings.json`` in a run directory reads like the command line.

>>> from dataclasses import dataclass, field
>>> @dataclass(frozen=True)
... class Demo:
...     max_steps: int = field(default=10, metadata={"help": "optimizer steps"})
...     seed: int | None = field(default=None, metadata={"help": "random seed"})
...     eager: bool = field(default=False, metadata={"help": "no graphs"})
...     modules: tuple[str, ...] = field(default=("q_proj",), metadata={"help": "targets"})
>>> parser = argparse.ArgumentParser()
>>> add_flags(parser, Demo)
>>> settings_from_args(Demo, parser.parse_args(["--max-steps", "3", "--eager", "--seed", "none", "--modules", "a", "b"]))
Demo(max_steps=3, seed=None, eager=True, modules=('a', 'b'))
"""

import argparse
import dataclasses
import types
import typing


def _none_or(parse):
    def parse_optional(text: str):
        return None if text.lower() in ("none", "null") else parse(text)

    parse_optional.__name__ = parse.__name__  # argparse names the type in its error messages
    return parse_optional


def add_flags(parser: argparse.ArgumentParser, settings_type: type) -> None:
    hints = typing.get_type_hints(settings_type)
    for field in dataclasses.fields(settings_type):
        flag = "--" + field.name.replace("_", "-")
        annotation = hints[field.name]
        help_text = field.metadata.get("help", "") + " (default: %(default)s)"
        arguments = typing.get_args(annotation)
        optional = (typing.get_origin(annotation) in (typing.Union, types.UnionType)) and type(None) in arguments
        base = next(a for a in arguments if a is not type(None)) if optional else annotation
        if base is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=help_text)
            continue
        if typing.get_origin(base) is tuple:  # tuple[X, ...]: one or more values
            item = typing.get_args(base)[0]
            parser.add_argument(flag, type=item, nargs="+", default=field.default, help=help_text)
            continue
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


def settings_from_args(settings_type: type, args: argparse.Namespace):
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(settings_type)}
    return settings_type(**{name: tuple(value) if isinstance(value, list) else value for name, value in values.items()})
