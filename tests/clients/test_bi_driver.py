"""Client logins of `wafunnel grants` through a BI driver, on a real server.

Every docs/bi query and every panel of the Grafana dashboard runs as each
client's user through clickhouse-connect (the driver of Superset and
similar tools, pinned in requirements.txt) and must return the rows the
admin gets from a database holding that client's accounts only. A panel
that reads a table a client may not read (not an account view) is not in
the client dashboard, deploy/grafana/client/wafunnel-client.json,
which must be the full dashboard without exactly those panels.

Needs the services of deploy/local/up.sh and the wafunnel binary:
  CLICKHOUSE_URL, CLICKHOUSE_USERS_DIR, WAFUNNEL_BIN
Run:  python -m pytest tests/clients -q
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import clickhouse_connect
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chdb"))
from test_dashboards import (  # noqa: E402
    DASHBOARD, FROM, TO, example_queries, expand_macros, load, panel_queries,
)
from test_schema import ServerBackend, apply_migrations  # noqa: E402

# Not provisioned: imported into a client's Grafana, over its own login.
CLIENT_DASHBOARD = DASHBOARD.parents[1] / "client" / "wafunnel-client.json"
CLIENTS = {"a": ["act_1"], "b": ["act_2"]}

needs_server = pytest.mark.skipif(
    not all(os.environ.get(v) for v in ("CLICKHOUSE_URL", "CLICKHOUSE_USERS_DIR", "WAFUNNEL_BIN")),
    reason="needs CLICKHOUSE_URL, CLICKHOUSE_USERS_DIR and WAFUNNEL_BIN (scripts/test.sh)",
)


def tables_read(sql: str) -> set[str]:
    return set(re.findall(r"\b(?:FROM|JOIN)\s+([A-Za-z_][A-Za-z0-9_]*)\b(?!\s*\()", sql))


def client_dashboard(dashboard: dict, account_views: set[str]) -> dict:
    """The dashboard without the panels that read anything but account views."""
    out = dict(dashboard)
    out["uid"] = dashboard["uid"] + "-client"
    out["title"] = dashboard["title"] + " (client)"
    out["panels"] = [
        p for p in dashboard["panels"]
        if p["type"] == "row"
        or all(tables_read(t["rawSql"]) <= account_views for t in p["targets"])
    ]
    return out


def run_grants(config: Path) -> str:
    out = subprocess.run(
        [os.environ["WAFUNNEL_BIN"], "--config", str(config), "grants",
         "--users-dir", os.environ["CLICKHOUSE_USERS_DIR"]],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def connect(user: str, password: str, database: str):
    url = urllib.parse.urlparse(os.environ["CLICKHOUSE_URL"])
    deadline = time.monotonic() + 60
    while True:  # until the server has reloaded the users file
        try:
            return clickhouse_connect.get_client(
                host=url.hostname, port=url.port, username=user, password=password,
                database=database)
        except Exception:  # noqa: BLE001 (any failure to log in, retried)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="module")
def setup():
    url = os.environ["CLICKHOUSE_URL"]
    main = ServerBackend(url)
    now = load(main)
    views = {r[0] for r in main.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine = 'View' "
        "AND name IN (SELECT table FROM system.columns WHERE database = currentDatabase() "
        "AND name = 'account_id')")[2]}
    tables = [r[0] for r in main.query(
        "SELECT table FROM system.columns WHERE database = currentDatabase() AND name = 'account_id' "
        "AND table IN (SELECT name FROM system.tables WHERE database = currentDatabase() "
        "AND engine != 'View')")[2]]
    # Per client, the admin's reference: the same schema with its rows only.
    references = {}
    for client, accounts in CLIENTS.items():
        ref = ServerBackend(url)
        apply_migrations(ref)
        listed = ", ".join(f"'{a}'" for a in accounts)
        for table in tables:
            ref.execute(f"INSERT INTO {ref.database}.{table} SELECT * FROM {main.database}.{table} "
                        f"WHERE account_id IN ({listed})")
        references[client] = ref
    work = Path(tempfile.mkdtemp(prefix="wafunnel-bi-driver-"))
    config = work / "wafunnel.toml"
    config.write_text(
        'user_hash_key = "not-used-by-grants-0123456789abcdef"\n'
        '[kafka]\nbootstrap = "127.0.0.1:9"\n'
        '[topics]\nraw = [{ name = "raw", format = "json" }]\n'
        'internal = "events"\ndead_letter = "dead"\nstate = "state"\ncapi = "capi"\n'
        f'[clickhouse]\nurl = "{url.rstrip("/")}"\ndatabase = "{main.database}"\n'
        f'self_url = "{url.rstrip("/")}"\n'
        + "".join(f'[clients.{c}]\naccounts = {json.dumps(a)}\nnetworks = ["127.0.0.1", "::1"]\n'
                  for c, a in CLIENTS.items()))
    out = run_grants(config)
    passwords = dict(re.findall(r"client (\w+): generated password (\S+)", out))
    assert set(passwords) == set(CLIENTS), out
    users_file = Path(os.environ["CLICKHOUSE_USERS_DIR"]) / f"{main.database}_clients.xml"
    yield {"main": main, "now": now, "views": views, "references": references,
           "passwords": passwords, "users_file": users_file}
    users_file.unlink(missing_ok=True)
    for client in CLIENTS:
        for kind in ("client", "hidden", "filtered"):
            main.execute(f"DROP DATABASE IF EXISTS {main.database}_{kind}_{client}")
    for db in [main, *references.values()]:
        db.close()


def queries() -> list[tuple[str, str]]:
    out = [(f"docs/bi/{name}.sql", sql.replace("{from}", FROM).replace("{to}", TO))
           for name, sql in example_queries().items()]
    out += [(f"panel {title!r}", expand_macros(sql)) for title, _, sql in panel_queries()]
    return out


@needs_server
def test_every_query_a_client_may_run_gives_the_admins_rows_for_its_accounts(setup):
    main = setup["main"]
    admin_url = urllib.parse.urlparse(os.environ["CLICKHOUSE_URL"])
    ran = 0
    for client in CLIENTS:
        user = f"{main.database}_client_{client}"
        as_client = connect(user, setup["passwords"][client], user)
        reference = clickhouse_connect.get_client(
            host=admin_url.hostname, port=admin_url.port, username="default", password="",
            database=setup["references"][client].database)
        for what, sql in queries():
            if not tables_read(sql) <= setup["views"]:
                # Not in the client dashboard; and refused, not answered.
                with pytest.raises(Exception, match="Access denied|doesn't exist"):
                    as_client.query(sql)
                continue
            want = reference.query(sql)
            got = as_client.query(sql)
            assert got.column_names == want.column_names, what
            assert got.result_rows == want.result_rows, (client, what)
            ran += 1
        # Each client saw rows, and only its own accounts.
        accounts = {r[0] for r in as_client.query(
            "SELECT DISTINCT account_id FROM funnel_daily").result_rows}
        assert accounts == set(CLIENTS[client])
    assert ran >= 2 * 20, ran


@needs_server
def test_the_users_file_is_not_world_readable_and_holds_no_password(setup):
    mode = setup["users_file"].stat().st_mode
    assert not mode & (stat.S_IROTH | stat.S_IWOTH | stat.S_IXOTH), oct(mode)
    text = setup["users_file"].read_text()
    for password in setup["passwords"].values():
        assert password not in text
    assert "<password>" not in text
    assert text.count("<password_sha256_hex>") == 2 * len(CLIENTS)


@needs_server
def test_the_client_dashboard_is_the_dashboard_without_the_panels_clients_cannot_read(setup):
    full = json.loads(DASHBOARD.read_text())
    expected = client_dashboard(full, setup["views"])
    assert json.loads(CLIENT_DASHBOARD.read_text()) == expected
    left_out = {p["title"] for p in full["panels"]} - {p["title"] for p in expected["panels"]}
    assert left_out, "every panel is for clients: the dashboards are the same"
    assert len(expected["panels"]) > len(left_out)
