"""The object inventory of a database: what a dump declares, a manifest records, a restore has.

One vocabulary for all three: (kind, qualified name) pairs, counted (overloaded functions
share a name). Kinds: schema, extension, table, foreign table, view, materialized view,
sequence, index, primary key, unique constraint, exclusion constraint, foreign key, check
constraint, trigger, function, procedure, aggregate, type, domain, policy, large object.
Names are raw (unquoted): ``shop.customers``, ``shop.customers.customers_pkey`` for objects
on a table, ``citext`` for an extension, the OID for a large object.

`read_inventory` reads it from a live database's catalogs: the producer records the source's
in the manifest, the drill reads the restored one and names every declared object that is not
there (`missing`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import psycopg

Inventory = Counter  # Counter[tuple[str, str]]

# User objects only: system schemas and the objects extensions create are left out, as
# pg_dump leaves them out.
_USER_SCHEMA = """
n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg\\_toast%'
AND n.nspname NOT LIKE 'pg\\_temp\\_%'
"""
_NOT_EXTENSION_MEMBER = """
NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {catalog}::regclass
            AND d.objid = {oid} AND d.deptype = 'e')
"""


def _member(catalog: str, oid: str) -> str:
    return _NOT_EXTENSION_MEMBER.format(catalog=f"'{catalog}'", oid=oid)


INVENTORY_SQL = f"""
SELECT 'schema', n.nspname FROM pg_namespace n
WHERE {_USER_SCHEMA} AND {_member("pg_namespace", "n.oid")}
UNION ALL
SELECT 'extension', e.extname FROM pg_extension e WHERE e.extname <> 'plpgsql'
UNION ALL
SELECT CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'f' THEN 'foreign table'
         WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence'
         ELSE 'index' END,
       n.nspname || '.' || c.relname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'f', 'v', 'm', 'S', 'i', 'I') AND {_USER_SCHEMA}
  AND {_member("pg_class", "c.oid")}
  AND NOT (c.relkind IN ('i', 'I') AND EXISTS (
      SELECT 1 FROM pg_constraint k WHERE k.conindid = c.oid AND k.contype IN ('p', 'u', 'x')))
UNION ALL
SELECT CASE k.contype WHEN 'p' THEN 'primary key' WHEN 'u' THEN 'unique constraint'
         WHEN 'x' THEN 'exclusion constraint' WHEN 'f' THEN 'foreign key'
         ELSE 'check constraint' END,
       n.nspname || '.' || coalesce(c.relname, t.typname) || '.' || k.conname
FROM pg_constraint k JOIN pg_namespace n ON n.oid = k.connamespace
LEFT JOIN pg_class c ON c.oid = k.conrelid LEFT JOIN pg_type t ON t.oid = k.contypid
WHERE k.contype IN ('p', 'u', 'x', 'f', 'c') AND {_USER_SCHEMA}
  AND (k.conrelid = 0 OR {_member("pg_class", "k.conrelid")})
  AND (k.contypid = 0 OR {_member("pg_type", "k.contypid")})
  AND NOT (k.contype = 'c' AND k.contypid <> 0 AND k.convalidated)
UNION ALL
SELECT 'trigger', n.nspname || '.' || c.relname || '.' || g.tgname
FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT g.tgisinternal AND {_USER_SCHEMA}
UNION ALL
SELECT CASE p.prokind WHEN 'p' THEN 'procedure' WHEN 'a' THEN 'aggregate' ELSE 'function' END,
       n.nspname || '.' || p.proname
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE {_USER_SCHEMA} AND {_member("pg_proc", "p.oid")}
UNION ALL
SELECT CASE t.typtype WHEN 'd' THEN 'domain' ELSE 'type' END, n.nspname || '.' || t.typname
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE {_USER_SCHEMA} AND {_member("pg_type", "t.oid")}
  AND (t.typtype IN ('e', 'd', 'r')
       OR (t.typtype = 'c' AND (SELECT c.relkind FROM pg_class c WHERE c.oid = t.typrelid) = 'c'))
UNION ALL
SELECT 'policy', n.nspname || '.' || c.relname || '.' || p.polname
FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace
UNION ALL
SELECT 'large object', m.oid::text FROM pg_largeobject_metadata m
"""
# Domain check constraints written inline in CREATE DOMAIN are part of the domain (the dump
# declares the domain, not them); only NOT VALID ones have headers of their own.


def read_inventory(conn: psycopg.Connection) -> Inventory:
    """The inventory of the database `conn` is connected to."""
    return Counter((kind, name) for kind, name in conn.execute(INVENTORY_SQL).fetchall())


def missing(declared: Inventory, present: Inventory) -> list[tuple[str, str]]:
    """The declared objects not present (each overload counted), sorted by kind and name."""
    return sorted((declared - present).elements())


def summary(inventory: Inventory) -> dict[str, int]:
    """Objects per kind, for reports."""
    counts: Counter[str] = Counter()
    for (kind, _name), n in inventory.items():
        counts[kind] += n
    return dict(sorted(counts.items()))


def to_json(inventory: Inventory) -> dict[str, list[str]]:
    """The inventory as a manifest stores it: kind -> sorted names (repeated per overload)."""
    result: dict[str, list[str]] = {}
    for kind, name in sorted(inventory.elements()):
        result.setdefault(kind, []).append(name)
    return result


def from_json(data: Mapping[str, Iterable[str]] | None) -> Inventory | None:
    """An inventory from its manifest form; None when there is none."""
    if not data:
        return None
    return Counter((kind, name) for kind, names in data.items() for name in names)


def describe(objects: list[tuple[str, str]], limit: int = 12) -> str:
    """Objects as an operator reads them: "index shop.orders_cust, foreign key ..."."""
    shown = ", ".join(f"{kind} {name}" for kind, name in objects[:limit])
    more = len(objects) - limit
    return shown + (f" and {more} more" if more > 0 else "")
