"""A benchmark's report, and its one rendering as Markdown.

A ``Report`` is what a run writes (``perf.results_dir.write_results``): its kind (the
result directory's and files' name), ``meta`` (date, machine, settings) and ``data``
(the figures) for the JSON file, and ``sections`` for the Markdown file: text (titles,
notes) and ``Table``s, in order, one blank line apart. A table is its rows and a
declaration of its columns: header, what each cell shows (keys of the row, or
functions of it) and the format of those values.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, Union

Value = Union[str, Callable[[Any], Any]]  # a key of the row ("a.b": row["a"]["b"]), or a function of the row


@dataclass(frozen=True)
class Column:
    """One column: ``header``, the value(s) a cell shows and ``fmt``, a format string with one
    replacement field per value (``"{:.0f} / {:.0f}"`` for two). A value that is None shows
    as ``missing``, each on its own (``"- / 12"``)."""

    header: str
    values: Value | tuple[Value, ...]
    fmt: str = "{}"
    missing: str = "-"

    def cell(self, row) -> str:
        values = self.values if isinstance(self.values, tuple) else (self.values,)
        fields = list(string.Formatter().parse(self.fmt))
        if sum(name is not None for _, name, _, _ in fields) != len(values):
            raise ValueError(f"column {self.header!r}: {self.fmt!r} does not have {len(values)} fields")
        out, found = [], iter(_value(row, v) for v in values)
        for literal, name, spec, _ in fields:
            out.append(literal)
            if name is not None:
                value = next(found)
                out.append(self.missing if value is None else format(value, spec))
        return "".join(out)


def _value(row, value: Value):
    if callable(value):
        return value(row)
    for key in value.split("."):
        row = row[key]
    return row


@dataclass(frozen=True)
class Table:
    """``rows`` under ``columns``; a table with no rows is its header alone."""

    columns: Sequence[Column]
    rows: Iterable = ()

    def markdown(self) -> str:
        lines = ["| " + " | ".join(c.header for c in self.columns) + " |",
                 "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(c.cell(row) for c in self.columns) + " |" for row in self.rows]
        return "\n".join(lines)


Section = Union[str, Table]


def markdown(sections: Iterable[Section]) -> str:
    """The Markdown of ``sections``: each text or table, one blank line apart."""
    return "\n\n".join(s.markdown() if isinstance(s, Table) else s for s in sections) + "\n"


@dataclass
class Report:
    """What one benchmark run writes: ``<kind>.json`` (``meta`` and ``data``) and ``<kind>.md``
    (``sections``)."""

    kind: str
    meta: dict
    data: dict
    sections: list[Section] = field(default_factory=list)

    def json(self) -> dict:
        return {"meta": self.meta, **self.data}

    def markdown(self) -> str:
        return markdown(self.sections)
