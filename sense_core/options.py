"""Command-line options generated from (nested) configuration dataclasses.

A configuration dataclass declares each option once: its name, type and default in the class,
its help text (and optionally its flag, choices, or ``cli: False``) in the field's metadata::

    @dataclass
    class RunConfig:
        epochs: int = field(default=30, metadata={"help": "at most this many epochs"})
        learning_rate: float = field(default=1e-3, metadata={"help": "...", "flag": "--lr"})

:func:`add_options` adds one option per field to a parser (nested dataclasses become argument
groups; the help shows the default of the instance given, so two commands with different
defaults each show their own), and :func:`config_from_args` applies what the user typed on top
of a base configuration (a profile, a saved run, the class defaults). Types come from the
annotations: ``int``, ``float``, ``str``, ``bool`` (``--x`` / ``--no-x``), ``X | None``
(``none`` on the command line gives None), tuples and lists written comma-separated
(``--fractions 0.7,0.15,0.15``), and lists of lists as a repeatable comma-separated option.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["add_options", "config_from_args", "option_dest"]


class _NoneGiven:
    """What ``none`` typed for an ``X | None`` option parses to (argparse's None means "not
    given")."""

    def __repr__(self) -> str:
        return "none"


NONE_GIVEN = _NoneGiven()


def option_dest(path: Sequence[str], prefix: str = "") -> str:
    """The argparse destination of the field at ``path`` (names from the top dataclass down)."""
    return (prefix.replace("-", "_") + "__".join(path)).strip("_") or "value"


def _flag(field: dataclasses.Field, prefix: str) -> str:
    flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
    return "--" + prefix + flag.removeprefix("--")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_dataclass_instance(value: Any) -> bool:
    return dataclasses.is_dataclass(value) and not isinstance(value, type)


def _strip_optional(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without ``None``, whether None was allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        return (args[0] if len(args) == 1 else str), optional
    return annotation, False


def _scalar_parser(kind: Any) -> Callable[[str], Any]:
    if kind is bool:
        return _boolean
    return kind if kind in (int, float, str) else str


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


def _element_type(annotation: Any) -> Any:
    """The element type of ``tuple[X, ...]``, ``tuple[X, X]``, ``list[X]``."""
    args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
    return args[0] if args else str


def _comma_list(element: Any, container: type, what: str) -> Callable[[str], Any]:
    parse = _scalar_parser(element)

    def convert(text: str):
        try:
            return container(parse(part.strip()) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {what}, got {text!r}"
            ) from None

    return convert


_NAMES = {int: "integers", float: "numbers", str: "names", bool: "booleans"}


def _with_none(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str):
        return NONE_GIVEN if text.strip().lower() == "none" else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def _format_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        if value and isinstance(value[0], list | tuple):
            return " ".join(",".join(map(str, inner)) for inner in value) or "none"
        return ",".join(map(str, value)) or "none"
    return str(value)


def _argument(field: dataclasses.Field, annotation: Any, default: Any) -> dict[str, Any]:
    """argparse keyword arguments (type, action, metavar, choices) of one field."""
    kind, optional = _strip_optional(annotation)
    origin = typing.get_origin(kind)
    choices = field.metadata.get("choices")
    if kind is bool:
        return {"action": argparse.BooleanOptionalAction}
    if origin in (list, tuple) and typing.get_origin(_element_type(kind)) in (list, tuple):
        inner = _element_type(_element_type(kind))
        convert = _comma_list(inner, list, _NAMES.get(inner, "values"))
        return {"type": convert, "action": "append", "metavar": "A,B"}
    if origin in (list, tuple):
        element = _element_type(kind)
        convert = _comma_list(element, origin, _NAMES.get(element, "values"))
        arguments: dict[str, Any] = {"type": _with_none(convert) if optional else convert}
        arguments["metavar"] = "A,B,..."
        return arguments
    convert = _scalar_parser(kind)
    arguments = {"type": _with_none(convert) if optional else convert}
    if choices:
        arguments["choices"] = tuple(choices) + ((NONE_GIVEN,) if optional else ())
        arguments["metavar"] = "{" + ",".join(map(str, choices)) + "}"
    return arguments


def _with_metavar(field: dataclasses.Field, arguments: dict[str, Any]) -> dict[str, Any]:
    """The metadata's metavar, else the one of the type, else the field's name."""
    if arguments.get("action") is not argparse.BooleanOptionalAction:
        metavar = field.metadata.get("metavar") or arguments.get("metavar")
        arguments["metavar"] = metavar or field.name.upper()
    return arguments


def _help(field: dataclasses.Field, default: Any, arguments: Mapping[str, Any]) -> str:
    text = field.metadata.get("help", "")
    shown = _format_default(default)
    if arguments.get("action") == "append":
        return f"{text} (repeatable; default {shown})".strip()
    return f"{text} (default {shown})".strip()


def add_options(
    parser: argparse.ArgumentParser,
    config: Any,
    *,
    prefix: str = "",
    group_title: str | None = None,
    only_given: bool = True,
    aliases: Mapping[str, Sequence[str]] | None = None,
    skip: Sequence[str] = (),
) -> None:
    """Add one option per field of the dataclass instance ``config`` to ``parser``.

    Nested dataclass fields become argument groups (titled ``group_title`` + the field's name);
    flags are ``--<prefix><field-name>`` or ``--<prefix><metadata flag>``; help is the field's
    metadata help plus "(default X)" with X taken from ``config``. Fields with metadata
    ``cli: False`` and names or dotted paths in ``skip`` are left out. ``aliases`` maps a field
    name or dotted path to extra flags (spellings kept for compatibility). With ``only_given``
    every option defaults to None, so :func:`config_from_args` applies only what was typed.
    """
    _add(parser, config, (), prefix, group_title, only_given, dict(aliases or {}), set(skip))


def _add(parser, config, path, prefix, title, only_given, aliases, skip) -> None:
    hints = _hints(type(config))
    target = parser.add_argument_group(title) if title else parser
    for field in dataclasses.fields(config):
        here = (*path, field.name)
        dotted = ".".join(here)
        if field.metadata.get("cli", True) is False or dotted in skip or field.name in skip:
            continue
        value = getattr(config, field.name)
        if _is_dataclass_instance(value):
            sub_title = " ".join(t for t in (title, field.name) if t)
            _add(parser, value, here, prefix, sub_title, only_given, aliases, skip)
            continue
        arguments = _with_metavar(field, _argument(field, hints[field.name], value))
        flags = [_flag(field, prefix), *aliases.get(dotted, aliases.get(field.name, ()))]
        default = None if only_given else value
        if arguments.get("action") == "append" and not only_given:
            default = [list(pair) for pair in value]
        target.add_argument(
            *flags,
            dest=option_dest(here, prefix),
            default=default,
            help=_help(field, value, arguments).replace("%", "%%"),
            **arguments,
        )


def config_from_args(base: Any, args: argparse.Namespace, prefix: str = "") -> Any:
    """``base`` (a dataclass instance) with the options of :func:`add_options` that were given
    on the command line (not None) applied; nested dataclasses are rebuilt the same way."""
    return _apply(base, args, (), prefix)


def _apply(config: Any, args: argparse.Namespace, path: tuple[str, ...], prefix: str) -> Any:
    changes: dict[str, Any] = {}
    for field in dataclasses.fields(config):
        here = (*path, field.name)
        value = getattr(config, field.name)
        if _is_dataclass_instance(value):
            updated = _apply(value, args, here, prefix)
            if updated is not value:
                changes[field.name] = updated
            continue
        given = getattr(args, option_dest(here, prefix), None)
        if given is not None:
            changes[field.name] = None if given is NONE_GIVEN else given
    return dataclasses.replace(config, **changes) if changes else config
