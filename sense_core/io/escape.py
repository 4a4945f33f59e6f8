"""One escaping rule for every CSV and Markdown table SENSE writes.

CSV (OWASP "CSV injection"): a spreadsheet runs a cell that starts with ``=``, ``+``, ``-``,
``@``, a tab or a carriage return (and, in some locales, their full-width forms) as a formula,
so a class name like ``=cmd|' /C calc'!A0`` read from a labels.csv would run when a user opens
the embedding.csv that SENSE wrote. Such a text cell is written with a leading apostrophe
(``'=cmd...``), which spreadsheets show as text. Numbers (``-1.5``, ``+2e-3``) are written as
they are: they are not formulas, and numeric columns stay numeric. A text that already starts
with an apostrophe followed by one of those characters (or by another apostrophe) gets one more
apostrophe, so :func:`unescape_cell` gives back exactly what was escaped: SENSE's readers of
labels.csv and metadata.csv un-escape, and a round trip keeps class names, ids and values.

Markdown: a ``|`` or a line break in a class name or a bundle name would split a table row;
:func:`md_cell` backslash-escapes the characters that change a table or inject markup.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import IO, Any

import numpy as np

# the first characters that make a spreadsheet evaluate a cell (OWASP), and their full-width forms
FORMULA_STARTS = frozenset("=+-@\t\r\uff1d\uff0b\uff0d\uff20")
_QUOTE = "'"
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_MARKDOWN_SPECIAL = re.compile(r"([\\|`*\[\]<>&])")
_LINE_BREAKS = re.compile(r"\r\n|\r|\n")


def _needs_quote(text: str) -> bool:
    first = text[:1]
    if first in FORMULA_STARTS:
        return _NUMBER.fullmatch(text) is None
    return first == _QUOTE and (text[1:2] in FORMULA_STARTS or text[1:2] == _QUOTE)


def escape_cell(value: Any) -> str:
    """``value`` as a CSV cell that no spreadsheet runs as a formula (see the module doc).

    Plain numbers (Python or numpy ints and finite floats, and texts like ``-1.5``) are
    unchanged.
    """
    if isinstance(value, bool | np.bool_):
        text = str(bool(value))
    elif isinstance(value, int | np.integer):
        text = str(int(value))
    elif isinstance(value, float | np.floating):
        text = repr(float(value))  # -inf is not a plain number: it is escaped like a text
    else:
        text = "" if value is None else str(value)
    return _QUOTE + text if _needs_quote(text) else text


def unescape_cell(text: str) -> str:
    """The value :func:`escape_cell` escaped: one leading apostrophe removed where it added one."""
    if text.startswith(_QUOTE) and _needs_quote(text[1:]):
        return text[1:]
    return text


class EscapingWriter:
    """A :func:`csv.writer` whose every cell goes through :func:`escape_cell`."""

    def __init__(self, stream: IO[str], **options: Any) -> None:
        self._writer = csv.writer(stream, **options)

    def writerow(self, row: Iterable[Any]) -> Any:
        """Write one row, each cell escaped."""
        return self._writer.writerow([escape_cell(cell) for cell in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        """Write rows, each cell escaped."""
        for row in rows:
            self.writerow(row)


def csv_writer(stream: IO[str], **options: Any) -> EscapingWriter:
    """The CSV writer every SENSE output uses (``options`` as for :func:`csv.writer`)."""
    return EscapingWriter(stream, **options)


def md_cell(value: Any) -> str:
    """``value`` as the text of one Markdown table cell (or list item): line breaks become
    spaces, and ``\\ | ` * [ ] < > &`` are backslash-escaped so that the text shows as it is
    and cannot split the row or add links and HTML."""
    text = _LINE_BREAKS.sub(" ", "" if value is None else str(value))
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)


def md_code(value: Any) -> str:
    """``value`` as a code span inside a Markdown table cell (paths, checksums): a fence longer
    than any run of backticks in it, ``|`` escaped for the table, line breaks as spaces."""
    text = _LINE_BREAKS.sub(" ", "" if value is None else str(value))
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return fence + padded.replace("|", "\\|") + fence
