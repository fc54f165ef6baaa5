"""Proof of the BI queries: every panel of the Grafana dashboard
(deploy/grafana/dashboards/wafunnel.json) and every example query of
docs/bi/*.sql runs on the views and returns the expected columns and
numbers for a known set of rows, on chdb and, when CLICKHOUSE_URL is set,
on a real server. The queries are read from those files, so a query that is
edited is a query that is tested.

Grafana's ClickHouse data source expands its macros before sending a query;
`expand_macros` does the same for the ones the dashboard uses:
  $__dateFilter(c)  ->  c >= toDate('YYYY-MM-DD') AND c <= toDate('YYYY-MM-DD')
  $__timeFilter(c)  ->  c >= toDateTime(<unix>) AND c <= toDateTime(<unix>)
  $__fromTime, $__toTime  ->  toDateTime(<unix>)
The example queries take {from} and {to} as YYYY-MM-DD days.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from decimal import Decimal as D

import pytest

from test_schema import (  # noqa: F401  (db is a fixture)
    ADS_COLS, CONV_COLS, FUNNEL_COLS, H72, REPO, T0, apply_migrations, db, funnel,
)

DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "wafunnel.json"
BI_DIR = REPO / "docs" / "bi"

D1, D2, D3, D5 = "2026-03-01", "2026-03-02", "2026-03-03", "2026-03-05"
FROM, TO = D1, D3  # the range every ranged query is run over
DAY = 86400000
MINUTE = 60000


def expand_macros(sql: str) -> str:
    start = datetime.fromisoformat(FROM).replace(tzinfo=timezone.utc)
    end = datetime.fromisoformat(TO).replace(hour=23, minute=59, second=59, tzinfo=timezone.utc)
    sql = re.sub(r"\$__dateFilter\((\w+)\)",
                 lambda m: f"{m.group(1)} >= toDate('{start:%Y-%m-%d}') "
                           f"AND {m.group(1)} <= toDate('{end:%Y-%m-%d}')", sql)
    sql = re.sub(r"\$__timeFilter\((\w+)\)",
                 lambda m: f"{m.group(1)} >= toDateTime({int(start.timestamp())}) "
                           f"AND {m.group(1)} <= toDateTime({int(end.timestamp())})", sql)
    sql = sql.replace("$__fromTime", f"toDateTime({int(start.timestamp())})")
    sql = sql.replace("$__toTime", f"toDateTime({int(end.timestamp())})")
    assert "$" not in sql, sql
    return sql


def conv(account, ad, user, started, start_day, *, first_inbound=None, reply_after=None,
         currency="USD"):
    """A conversation row as sessionize writes it (version 1, partition 0)."""
    messaged = first_inbound is not None
    reply = None if reply_after is None else first_inbound + reply_after
    bucket = "NULL" if not messaged else ("'none'" if reply is None else "'le_5m'")
    n = lambda v: "NULL" if v is None else str(v)  # noqa: E731
    return (
        f"('{account}', '{ad}', '{user}', {started}, {started}, 1, {started}, "
        f"{int(messaged)}, {n(first_inbound)}, {int(reply is not None)}, {n(reply)}, "
        f"{n(reply_after)}, {bucket}, {n(first_inbound + H72 if messaged else None)}, "
        f"0, 0, 0, 0, NULL, 0, 0, NULL, NULL, 0, 1, 0, NULL, '{start_day}', '{currency}')"
    )


def load(db) -> int:
    """The known rows; returns the server's now() in ms, for the queue."""
    apply_migrations(db)
    _, _, rows = db.query("SELECT toInt64(toUnixTimestamp(now())) * 1000, toString(today())")
    now, today = rows[0]

    def ins(table, cols, *values):
        db.execute(f"INSERT INTO {table} ({cols}) VALUES " + ", ".join(values))

    ins("funnel_partial", FUNNEL_COLS,
        funnel("act_1", "ad_1", D2, 0, 1, clicks=2, inbound=2, started=2, messaged=2,
               replied=2, le_5m=1, le_1h=1, sum_frm=60000 + 600000, out_in=3,
               qualified=1, purchases=1, revenue="50", billable=1),
        funnel("act_1", "ad_1", D3, 0, 1, clicks=3, inbound=3, started=3, messaged=2,
               replied=1, gt_24h=1, sum_frm=90000000, out_in=4, out_after=1, over=1,
               qualified=1, billable=2),
        funnel("act_1", "ad_2", D3, 0, 1, clicks=1, inbound=1, started=1, messaged=1),
        # Outside the range.
        funnel("act_1", "ad_1", D5, 0, 1, clicks=1, inbound=1, started=1, messaged=1),
        funnel("act_2", "ad_9", D1, 0, 1, clicks=1, started=1),
        funnel("act_2", "ad_9", D2, 0, 1, clicks=1, inbound=1, started=1, messaged=1,
               replied=1, le_5m=1, sum_frm=120000, out_in=1, qualified=1, purchases=1,
               revenue="100"))
    spend_cols = ("account_id, ad_id, date, partition, event_id, event_time, spend, currency, "
                  "impressions, clicks, reported_conversations, version")
    ins("spend_snapshots", spend_cols,
        f"('act_1', 'ad_1', '{D2}', 0, 's-1', {T0}, 10, 'USD', 100, 2, 3, 1)",
        f"('act_1', 'ad_1', '{D3}', 0, 's-2', {T0}, 8.7, 'USD', 100, 3, 4, 1)",
        f"('act_1', 'ad_2', '{D3}', 0, 's-3', {T0}, 1, 'USD', 10, 1, 1, 1)",
        f"('act_1', 'ad_1', '{D5}', 0, 's-5', {T0}, 100, 'USD', 100, 1, 1, 1)",
        f"('act_2', 'ad_9', '{D2}', 0, 's-9', {T0}, 20, 'BRL', 100, 1, 1, 1)")
    ins("ads", ADS_COLS,
        f"('act_1', 'ad_1', 0, 'cmp_1', 'as_1', {T0}, 'c-1', 1)",
        f"('act_1', 'ad_2', 0, 'cmp_2', 'as_2', {T0}, 'c-2', 1)",
        f"('act_2', 'ad_9', 0, 'cmp_9', 'as_9', {T0}, 'c-9', 1)")
    t3 = T0 + DAY
    ins("conversation_rows", CONV_COLS,
        conv("act_1", "ad_1", "uh_a", T0, D2, first_inbound=T0 + MINUTE, reply_after=MINUTE),
        conv("act_1", "ad_1", "uh_b", T0, D2, first_inbound=T0 + MINUTE,
             reply_after=10 * MINUTE),
        conv("act_1", "ad_1", "uh_c", t3, D3, first_inbound=t3, reply_after=25 * 60 * MINUTE),
        conv("act_1", "ad_1", "uh_d", t3, D3, first_inbound=t3),
        conv("act_1", "ad_1", "uh_e", t3, D3),
        # uh_a again, through another ad: one contact of the account.
        conv("act_1", "ad_2", "uh_a", t3, D3, first_inbound=t3),
        conv("act_1", "ad_1", "uh_f", T0 + 3 * DAY, D5, first_inbound=T0 + 3 * DAY),
        conv("act_2", "ad_9", "uh_z", T0, D2, first_inbound=T0 + MINUTE,
             reply_after=2 * MINUTE, currency="BRL"),
        # 01:00 UTC is still Sunday 1 March in Sao Paulo: sessionize wrote
        # the account's day, and the weekly query puts it in the week before.
        conv("act_2", "ad_9", "uh_y", T0 - 9 * 3600000, D1, currency="BRL"),
        # Waiting for a reply right now, for 9.5 minutes.
        conv("act_1", "ad_1", "uh_w", now - 10 * MINUTE, today,
             first_inbound=now - 9 * MINUTE - 30000))
    capi_cols = ("export_id, account_id, day, event_name, event_time, status, error_code, "
                 "error_message, attempts, updated_at, version")
    ins("capi_exports", capi_cols,
        f"('e1', 'act_1', '{D2}', 'Purchase', {T0}, 'sent', NULL, NULL, 1, 1, 1)",
        f"('e2', 'act_1', '{D3}', 'LeadSubmitted', {T0}, 'sent', NULL, NULL, 1, 1, 1)",
        f"('e3', 'act_1', '{D3}', 'LeadSubmitted', {T0}, 'no_click_id', NULL, NULL, 0, 1, 1)",
        f"('e4', 'act_2', '{D2}', 'Purchase', {T0}, 'rejected', '100', 'Invalid', 1, 1, 1)",
        f"('e5', 'act_1', '{D5}', 'Purchase', {T0}, 'sent', NULL, NULL, 1, 1, 1)")
    ins("dead_letter_reasons",
        "worker_topic, worker_partition, reason, day, records, version",
        f"('dead', 0, 'malformed', '{D2}', 2, 5)",
        f"('dead', 1, 'malformed', '{D2}', 1, 3)",
        f"('dead', 1, 'unknown_type', '{D3}', 4, 9)",
        f"('dead', 1, 'malformed', '{D5}', 1, 12)")
    ins("unknown_phone_number_counts",
        "worker_topic, worker_partition, phone_number_id, first_seen, last_seen, bodies, version",
        f"('dead', 0, '406540352242922', toDateTime('{D1} 22:00:00', 'UTC'), "
        f"toDateTime('{D2} 10:00:00', 'UTC'), 2, 4)",
        f"('dead', 1, '406540352242922', toDateTime('{D3} 08:00:00', 'UTC'), "
        f"toDateTime('{D3} 09:30:00', 'UTC'), 1, 2)",
        f"('dead', 1, '506540352242922', toDateTime('{D5} 08:00:00', 'UTC'), "
        f"toDateTime('{D5} 08:00:00', 'UTC'), 1, 3)")
    return now


# Per query (docs/bi/<name>.sql, and every panel that names it): the
# columns and the rows over FROM..TO.
EXPECTED = {
    "reconciliation": (
        ["account_id", "campaign_id", "ad_id", "reported_conversations",
         "conversations_started", "conversations_messaged", "inbound_messages",
         "people_who_messaged"],
        [("act_1", "cmp_1", "ad_1", 7, 5, 4, 5, 4),
         ("act_1", "cmp_2", "ad_2", 1, 1, 1, 1, 1),
         ("act_2", "cmp_9", "ad_9", 1, 2, 1, 1, 1)],
    ),
    "funnel_totals": (
        ["account_id", "currency", "campaign_id", "spend", "conversations_started",
         "conversations_messaged", "qualified_leads", "purchases", "revenue",
         "cost_per_conversation", "cost_per_messaged_conversation", "cost_per_lead",
         "cost_per_sale", "click_to_message_rate"],
        # cmp_1: 18.70 over 5 conversations is 3.74 (the days' own costs,
        # 5.00 and 2.90, average to 3.95: see the test below).
        [("act_1", "USD", "cmp_1", D("18.7"), 5, 4, 2, 1, D("50"),
          D("3.74"), D("4.675"), D("9.35"), D("18.7"), 0.8),
         ("act_1", "USD", "cmp_2", D("1"), 1, 1, 0, 0, D("0"),
          D("1"), D("1"), None, None, 1.0),
         ("act_2", "BRL", "cmp_9", D("20"), 2, 1, 1, 1, D("100"),
          D("10"), D("20"), D("20"), D("20"), 0.5)],
    ),
    "costs_over_time": (
        ["day", "account_id", "currency", "spend", "cost_per_conversation", "cost_per_lead",
         "cost_per_sale"],
        [(D1, "act_2", "BRL", D("0"), D("0"), None, None),
         (D2, "act_1", "USD", D("10"), D("5"), D("10"), D("10")),
         (D2, "act_2", "BRL", D("20"), D("20"), D("20"), D("20")),
         (D3, "act_1", "USD", D("9.7"), D("2.425"), D("9.7"), None)],
    ),
    "unique_contacts": (
        ["account_id", "campaign_id", "ad_id", "contacts", "people_who_messaged"],
        [("act_1", "cmp_1", "ad_1", 5, 4),
         ("act_1", "cmp_2", "ad_2", 1, 1),
         ("act_2", "cmp_9", "ad_9", 2, 1)],
    ),
    # Not the sum of the rows above: uh_a came through two ads.
    "contacts_by_account": (
        ["account_id", "contacts", "people_who_messaged"],
        [("act_1", 5, 4), ("act_2", 2, 1)],
    ),
    "contacts_weekly": (
        ["account_id", "week", "contacts", "people_who_messaged"],
        [("act_1", D2, 5, 4), ("act_2", "2026-02-23", 1, 0), ("act_2", D2, 1, 1)],
    ),
    "response_times": (
        ["account_id", "conversations_messaged", "replied_le_5m", "replied_le_1h",
         "replied_le_24h", "replied_gt_24h", "not_replied", "avg_first_response_s"],
        [("act_1", 5, 1, 1, 0, 1, 2, 30220.0),
         ("act_2", 1, 1, 0, 0, 0, 0, 120.0)],
    ),
    "free_window": (
        ["account_id", "conversations_messaged", "outbound_in_free_window",
         "outbound_after_free_window", "outbound_billable", "over_messaged_conversations",
         "over_messaged_share"],
        [("act_1", 5, 7, 1, 3, 1, 0.2), ("act_2", 1, 1, 0, 0, 0, 0.0)],
    ),
    "funnel_to_sales": (
        ["account_id", "currency", "clicks", "started", "messaged", "replied", "leads",
         "sales", "sales_revenue"],
        [("act_1", "USD", 6, 6, 5, 3, 2, 1, D("50")),
         ("act_2", "BRL", 2, 2, 1, 1, 1, 1, D("100"))],
    ),
    "awaiting_reply": (
        ["account_id", "campaign_id", "ad_id", "user_hash", "first_inbound_at_time",
         "waiting_minutes"],
        None,  # depends on now(): checked in the test
    ),
    "capi_statuses": (
        ["account_id", "event_name", "status", "total_exports"],
        [("act_1", "LeadSubmitted", "no_click_id", 1), ("act_1", "LeadSubmitted", "sent", 1),
         ("act_1", "Purchase", "sent", 1), ("act_2", "Purchase", "rejected", 1)],
    ),
    "dead_letters": (
        ["day", "reason", "dead_letters"],
        [(D2, "malformed", 3), (D3, "unknown_type", 4)],
    ),
    # Over every partition; an id last seen after the range is not listed.
    "unknown_phone_numbers": (
        ["phone_number_id", "first_seen", "last_seen", "bodies"],
        [("406540352242922", f"{D1} 22:00:00", f"{D3} 09:30:00", 3)],
    ),
}


def example_queries() -> dict[str, str]:
    return {p.stem: p.read_text() for p in sorted(BI_DIR.glob("*.sql"))}


def panel_queries() -> list[tuple[str, str, str]]:
    """(panel title, docs/bi query it shows, its SQL) for every panel target."""
    dashboard = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            continue
        shows = re.search(r"docs/bi/(\w+)\.sql", panel["description"])
        assert shows, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["type"] == "grafana-clickhouse-datasource"
            out.append((panel["title"], shows.group(1), target["rawSql"]))
    return out


def check(db, name: str, sql: str, now: int) -> None:
    names, _, rows = db.query(sql)
    columns, expected = EXPECTED[name]
    assert names == columns, name
    if expected is None:  # awaiting_reply
        assert len(rows) == 1, rows
        row = rows[0]
        waited_from = datetime.fromtimestamp((now - 9 * MINUTE - 30000) // 1000, timezone.utc)
        assert row[:5] == ("act_1", "cmp_1", "ad_1", "uh_w", f"{waited_from:%Y-%m-%d %H:%M:%S}")
        assert row[5] in (9, 10), row  # 9.5 minutes when the rows were written
        return
    assert len(rows) == len(expected), (name, rows)
    for got, want in zip(rows, expected):
        assert len(got) == len(want), (name, got)
        for g, w in zip(got, want):
            if isinstance(w, float):
                assert g == pytest.approx(w, rel=1e-12), (name, got)
            else:
                assert g == w and type(g) is type(w), (name, got, want)


def test_every_example_query_has_its_expected_rows():
    assert set(example_queries()) == set(EXPECTED)


def test_example_queries(db):
    now = load(db)
    for name, sql in example_queries().items():
        check(db, name, sql.replace("{from}", FROM).replace("{to}", TO), now)


def test_dashboard_panels(db):
    now = load(db)
    panels = panel_queries()
    # Every query of docs/bi is on the dashboard.
    assert {shows for _, shows, _ in panels} == set(EXPECTED)
    for title, shows, sql in panels:
        check(db, shows, expand_macros(sql), now)


def test_ratios_come_from_sums_not_from_averaged_days(db):
    # The figure users got by averaging cost_per_conversation over days, and
    # the true one that funnel_totals.sql gives.
    load(db)
    _, _, rows = db.query(
        "SELECT avg(toFloat64(cost_per_conversation)) FROM funnel_daily "
        f"WHERE campaign_id = 'cmp_1' AND day BETWEEN '{D2}' AND '{D3}'"
    )
    assert rows[0][0] == pytest.approx(3.95)
    sql = example_queries()["funnel_totals"].replace("{from}", D2).replace("{to}", D3)
    _, _, rows = db.query(f"SELECT campaign_id, cost_per_conversation FROM ({sql}) "
                          "WHERE campaign_id = 'cmp_1'")
    assert rows == [("cmp_1", D("3.74"))]
