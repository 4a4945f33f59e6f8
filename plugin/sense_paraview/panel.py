"""The property panel of SENSE's ParaView proxies: explicit labels, a logical order in groups, a
``<Documentation>`` for every property and proxy, and settings shown only where they apply.

ParaView 5.11 builds the panel from the proxy's server-manager XML alone, and the XML its Python
decorators generate falls short: properties come sorted by method name, a missing label is made
by splitting the name ("U MAPMin Dist"), and docstrings are ignored. :func:`layout` is a class
decorator, placed above ``@smproxy``, that rewrites that XML from a declaration of the panel
(:class:`Item`, :class:`Group`): it orders the properties, adds ``<PropertyGroup>``s,
``<Documentation>`` and visibility decorators, and documents the proxy with its class docstring.

One source for the texts: an option that the ``sense`` command line also has takes its help
text from there (``Item(cli="--device")``, read from the ``sense embed`` parser by
:func:`cli_help`), so ``sense embed --help`` and the panel cannot drift apart; a flag named in
such a text becomes the label of the panel's property with that option.

This module imports neither ParaView nor VTK: it works on XML text.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass

# Where the "?" of the Properties panel cannot lead for a Python plugin (ParaView 5.11 opens
# only help compiled into a plugin library, see docs/paraview.md): named in every proxy's help.
HELP_PAGE = "docs/paraview.md"
_FLAG = re.compile(r"--[a-z][a-z0-9-]*")
_DEFAULT = re.compile(r"\s*\((?:repeatable; )?default\b[^()]*\)\s*$")


@dataclass(frozen=True)
class Condition:
    """Show a property only while the drop-down ``property`` has one of ``positions``."""

    property: str
    positions: tuple[int, ...]


def shown_when(property_name: str, choices: Sequence[tuple[str, str]], *values: str) -> Condition:
    """A :class:`Condition` on a drop-down built from ``choices`` (SENSE value, shown text),
    given by SENSE values: ``shown_when("Projection", PROJECTIONS, "umap")``."""
    known = [value for value, _ in choices]
    missing = [value for value in values if value not in known]
    if missing or not values:
        raise ValueError(f"{property_name}: {missing or 'no values'} not among {known}")
    return Condition(property_name, tuple(known.index(value) for value in values))


@dataclass(frozen=True)
class Item:
    """One property on the panel: its XML name, its documentation (``cli``: the ``sense
    embed`` option whose help comes first, then ``text``), and when it is shown."""

    name: str
    text: str = ""
    cli: str = ""
    shown: Condition | None = None

    def documentation(self) -> str:
        parts = [cli_help(self.cli) if self.cli else "", sentence(self.text)]
        return " ".join(part for part in parts if part)


@dataclass(frozen=True)
class Group:
    """Properties under one heading; ``advanced``: only with the panel's advanced toggle."""

    label: str
    items: tuple[Item, ...]
    advanced: bool = False

    def __init__(self, label: str, *items: Item, advanced: bool = False) -> None:
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "items", items)
        object.__setattr__(self, "advanced", advanced)


def sentence(text: str) -> str:
    """``text`` with single spaces, a capital first letter and a final full stop."""
    text = " ".join(text.split())
    if not text:
        return ""
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


@functools.cache
def _cli_actions(command: str) -> dict[str, argparse.Action]:
    """The options of ``sense COMMAND`` (built by sense_core's own parser code), by flag and
    by destination."""
    from sense_core import runtime_cli

    parser = argparse.ArgumentParser(prog="sense")
    runtime_cli.add_parser(parser.add_subparsers())
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    actions: dict[str, argparse.Action] = {}
    for action in subcommands.choices[command]._actions:
        for key in (*action.option_strings, action.dest):
            actions.setdefault(key, action)
    return actions


def cli_help(option: str, command: str = "embed") -> str:
    """The help of ``sense COMMAND``'s ``option`` (a flag, or a positional's name) as a
    sentence, without the "(default X)" that the panel shows itself."""
    action = _cli_actions(command).get(option)
    if action is None or not action.help:
        raise ValueError(f"sense {command} has no option {option!r} with a help text")
    return sentence(_DEFAULT.sub("", action.help.replace("%%", "%")))


def _property_elements(proxy: ET.Element) -> dict[str, ET.Element]:
    return {
        child.get("name", ""): child
        for child in proxy
        if child.tag.endswith("Property") and child.tag != "PropertyGroup"
    }


def python_name(label: str) -> str:
    """The name paraview.simple gives a property with this label (paraview.make_name_valid):
    a label must keep the property's scripting name."""
    name = "".join(c for c in label if c.isascii() and (c.isalnum() or c == "_"))
    return name if not name or name[0].isalpha() else "a" + name


def _documentation(text: str, **attributes: str) -> ET.Element:
    element = ET.Element("Documentation", attributes)
    element.text = text
    return element


def _set_documentation(parent: ET.Element, element: ET.Element) -> None:
    for old in parent.findall("Documentation"):
        parent.remove(old)
    parent.insert(0, element)


def _hints(parent: ET.Element) -> ET.Element:
    hints = parent.find("Hints")
    if hints is None:
        hints = ET.SubElement(parent, "Hints")
    return hints


def proxy_help(docstring: str) -> tuple[str, str, str]:
    """(short help, long help, description) of a proxy from its class docstring: the first
    sentence naming SENSE's help page (shown on top of the panel), the first sentence (the
    help page's summary), and the whole text naming the help page."""
    text = " ".join(docstring.split())
    first = sentence(re.split(r"(?<!e\.g)(?<!i\.e)[.:]\s", text, maxsplit=1)[0].rstrip(".:"))
    pointer = f"Help: SENSE's {HELP_PAGE}."
    return f"{first} {pointer}", first, f"{text} {pointer}"


def apply_layout(xml: str, entries: Sequence[Item | Group], docstring: str) -> str:
    """The proxy XML ``xml`` (one ServerManagerConfiguration with one proxy) laid out as
    ``entries`` say: properties in that order, every one documented and labelled, groups,
    advanced flags, visibility decorators, and the proxy documented from ``docstring``.

    Raises ValueError naming the proxy and property when the declaration and the XML disagree
    (a property not declared or not defined, a missing label, a label that would rename the
    property in scripts, a command-line flag in a text with no property for it)."""
    root = ET.fromstring(xml)
    proxy = root.find("./ProxyGroup/*")
    if proxy is None:
        raise ValueError("the decorators' XML has no proxy")
    where = f"proxy {proxy.get('name')}"
    proxy.attrib.pop("support_reload", None)  # a switch of ParaView's decorator, not an attribute
    properties = _property_elements(proxy)
    items: list[tuple[Item, Group | None]] = []
    for entry in entries:
        items += [(entry, None)] if isinstance(entry, Item) else [(i, entry) for i in entry.items]
    order = [item for item, _ in items]
    declared = [item.name for item in order]
    if sorted(declared) != sorted(properties) or len(set(declared)) != len(declared):
        extra = sorted(set(properties) - set(declared))
        missing = sorted(set(declared) - set(properties))
        raise ValueError(
            f"{where}: the panel declares {declared}; undeclared properties {extra}, "
            f"declared but not defined {missing} (or declared twice)"
        )
    labels = {item.cli: properties[item.name].get("label") for item in order if item.cli}
    for item, group in items:
        element = properties[item.name]
        label = element.get("label")
        if not label:
            raise ValueError(f"{where}: property {item.name} has no label")
        if python_name(label) != item.name:
            raise ValueError(
                f"{where}: the label {label!r} of {item.name} would rename it in scripts "
                f"(to {python_name(label)!r})"
            )
        text = item.documentation()
        if not text:
            raise ValueError(f"{where}: property {item.name} has no documentation")
        for flag in sorted(set(_FLAG.findall(text)), key=len, reverse=True):
            if flag not in labels:
                raise ValueError(f"{where}: the text of {item.name} names {flag}, no property")
            text = text.replace(flag, labels[flag])
        _set_documentation(element, _documentation(text))
        if group is not None and group.advanced:
            element.set("panel_visibility", "advanced")
        if item.shown is not None:
            if item.shown.property not in properties:
                raise ValueError(f"{where}: {item.name} depends on {item.shown.property}, absent")
            ET.SubElement(
                _hints(element),
                "PropertyWidgetDecorator",
                {
                    "type": "GenericDecorator",
                    "mode": "visibility",
                    "property": item.shown.property,
                    "values": " ".join(map(str, item.shown.positions)),
                },
            )
    others = [child for child in proxy if child not in properties.values()]
    for child in list(proxy):
        proxy.remove(child)
    short, long, description = proxy_help(docstring)
    proxy.append(_documentation(description, short_help=short, long_help=long))
    for item in order:
        proxy.append(properties[item.name])
    hints = [child for child in others if child.tag == "Hints"]
    for child in others:
        if child.tag not in ("Hints", "Documentation"):
            proxy.append(child)
    for group in (entry for entry in entries if isinstance(entry, Group)):
        attributes = {"label": group.label}
        if group.advanced:
            attributes["panel_visibility"] = "advanced"
        element = ET.SubElement(proxy, "PropertyGroup", attributes)
        for item in group.items:
            ET.SubElement(element, "Property", {"name": item.name})
    merged = hints[0] if hints else ET.Element("Hints")
    for extra in hints[1:]:
        merged.extend(list(extra))
    ET.SubElement(merged, "ShowProxyDocumentationInPanel", {"type": "short_help"})
    proxy.append(merged)
    return ET.tostring(root, encoding="unicode")


def _undecorated(obj):
    """The class under ParaView's decorator wrappers (they keep it as ``_pv_original_func``)."""
    while hasattr(obj, "_pv_original_func"):
        obj = obj._pv_original_func
    return obj


def layout(*entries: Item | Group) -> Callable:
    """Class decorator (above ``@smproxy...``): lay out the proxy's panel as ``entries`` say
    (see :func:`apply_layout`); the proxy's documentation is the class docstring (inherited
    from the algorithm when the proxy class has none)."""

    def decorate(decorated):
        cls = _undecorated(decorated)
        xml = getattr(cls, "_pvsm_proxy_xml", None)
        if xml is None:
            raise ValueError(f"{cls.__name__}: panel.layout goes above an @smproxy decorator")
        cls._pvsm_proxy_xml = apply_layout(xml, entries, inspect.getdoc(cls) or "")
        return decorated

    return decorate
