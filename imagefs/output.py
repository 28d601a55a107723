"""What the image commands print: ``-f table|json|value|yaml`` and ``-c COLUMN``.

As ``openstack image`` prints them:

- ``table``: a bordered table; one image is a Field/Value table, its custom
  properties one row each (``properties.KEY``);
- ``json`` and ``yaml``: the records (all their keys, or those ``-c`` names),
  for programs to read;
- ``value``: values only, no headers: a listing's row per line, space
  separated; one image's values one per line (``-f value -c id`` is the id).

A column is named by its header (``Disk Format``) or its record key
(``disk_format``).  A name that is neither is a ``ConfigError`` raised by
``choose`` before anything is asked of the service, so a ``create`` with a
mistyped ``-c`` makes no image.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Sequence

from .errors import ConfigError
from .records import FIELDS, LOCATION_KEYS

FORMATS = ("table", "json", "value", "yaml")

Column = tuple[str, str]  # (header, record key)

#: ``image list``'s columns, without and with ``--long``.
LIST_COLUMNS: tuple[Column, ...] = (
    ("ID", "id"), ("Name", "name"), ("Status", "status"), ("Size", "size"),
    ("Disk Format", "disk_format"), ("Visibility", "visibility"))
LONG_COLUMNS: tuple[Column, ...] = (
    ("ID", "id"), ("Name", "name"), ("Disk Format", "disk_format"),
    ("Container Format", "container_format"), ("Size", "size"), ("Checksum", "checksum"),
    ("Status", "status"), ("Visibility", "visibility"), ("Protected", "protected"),
    ("Project", "owner"), ("Tags", "tags"))

#: Every key a record can have, as ``-c`` may name it for one image.
RECORD_COLUMNS: tuple[Column, ...] = tuple(
    (key, key) for key in (*FIELDS, "properties", *LOCATION_KEYS))


def _every_list_column() -> tuple[Column, ...]:
    seen = {key for _, key in LONG_COLUMNS + LIST_COLUMNS}
    return LIST_COLUMNS + tuple(c for c in LONG_COLUMNS if c not in LIST_COLUMNS) + tuple(
        (key, key) for key in FIELDS if key not in seen)


def choose(names: Sequence[str] | None, default: Sequence[Column],
           known: Sequence[Column]) -> list[Column]:
    """The columns ``-c`` names (in its order), or ``default`` without any."""
    if not names:
        return list(default)
    by_name = {}
    for header, key in known:
        by_name.setdefault(header, (header, key))
        by_name.setdefault(key, (header, key))
    unknown = [n for n in names if n not in by_name]
    if unknown:
        headers = ", ".join(dict.fromkeys(h for h, _ in known))
        raise ConfigError(f"unknown column {unknown[0]!r}; the columns are: {headers}")
    return [by_name[n] for n in names]


def list_columns(names: Sequence[str] | None, long: bool) -> list[Column]:
    """``image list``'s columns: ``-c`` may name any, ``--long`` or not."""
    return choose(names, LONG_COLUMNS if long else LIST_COLUMNS, _every_list_column())


def record_columns(names: Sequence[str] | None) -> list[Column] | None:
    """One image's columns, or None for all it has; a listing's header names
    its field too (``-c ID`` is ``-c id``)."""
    if not names:
        return None
    known = [(key, key) for key in {k: None for _, k in RECORD_COLUMNS}]
    aliases = {header: key for header, key in LONG_COLUMNS + LIST_COLUMNS}
    return choose([aliases.get(n, n) for n in names], (), known)


# ---- cells and documents ----------------------------------------------------------
def cell(value: Any) -> str:
    """A value as a table or ``value`` cell: tags comma separated, other
    lists and mappings as JSON, None empty."""
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return str(value)


def _dump(document: Any, fmt: str) -> None:
    if fmt == "yaml":
        import yaml

        print(yaml.safe_dump(document, default_flow_style=False, sort_keys=True), end="")
    else:
        print(json.dumps(document, indent=2, sort_keys=True))


def print_table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> None:
    cells = [[cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    print(line)
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |")
    print(line)
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |")
    print(line)


def print_records(records: Sequence[dict], columns: Sequence[Column], fmt: str,
                  whole: bool = False) -> None:
    """A listing.  ``whole``: json and yaml give the whole records (no ``-c``)."""
    if fmt in ("json", "yaml"):
        _dump([dict(r) if whole else {key: r.get(key) for _, key in columns}
               for r in records], fmt)
    elif fmt == "value":
        for r in records:
            print(" ".join(cell(r.get(key)) for _, key in columns))
    else:
        print_table([[r.get(key) for _, key in columns] for r in records],
                    [header for header, _ in columns])


def print_record(record: dict, fmt: str, columns: Sequence[Column] | None = None) -> None:
    """One image; ``columns`` None: every key it has."""
    keys = [key for _, key in columns] if columns else list(record)
    if fmt in ("json", "yaml"):
        _dump({key: record.get(key) for key in keys}, fmt)
        return
    rows = []
    for key in keys:
        if key == "properties" and fmt == "table":
            rows += [(f"properties.{k}", v) for k, v in sorted(record[key].items())]
        else:
            rows.append((key, record.get(key)))
    if fmt == "value":
        for _, value in rows:
            print(cell(value))
    else:
        print_table(rows, ("Field", "Value"))
