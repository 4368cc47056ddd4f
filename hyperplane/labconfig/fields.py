"""The lab file's tables and keys as data: what the loader accepts and what
``hyperplane lab schema`` publishes, from one declaration.

Each ``parse_*`` module declares the :class:`Table` s it reads (``SUBNET`` in parse_vpc, ...)
and hands them to ``check_keys``, which refuses a key the table does not declare and wants
every ``required`` one; ``loading.LAB_FILE`` is the document's top level. :func:`json_schema`
turns the same tables into a JSON Schema (draft 2020-12, https://json-schema.org/draft/2020-12)
for editors (Taplo, Even Better TOML, Tombi) to check a lab file as it is typed. A key added
here is accepted by the loader and appears in the schema; a key missing here is refused by
both. The parse functions still check what a schema cannot say (a CIDR inside its VPC, a
subnet that exists), with messages that say how to fix it.

Adding a key is one line in its table: ``Key("name", "string", "what it is", ...)``; a new
section is a ``Table`` beside its parse function and one ``Key(..., table=...)`` line in
``loading.LAB_FILE``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence, Tuple, Union

#: The schema's identity: its draft, and where the committed copy lives in the repository.
SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"
#: (a URN: the project publishes no URL of its own; editors take the file by path).
SCHEMA_ID = "urn:hyperplane:lab-file:schema"

#: A key's type in TOML's words -> JSON Schema's. "map": a table of free names (environment
#: variables); "any": anything (an IAM policy document, checked by hyperplane.labconfig.iam).
_JSON_TYPES = {"string": "string", "integer": "integer", "number": "number",
               "boolean": "boolean", "array": "array", "table": "object", "map": "object"}


@dataclasses.dataclass(frozen=True)
class Key:
    """One key of a table. ``type``: "string", "integer", "number", "boolean", "array",
    "table", "map" or "any", or a tuple of them. ``items``: an array's item type or
    :class:`Table`; ``table``: a table's :class:`Table`; ``values``/``pattern`` for a "map"
    (its values' type, its keys' pattern); otherwise ``pattern`` is the string's."""
    name: str
    type: Union[str, Tuple[str, ...]]
    doc: str
    required: bool = False
    default: Any = None
    enum: Optional[Sequence[Any]] = None
    minimum: Optional[float] = None
    maximum: Optional[float] = None
    exclusive_minimum: Optional[float] = None
    pattern: Optional[str] = None
    items: Union[str, "Table", "Key", None] = None
    table: Optional["Table"] = None
    values: Optional[str] = None
    multiple_of: Optional[int] = None
    min_items: Optional[int] = None
    max_items: Optional[int] = None


@dataclasses.dataclass(frozen=True)
class Table:
    """A TOML table the loader reads: its keys, and what it is (``doc``) under ``title``
    (how the lab file writes it: ``[[subnets]]``, ``[functions.vpc_config]``)."""
    title: str
    doc: str
    keys: Tuple[Key, ...]

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(k.name for k in self.keys)

    @property
    def required(self) -> Tuple[str, ...]:
        return tuple(k.name for k in self.keys if k.required)

    def subtables(self) -> Tuple["Table", ...]:
        """The tables directly under this one (of its table keys and arrays of tables)."""
        out = []
        for k in self.keys:
            for t in (k.table, k.items):
                if isinstance(t, Table):
                    out.append(t)
        return tuple(out)


def walk(root: Table) -> Tuple[Table, ...]:
    """``root`` and every table under it, each once."""
    seen: Dict[int, Table] = {}
    todo = [root]
    while todo:
        t = todo.pop(0)
        if id(t) not in seen:
            seen[id(t)] = t
            todo.extend(t.subtables())
    return tuple(seen.values())


def _type_schema(typ: Union[str, Table, Key]) -> Dict[str, Any]:
    if isinstance(typ, Table):
        return table_schema(typ)
    if isinstance(typ, Key):
        return key_schema(typ)
    if typ == "any":
        return {}
    return {"type": _JSON_TYPES[typ]}


def key_schema(key: Key) -> Dict[str, Any]:
    types = key.type if isinstance(key.type, tuple) else (key.type,)
    out: Dict[str, Any] = {"description": key.doc}
    if key.table is not None:
        out.update(table_schema(key.table))
        out["description"] = key.doc
    elif "any" in types:
        pass
    elif len(types) == 1:
        out["type"] = _JSON_TYPES[types[0]]
    else:
        out["type"] = [_JSON_TYPES[t] for t in types]
    if key.items is not None:
        out["items"] = _type_schema(key.items)
    if key.values is not None:   # a map: its names match the pattern, its values one type
        if key.pattern:
            out["patternProperties"] = {key.pattern: _type_schema(key.values)}
            out["additionalProperties"] = False
        else:
            out["additionalProperties"] = _type_schema(key.values)
    elif key.pattern:
        out["pattern"] = key.pattern
    for name, value in (("default", key.default), ("enum", list(key.enum or ()) or None),
                        ("minimum", key.minimum), ("maximum", key.maximum),
                        ("exclusiveMinimum", key.exclusive_minimum),
                        ("multipleOf", key.multiple_of),
                        ("minItems", key.min_items), ("maxItems", key.max_items)):
        if value is not None:
            out[name] = value
    return out


def table_schema(table: Table) -> Dict[str, Any]:
    out: Dict[str, Any] = {"type": "object", "title": table.title, "description": table.doc,
                           "properties": {k.name: key_schema(k) for k in table.keys},
                           "additionalProperties": False}
    if table.required:
        out["required"] = list(table.required)
    return out


def json_schema(root: Table) -> Dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a lab file whose top level is ``root``."""
    out: Dict[str, Any] = {"$schema": SCHEMA_DRAFT, "$id": SCHEMA_ID}
    out.update(table_schema(root))
    return out
