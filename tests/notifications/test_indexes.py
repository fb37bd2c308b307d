"""The log tables' physical setup. No index twice: each foreign key is served by a composite
index that leads with it (its lookups and cascades stay index scans), and none of its own.
Autovacuum early: the tables change faster than PostgreSQL's defaults expect."""

from __future__ import annotations

import pytest
from django.db import connection

pytestmark = pytest.mark.django_db

LOG_TABLES = ("notifications_notification", "notifications_delivery")


def _indexes(table: str, *, plain_only: bool = False) -> dict[str, list[str]]:
    """Each index of ``table``: its columns in order. ``plain_only``: leave out the unique
    and the partial ones (they do more than serve lookups)."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT i.relname, array_agg(a.attname ORDER BY k.n)
            FROM pg_index x
            JOIN pg_class i ON i.oid = x.indexrelid
            JOIN pg_class t ON t.oid = x.indrelid
            CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, n)
            JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k.attnum
            WHERE t.relname = %s AND (NOT %s OR (NOT x.indisunique AND x.indpred IS NULL))
            GROUP BY i.relname
            """,
            [table, plain_only],
        )
        return {name: list(columns) for name, columns in cursor.fetchall()}


def _foreign_keys(table: str) -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT a.attname FROM pg_constraint c
            JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
            WHERE c.conrelid = %s::regclass AND c.contype = 'f'
            """,
            [table],
        )
        return sorted(row[0] for row in cursor.fetchall())


@pytest.mark.parametrize("table", LOG_TABLES)
def test_every_foreign_key_leads_an_index(table):
    leading = {columns[0] for columns in _indexes(table).values()}
    assert _foreign_keys(table), "the table has foreign keys"
    assert [fk for fk in _foreign_keys(table) if fk not in leading] == []


@pytest.mark.parametrize("table", LOG_TABLES)
def test_no_plain_index_is_the_prefix_of_another(table):
    redundant = [
        (name, other)
        for name, columns in _indexes(table, plain_only=True).items()
        for other, longer in _indexes(table).items()
        if other != name and len(longer) > len(columns) and longer[: len(columns)] == columns
    ]
    assert redundant == []


def test_the_log_tables_are_vacuumed_and_analyzed_early():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, reloptions FROM pg_class WHERE relname = ANY(%s)", [list(LOG_TABLES)]
        )
        options = {name: set(opts or ()) for name, opts in cursor.fetchall()}

    assert {
        "autovacuum_vacuum_scale_factor=0.02",
        "autovacuum_analyze_scale_factor=0.01",
    } <= options["notifications_delivery"]
    assert "autovacuum_analyze_scale_factor=0.01" in options["notifications_notification"]
