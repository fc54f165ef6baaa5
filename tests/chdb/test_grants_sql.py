"""The statements `wafunnel grants` runs on ClickHouse 24.2 and later
(tests/chdb/grants_statements.sql, equal to what the Rust code
generates: see `sql_statements_golden` in crates/wafunnel-stream/src/grants.rs),
on current ClickHouse in process (chdb).

The database statements run: the client's `SQL SECURITY DEFINER` views
return the main views' rows of its accounts only. chdb has no user
storage, so the user statements are only parsed (`EXPLAIN AST`).

Run:  python -m pytest tests/chdb/test_grants_sql.py -q
"""

from __future__ import annotations

from pathlib import Path

from chdb import session

GOLDEN = Path(__file__).resolve().parent / "grants_statements.sql"
USER_STATEMENTS = ("CREATE USER", "ALTER USER", "GRANT")


def rows(s: session.Session, sql: str) -> list[str]:
    return sorted(line for line in str(s.query(sql, "TSV")).splitlines() if line)


def test_the_sql_path_filters_every_view_and_its_user_statements_parse():
    statements = GOLDEN.read_text().splitlines()
    s = session.Session()
    s.query("CREATE DATABASE wafunnel")
    s.query("CREATE TABLE wafunnel.t (account_id String, x Int64) ENGINE = MergeTree ORDER BY account_id")
    s.query("INSERT INTO wafunnel.t VALUES ('act_1001', 1), ('act_2002', 2), ('act_\\'2', 3)")
    s.query("CREATE VIEW wafunnel.funnel_daily AS SELECT account_id, sum(x) AS total FROM wafunnel.t GROUP BY account_id")
    s.query("CREATE VIEW wafunnel.capi_daily AS SELECT account_id, count() AS n FROM wafunnel.t GROUP BY account_id")
    s.query("CREATE DATABASE wafunnel_client_acme")
    s.query("CREATE VIEW wafunnel_client_acme.old AS SELECT 1")
    users = [st for st in statements if st.startswith(USER_STATEMENTS)]
    assert len(users) == 6
    for st in statements:
        if st.startswith(USER_STATEMENTS):
            assert str(s.query("EXPLAIN AST " + st, "TSV")).strip(), st
        else:
            s.query(st)
    for view in ("funnel_daily", "capi_daily"):
        expected = rows(s, f"SELECT * FROM wafunnel.{view} WHERE account_id IN ('act_1001', 'act_\\'2')")
        assert len(expected) == 2
        assert rows(s, f"SELECT * FROM wafunnel_client_acme.{view}") == expected
    tables = rows(s, "SELECT name FROM system.tables WHERE database = 'wafunnel_client_acme'")
    assert tables == ["capi_daily", "funnel_daily"]
    # Running them again (grants is re-run) changes nothing.
    for st in statements:
        if not st.startswith(USER_STATEMENTS):
            s.query(st)
    assert rows(s, "SELECT * FROM wafunnel_client_acme.funnel_daily") == rows(
        s, "SELECT * FROM wafunnel.funnel_daily WHERE account_id != 'act_2002'"
    )
