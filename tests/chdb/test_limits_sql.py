"""The client limits `wafunnel grants` sets on ClickHouse 24.2 and later
(tests/chdb/limits_statements.sql, equal to what the Rust code generates:
see `sql_statements_golden` in crates/wafunnel-stream/src/grants/limits.rs),
on current ClickHouse in process (chdb).

chdb has no user storage, so the profile and quota statements are parsed
(`EXPLAIN AST`), and every setting they name is checked to exist and to
take its value (`SET`), so a misspelt or removed setting fails here.

Run:  python -m pytest tests/chdb/test_limits_sql.py -q
"""

from __future__ import annotations

import re
from pathlib import Path

from chdb import session

GOLDEN = Path(__file__).resolve().parent / "limits_statements.sql"


def test_the_limits_statements_parse_and_name_real_settings():
    statements = GOLDEN.read_text().splitlines()
    s = session.Session()
    profiles = [st for st in statements if st.startswith("CREATE SETTINGS PROFILE")]
    quotas = [st for st in statements if st.startswith("CREATE QUOTA")]
    assert len(profiles) == 3 and len(quotas) == 3
    assert len(profiles) + len(quotas) == len(statements)
    for st in statements:
        assert str(s.query("EXPLAIN AST " + st, "TSV")).strip(), st
    for st in profiles:
        body = re.search(r"` SETTINGS (.*) TO `", st).group(1)
        pairs = [p.strip() for p in body.split(",")]
        assert pairs and all(p.endswith(" CONST") for p in pairs), st
        for pair in pairs:
            name, value = (x.strip() for x in pair.removesuffix(" CONST").split("=", 1))
            known = str(s.query(f"SELECT count() FROM system.settings WHERE name = '{name}'", "TSV")).strip()
            assert known == "1", f"{name} is not a setting"
            s.query(f"SET {name} = {value}")
            got = str(s.query(f"SELECT value FROM system.settings WHERE name = '{name}'", "TSV")).strip()
            assert got == value.strip("'"), f"{name}: set {value}, reads {got}"
    for st in quotas:
        assert re.search(r"FOR INTERVAL \d+ second (MAX|TRACKING ONLY)", st), st
