"""Proof of the ClickHouse schema (schemas/clickhouse/*.sql).

Every test loads all migrations, in order, into a fresh database, inserts a
small hand-made set of partial rows and checks the BI views row by row,
with their column names and types.

Backends:
  chdb    always: current ClickHouse in process (PyPI chdb-core).
  server  only when CLICKHOUSE_URL is set (e.g. http://127.0.0.1:18123/):
          a real server over HTTP, e.g. Debian's clickhouse-server 18.16.
          Each test creates and drops its own database there.

Run:  pip install -r tests/chdb/requirements.txt
      python -m pytest tests/chdb -q
      CLICKHOUSE_URL=http://127.0.0.1:18123/ python -m pytest tests/chdb -q
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = REPO / "schemas" / "clickhouse"
MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


# --------------------------------------------------------------------------
# Migrations, split the way the Rust runner splits them
# --------------------------------------------------------------------------

def migration_files() -> list[Path]:
    return sorted(p for p in MIGRATIONS_DIR.iterdir() if p.suffix == ".sql")


def split_statements(text: str) -> list[str]:
    """A statement ends with ';' at the end of a line; no other ';' exists."""
    out = []
    for chunk in re.split(r";[ \t]*(?:\r?\n|$)", text):
        code = "\n".join(
            line for line in chunk.splitlines() if not line.strip().startswith("--")
        ).strip()
        if code:
            out.append(chunk.strip())
    return out


# --------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------

_TSV_ESCAPES = {"t": "\t", "n": "\n", "r": "\r", "0": "\0", "b": "\b",
                "f": "\f", "\\": "\\", "'": "'", '"': '"'}


def _unescape(field: str) -> str:
    return re.sub(r"\\(.)", lambda m: _TSV_ESCAPES.get(m.group(1), m.group(1)), field)


def _convert(raw: str, typ: str):
    nullable = typ.startswith("Nullable(")
    if nullable:
        if raw == "\\N":
            return None
        typ = typ[len("Nullable("):-1]
    if re.fullmatch(r"U?Int\d+", typ):
        return int(raw)
    if typ.startswith("Decimal"):
        return Decimal(raw)
    if typ.startswith("Float"):
        return float(raw)
    return _unescape(raw)


def parse_tsv_with_names_and_types(text: str):
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        return [], [], []
    names = [_unescape(x) for x in lines[0].split("\t")]
    types = [_unescape(x) for x in lines[1].split("\t")]
    rows = []
    for line in lines[2:]:
        fields = line.split("\t")
        rows.append(tuple(_convert(f, t) for f, t in zip(fields, types)))
    return names, types, rows


class ChdbBackend:
    name = "chdb"

    def __init__(self):
        from chdb import session  # chdb-core

        self._session = session.Session()  # temporary, fresh per test
        self.database = "wafunnel_test"
        self._session.query(f"CREATE DATABASE {self.database}")
        self._session.query(f"USE {self.database}")

    def execute(self, sql: str) -> None:
        self._session.query(sql)

    def query(self, sql: str):
        res = self._session.query(sql, "TSVWithNamesAndTypes")
        return parse_tsv_with_names_and_types(res.bytes().decode())

    def close(self):
        self._session.close()


class ServerBackend:
    name = "server"

    def __init__(self, url: str):
        self.url = url if url.endswith("/") else url + "/"
        self.database = "wafunnel_test_" + uuid.uuid4().hex[:12]
        self._post("CREATE DATABASE " + self.database, database="default")

    def _post(self, sql: str, database: str | None = None, **settings) -> str:
        params = {"database": database or self.database, **settings}
        req = urllib.request.Request(
            self.url + "?" + urllib.parse.urlencode(params), data=sql.encode()
        )
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.read().decode()
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"{e.code}: {e.read().decode()}\n--- query:\n{sql}") from None

    def execute(self, sql: str) -> None:
        self._post(sql)

    def query(self, sql: str):
        return parse_tsv_with_names_and_types(
            self._post(sql + "\nFORMAT TSVWithNamesAndTypes")
        )

    def close(self):
        self._post("DROP DATABASE IF EXISTS " + self.database, database="default")


BACKENDS = ["chdb"]
if os.environ.get("CLICKHOUSE_URL"):
    BACKENDS.append("server")


@pytest.fixture(params=BACKENDS)
def db(request):
    if request.param == "chdb":
        backend = ChdbBackend()
    else:
        backend = ServerBackend(os.environ["CLICKHOUSE_URL"])
    try:
        yield backend
    finally:
        backend.close()


ADD_COLUMN = re.compile(r"^ALTER\s+TABLE\s+(\w+)\s+ADD\s+COLUMN\s+(\w+)\s", re.I | re.M)


def apply_migrations(db) -> None:
    # As the Rust runner: an ADD COLUMN whose column exists is skipped
    # (18.16 has no ADD COLUMN IF NOT EXISTS).
    for path in migration_files():
        for stmt in split_statements(path.read_text()):
            added = ADD_COLUMN.search(stmt)
            if added:
                _, _, rows = db.query(
                    "SELECT count() FROM system.columns WHERE database = currentDatabase() "
                    f"AND table = '{added.group(1)}' AND name = '{added.group(2)}'"
                )
                if rows[0][0] > 0:
                    continue
            db.execute(stmt)


@pytest.fixture
def loaded(db):
    apply_migrations(db)
    insert_fixture_rows(db)
    return db


# --------------------------------------------------------------------------
# Fixture data: hand-made partial rows, as the sessionizer would write them
# --------------------------------------------------------------------------

D2, D3, D4, D5 = "2026-03-02", "2026-03-03", "2026-03-04", "2026-03-05"
T0 = 1772445600000  # 2026-03-02T10:00:00Z

FUNNEL_COLS = (
    "account_id, ad_id, day, partition, clicks, inbound_messages, "
    "conversations_started, conversations_messaged, replied, replied_le_5m, "
    "replied_le_1h, replied_le_24h, replied_gt_24h, sum_first_response_ms, "
    "outbound_in_free_window, outbound_after_free_window, "
    "over_messaged_conversations, qualified_leads, purchases, revenue, spend, "
    "impressions, reported_conversations, version, outbound_billable, currency"
)

# Each account's currency, as sessionize writes it from configuration.
CURRENCY = {"act_1": "USD", "act_2": "BRL"}


def funnel(account, ad, day, partition, version, *, clicks=0, inbound=0, started=0,
           messaged=0, replied=0, le_5m=0, le_1h=0, le_24h=0, gt_24h=0, sum_frm=0,
           out_in=0, out_after=0, over=0, qualified=0, purchases=0, revenue="0",
           spend="0", impressions=0, reported=0, billable=0) -> str:
    return (
        f"('{account}', '{ad}', '{day}', {partition}, {clicks}, {inbound}, {started}, "
        f"{messaged}, {replied}, {le_5m}, {le_1h}, {le_24h}, {gt_24h}, {sum_frm}, "
        f"{out_in}, {out_after}, {over}, {qualified}, {purchases}, {revenue}, {spend}, "
        f"{impressions}, {reported}, {version}, {billable}, '{CURRENCY[account]}')"
    )


CONTACTS_COLS = (
    "account_id, day, partition, unique_contacts, organic_inbound_messages, "
    "organic_contacts, unattributed_leads, unattributed_purchases, version, messaging_contacts, "
    "currency"
)

ADS_COLS = "account_id, ad_id, partition, campaign_id, adset_id, named_at, named_by, version"

CONV_COLS = (
    "account_id, ad_id, user_hash, started_at, last_activity_at, clicks, first_click_at, "
    "inbound_messages, first_inbound_at, outbound_messages, first_reply_at, "
    "first_response_ms, response_bucket, free_window_ends_at, outbound_in_free_window, "
    "outbound_after_free_window, followups_in_free_window, over_messaged, qualified_at, "
    "purchases, revenue, first_purchase_at, time_to_close_ms, partition, version, is_deleted, "
    "click_id, start_day, currency"
)

H72 = 72 * 3600 * 1000


def insert_fixture_rows(db) -> None:
    # No background merges: every INSERT stays its own part, so the views are
    # proven to apply FINAL themselves (test_views_after_merges merges them).
    for table in ("funnel_partial", "contacts_partial", "ads", "conversation_rows",
                  "spend_snapshots", "late_events", "record_accounting"):
        db.execute(f"SYSTEM STOP MERGES {table}")

    def ins(table, cols, *rows):
        # One INSERT, one part: later inserts of older versions must still lose.
        db.execute(f"INSERT INTO {table} ({cols}) VALUES " + ", ".join(rows))

    # ---- funnel_partial
    # ad_1 / D2, partition 0: version 5 is current; version 3 arrives later
    # (a replay) and must not win.
    ins("funnel_partial", FUNNEL_COLS, funnel(
        "act_1", "ad_1", D2, 0, 5, clicks=3, inbound=4, started=2, messaged=2,
        replied=2, le_5m=1, le_1h=1, sum_frm=300000 + 1800000, out_in=4, out_after=1,
        over=0, qualified=1, purchases=1, revenue="49.9", billable=2))
    ins("funnel_partial", FUNNEL_COLS, funnel(
        "act_1", "ad_1", D2, 0, 3, clicks=2, inbound=1, started=1, messaged=1,
        replied=1, le_5m=1, sum_frm=300000, out_in=1, billable=9))
    # ad_1 / D2, partition 1: one more conversation (never messaged). The
    # spend columns of funnel_partial are not read: spend comes from the
    # snapshots below.
    ins("funnel_partial", FUNNEL_COLS, funnel(
        "act_1", "ad_1", D2, 1, 2, clicks=1, started=1, spend="777",
        impressions=777, reported=777))
    # ad_1 / D3, partition 1: counted at version 6, retracted (all zero) at 7.
    ins("funnel_partial", FUNNEL_COLS, funnel(
        "act_1", "ad_1", D3, 1, 6, clicks=1, started=1, messaged=1))
    ins("funnel_partial", FUNNEL_COLS, funnel("act_1", "ad_1", D3, 1, 7))
    # ad_2 / D2: counted at version 1, then retracted at version 4 -> no row.
    ins("funnel_partial", FUNNEL_COLS, funnel(
        "act_1", "ad_2", D2, 0, 1, clicks=1, inbound=1, started=1, messaged=1))
    ins("funnel_partial", FUNNEL_COLS, funnel("act_1", "ad_2", D2, 0, 4))
    # ad_3 / D5: two partitions, decimal truncation (0.0002 / 3 -> 0.0000).
    ins("funnel_partial", FUNNEL_COLS,
        funnel("act_1", "ad_3", D5, 0, 1, clicks=2, inbound=2, started=2, messaged=2,
               replied=1, gt_24h=1, sum_frm=90000000, out_in=1, out_after=2, over=1,
               billable=1),
        funnel("act_1", "ad_3", D5, 1, 1, clicks=1, inbound=3, started=1, messaged=1,
               replied=1, le_24h=1, sum_frm=7200000, out_in=5, purchases=2,
               revenue="100.0001", qualified=1, billable=1))
    # act_2 / ad_9: an ad whose campaign and ad set were never named.
    ins("funnel_partial", FUNNEL_COLS, funnel(
        "act_2", "ad_9", D2, 0, 1, clicks=1, inbound=1, started=1, messaged=1))

    # ---- ads: ad_1's hierarchy changed over time, on two partitions.
    ins("ads", ADS_COLS, f"('act_1', 'ad_1', 0, 'cmp_1', 'as_1', {T0}, 'c-1', 1)")
    # Renamed: same named_at on both partitions, the larger event id wins the
    # tie. Winner on partition 1 here, on partition 0 for ad_3 below, so that
    # no read order can make a tie-blind argMax pass.
    ins("ads", ADS_COLS, f"('act_1', 'ad_1', 0, 'cmp_3', 'as_3', {T0 + 3000}, 'c-4', 2)")
    ins("ads", ADS_COLS, f"('act_1', 'ad_1', 1, 'cmp_2', 'as_2', {T0 + 3000}, 'c-5', 3)")
    # An older version on partition 1 with a later named_at: replaced, so it
    # must not be seen (FINAL is applied before argMax).
    ins("ads", ADS_COLS, f"('act_1', 'ad_1', 1, 'cmp_9', 'as_9', {T0 + 9000}, 's-9', 2)")
    # Partition 2 named ad_1 earlier, with a larger event id: time comes first.
    ins("ads", ADS_COLS, f"('act_1', 'ad_1', 2, 'cmp_7', 'as_7', {T0 + 1000}, 'z-7', 1)")
    ins("ads", ADS_COLS, f"('act_1', 'ad_3', 1, 'cmp_8', 'as_8', {T0 - 1000}, 'c-0', 1)")
    ins("ads", ADS_COLS, f"('act_1', 'ad_3', 0, 'cmp_1', 'as_1', {T0 - 1000}, 'c-0z', 1)")
    ins("ads", ADS_COLS, f"('act_1', 'ad_2', 0, 'cmp_1', 'as_2', {T0}, 'c-2', 1)")

    # ---- contacts_partial
    ins("contacts_partial", CONTACTS_COLS, f"('act_1', '{D2}', 0, 2, 1, 1, 0, 0, 3, 2, 'USD')")
    ins("contacts_partial", CONTACTS_COLS, f"('act_1', '{D2}', 0, 5, 5, 5, 5, 5, 1, 5, 'USD')")  # replay of v1
    ins("contacts_partial", CONTACTS_COLS, f"('act_1', '{D2}', 1, 1, 0, 0, 1, 2, 2, 1, 'USD')")
    ins("contacts_partial", CONTACTS_COLS, f"('act_1', '{D3}', 0, 1, 0, 0, 0, 0, 4, 1, 'USD')")
    ins("contacts_partial", CONTACTS_COLS, f"('act_1', '{D3}', 0, 0, 0, 0, 0, 0, 5, 0, 'USD')")  # retraction
    ins("contacts_partial", CONTACTS_COLS, f"('act_2', '{D4}', 1, 0, 3, 2, 0, 0, 1, 0, 'BRL')")
    # Purchases by their own day, on two partitions.
    ins("contacts_partial", CONTACTS_COLS + ", purchases_on_day, revenue_on_day",
        f"('act_1', '{D3}', 2, 0, 0, 0, 0, 0, 1, 0, 'USD', 1, 10)",
        f"('act_1', '{D3}', 3, 0, 0, 0, 0, 0, 1, 0, 'USD', 1, 49.9)")

    # ---- conversation_rows
    fi = T0 + 60000
    conv_a_v1 = (
        f"('act_1', 'ad_1', 'uh_a', {T0}, {fi}, 1, {T0}, 1, {fi}, 0, NULL, NULL, 'none', "
        f"{fi + H72}, 0, 0, 0, 0, NULL, 0, 0, NULL, NULL, 0, 1, 0, 'ARAkx', '{D2}', 'USD')"
    )
    conv_a_v2 = (
        f"('act_1', 'ad_1', 'uh_a', {T0}, {fi + 600000}, 1, {T0}, 2, {fi}, 5, {fi + 120000}, "
        f"120000, 'le_5m', {fi + H72}, 4, 1, 3, 1, {T0 + 7200000}, 1, 49.9, "
        f"{T0 + 86400000}, 86400000, 0, 4, 0, 'ARAkx', '{D2}', 'USD')"
    )
    conv_b = (
        f"('act_1', 'ad_1', 'uh_b', {T0 + 5000}, {T0 + 5000}, 1, {T0 + 5000}, 0, NULL, 0, "
        f"NULL, NULL, NULL, NULL, 0, 0, 0, 0, NULL, 0, 0, NULL, NULL, 1, 2, 0, NULL, '{D3}', 'USD')"
    )
    conv_c_live = (
        f"('act_1', 'ad_2', 'uh_c', {T0}, {T0}, 1, {T0}, 0, NULL, 0, NULL, NULL, NULL, NULL, "
        f"0, 0, 0, 0, NULL, 0, 0, NULL, NULL, 0, 1, 0, NULL, '{D2}', 'USD')"
    )
    conv_c_deleted = conv_c_live.replace(", 0, 1, 0, NULL,", ", 0, 2, 1, NULL,")
    assert conv_c_deleted != conv_c_live
    ins("conversation_rows", CONV_COLS, conv_a_v2)
    ins("conversation_rows", CONV_COLS, conv_a_v1)  # replayed older version
    ins("conversation_rows", CONV_COLS, conv_b, conv_c_live)
    ins("conversation_rows", CONV_COLS, conv_c_deleted)

    # ---- spend_snapshots: the winning snapshot per partition; over
    # partitions the latest (event_time, event_id) wins.
    spend_cols = ("account_id, ad_id, date, partition, event_id, event_time, spend, currency, "
                  "impressions, clicks, reported_conversations, version")
    ins("spend_snapshots", spend_cols,
        f"('act_1', 'ad_1', '{D2}', 1, 's-1', {T0 + 86400000}, 10, 'USD', 1000, 15, 2, 1)")
    # An earlier snapshot of the same ad and date on another partition loses,
    # and so does one at the same time with a smaller event id.
    ins("spend_snapshots", spend_cols,
        f"('act_1', 'ad_1', '{D2}', 0, 's-0', {T0}, 99, 'USD', 9, 9, 9, 1)",
        f"('act_1', 'ad_1', '{D2}', 2, 's-0', {T0 + 86400000}, 98, 'USD', 9, 9, 9, 1)")
    # Replaced on its partition by a later version: never seen.
    ins("spend_snapshots", spend_cols,
        f"('act_1', 'ad_1', '{D4}', 1, 's-4', {T0}, 55, 'USD', 55, 0, 55, 1)")
    ins("spend_snapshots", spend_cols,
        f"('act_1', 'ad_1', '{D4}', 1, 's-5', {T0 + 1}, 0.0001, 'USD', 10, 0, 0, 2)")
    ins("spend_snapshots", spend_cols,
        f"('act_1', 'ad_3', '{D5}', 0, 's-6', {T0}, 0.0002, 'USD', 0, 0, 0, 1)")

    # Other tables the pipeline writes: they must accept its rows.
    ins("late_events",
        "topic, partition, offset, account_id, event_id, event_type, event_time, "
        "watermark, reason, raw",
        f"('events', 0, 42, 'act_1', 'x-1', 'message_in', {T0}, {T0 + 2 * 86400000}, "
        f"'late', '{{\"event_id\":\"x-1\"}}')")
    ins("record_accounting", "stage, topic, partition, outcome, records, version",
        "('sessionize', 'events', 0, 'applied', 17, 1)",
        "('sessionize', 'events', 0, 'late', 1, 1)")


# --------------------------------------------------------------------------
# Expected views
# --------------------------------------------------------------------------

FUNNEL_DAILY_COLUMNS = [
    ("account_id", "String"),
    ("campaign_id", "String"),
    ("adset_id", "String"),
    ("ad_id", "String"),
    ("day", "Date"),
    ("clicks", "Int64"),
    ("inbound_messages", "Int64"),
    ("conversations_started", "Int64"),
    ("conversations_messaged", "Int64"),
    ("ghost_conversations", "Int64"),
    ("replied", "Int64"),
    ("replied_le_5m", "Int64"),
    ("replied_le_1h", "Int64"),
    ("replied_le_24h", "Int64"),
    ("replied_gt_24h", "Int64"),
    ("sum_first_response_ms", "Int64"),
    ("outbound_in_free_window", "Int64"),
    ("outbound_after_free_window", "Int64"),
    ("over_messaged_conversations", "Int64"),
    ("qualified_leads", "Int64"),
    ("purchases", "Int64"),
    ("revenue", "Decimal(18, 4)"),
    ("spend", "Decimal(18, 4)"),
    ("impressions", "Int64"),
    ("reported_conversations", "Int64"),
    ("cost_per_conversation", "Nullable(Decimal(18, 4))"),
    ("cost_per_messaged_conversation", "Nullable(Decimal(18, 4))"),
    ("click_to_message_rate", "Nullable(Float64)"),
    ("outbound_billable", "Int64"),
    ("currency", "String"),
]

D = Decimal
FUNNEL_DAILY_ROWS = [
    # account, campaign, adset, ad, day,
    # clicks, inbound, started, messaged, ghost, replied, le_5m, le_1h, le_24h, gt_24h,
    # sum_frm, out_in, out_after, over, qualified, purchases, revenue, spend,
    # impressions, reported, cost_per_conv, cost_per_messaged, rate, billable, currency
    ("act_1", "cmp_2", "as_2", "ad_1", D2,
     4, 4, 3, 2, 1, 2, 1, 1, 0, 0,
     2100000, 4, 1, 0, 1, 1, D("49.9"), D("10"),
     1000, 2, D("3.3333"), D("5"), 2 / 3, 2, "USD"),
    ("act_1", "cmp_2", "as_2", "ad_1", D4,
     0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
     0, 0, 0, 0, 0, 0, D("0"), D("0.0001"),
     10, 0, None, None, None, 0, "USD"),
    ("act_1", "cmp_1", "as_1", "ad_3", D5,
     3, 5, 3, 3, 0, 2, 0, 0, 1, 1,
     97200000, 6, 2, 1, 1, 2, D("100.0001"), D("0.0002"),
     0, 0, D("0"), D("0"), 1.0, 2, "USD"),
    ("act_2", "", "", "ad_9", D2,
     1, 1, 1, 1, 0, 0, 0, 0, 0, 0,
     0, 0, 0, 0, 0, 0, D("0"), D("0"),
     0, 0, D("0"), D("0"), 1.0, 0, "BRL"),
]

CONTACTS_DAILY_COLUMNS = [
    ("account_id", "String"),
    ("day", "Date"),
    ("unique_contacts", "Int64"),
    ("organic_inbound_messages", "Int64"),
    ("organic_contacts", "Int64"),
    ("unattributed_leads", "Int64"),
    ("unattributed_purchases", "Int64"),
    ("messaging_contacts", "Int64"),
    ("currency", "String"),
    ("purchases_on_day", "Int64"),
    ("revenue_on_day", "Decimal(18, 4)"),
]

CONTACTS_DAILY_ROWS = [
    ("act_1", D2, 3, 1, 1, 1, 2, 3, "USD", 0, D("0")),
    # Only purchases that day (of conversations started before): a row.
    ("act_1", D3, 0, 0, 0, 0, 0, 0, "USD", 2, D("59.9")),
    ("act_2", D4, 0, 3, 2, 0, 0, 0, "BRL", 0, D("0")),
]

CONVERSATIONS_COLUMNS = [
    ("account_id", "String"),
    ("ad_id", "String"),
    ("user_hash", "String"),
    ("started_at", "Int64"),
    ("last_activity_at", "Int64"),
    ("clicks", "UInt32"),
    ("first_click_at", "Nullable(Int64)"),
    ("inbound_messages", "UInt32"),
    ("first_inbound_at", "Nullable(Int64)"),
    ("outbound_messages", "UInt32"),
    ("first_reply_at", "Nullable(Int64)"),
    ("first_response_ms", "Nullable(Int64)"),
    ("response_bucket", "Nullable(String)"),
    ("free_window_ends_at", "Nullable(Int64)"),
    ("outbound_in_free_window", "UInt32"),
    ("outbound_after_free_window", "UInt32"),
    ("followups_in_free_window", "UInt32"),
    ("over_messaged", "UInt8"),
    ("qualified_at", "Nullable(Int64)"),
    ("purchases", "UInt32"),
    ("revenue", "Decimal(18, 4)"),
    ("first_purchase_at", "Nullable(Int64)"),
    ("time_to_close_ms", "Nullable(Int64)"),
    ("click_id", "Nullable(String)"),
    ("start_day", "Date"),
    ("campaign_id", "String"),
    ("adset_id", "String"),
    ("currency", "String"),
    ("started_at_time", "DateTime('UTC')"),
    ("last_activity_at_time", "DateTime('UTC')"),
    ("first_inbound_at_time", "Nullable(DateTime('UTC'))"),
    ("first_reply_at_time", "Nullable(DateTime('UTC'))"),
    ("qualified_at_time", "Nullable(DateTime('UTC'))"),
    ("first_purchase_at_time", "Nullable(DateTime('UTC'))"),
]

_FI = T0 + 60000
CONVERSATIONS_ROWS = [
    ("act_1", "ad_1", "uh_a", T0, _FI + 600000, 1, T0, 2, _FI, 5, _FI + 120000,
     120000, "le_5m", _FI + H72, 4, 1, 3, 1, T0 + 7200000, 1, D("49.9"),
     T0 + 86400000, 86400000, "ARAkx",
     D2, "cmp_2", "as_2", "USD", "2026-03-02 10:00:00", "2026-03-02 10:11:00",
     "2026-03-02 10:01:00", "2026-03-02 10:03:00", "2026-03-02 12:00:00",
     "2026-03-03 10:00:00"),
    # start_day is the day sessionize wrote (the account's time zone), not
    # the UTC day of started_at.
    ("act_1", "ad_1", "uh_b", T0 + 5000, T0 + 5000, 1, T0 + 5000, 0, None, 0, None,
     None, None, None, 0, 0, 0, 0, None, 0, D("0"), None, None, None,
     D3, "cmp_2", "as_2", "USD", "2026-03-02 10:00:05", "2026-03-02 10:00:05",
     None, None, None, None),
]

# The tables' columns: the contract with the Rust writer.
TABLE_COLUMNS = {
    "schema_migrations": "version UInt32, name String, checksum String, applied_at Int64",
    "conversation_rows": (
        "account_id String, ad_id String, user_hash String, started_at Int64, "
        "last_activity_at Int64, clicks UInt32, first_click_at Nullable(Int64), "
        "inbound_messages UInt32, first_inbound_at Nullable(Int64), outbound_messages UInt32, "
        "first_reply_at Nullable(Int64), first_response_ms Nullable(Int64), "
        "response_bucket Nullable(String), free_window_ends_at Nullable(Int64), "
        "outbound_in_free_window UInt32, outbound_after_free_window UInt32, "
        "followups_in_free_window UInt32, over_messaged UInt8, qualified_at Nullable(Int64), "
        "purchases UInt32, revenue Decimal(18, 4), first_purchase_at Nullable(Int64), "
        "time_to_close_ms Nullable(Int64), partition UInt32, version UInt64, is_deleted UInt8, "
        "click_id Nullable(String), start_day Date, currency String"
    ),
    "funnel_partial": (
        "account_id String, ad_id String, day Date, partition UInt32, clicks Int64, "
        "inbound_messages Int64, conversations_started Int64, conversations_messaged Int64, "
        "replied Int64, replied_le_5m Int64, replied_le_1h Int64, replied_le_24h Int64, "
        "replied_gt_24h Int64, sum_first_response_ms Int64, outbound_in_free_window Int64, "
        "outbound_after_free_window Int64, over_messaged_conversations Int64, "
        "qualified_leads Int64, purchases Int64, revenue Decimal(18, 4), "
        "spend Decimal(18, 4), impressions Int64, reported_conversations Int64, version UInt64, "
        "outbound_billable Int64, currency String"
    ),
    "contacts_partial": (
        "account_id String, day Date, partition UInt32, unique_contacts Int64, "
        "organic_inbound_messages Int64, organic_contacts Int64, unattributed_leads Int64, "
        "unattributed_purchases Int64, version UInt64, messaging_contacts Int64, "
        "currency String, purchases_on_day Int64, revenue_on_day Decimal(18, 4)"
    ),
    "ads": (
        "account_id String, ad_id String, partition UInt32, campaign_id String, "
        "adset_id String, named_at Int64, named_by String, version UInt64"
    ),
    "spend_snapshots": (
        "account_id String, ad_id String, date Date, partition UInt32, event_id String, "
        "event_time Int64, spend Decimal(18, 4), currency String, impressions Int64, "
        "clicks Int64, reported_conversations Int64, version UInt64"
    ),
    "late_events": (
        "topic String, partition UInt32, offset Int64, account_id String, event_id String, "
        "event_type String, event_time Int64, watermark Int64, reason String, raw String"
    ),
    "record_accounting": (
        "stage String, topic String, partition UInt32, outcome String, records UInt64, "
        "version UInt64"
    ),
    "record_outcomes": (
        "stage String, source_topic String, source_partition UInt32, worker_topic String, "
        "worker_partition UInt32, outcome String, records UInt64, version UInt64"
    ),
    "check_canaries": "canary_id String, partition UInt32, offset Int64, event_time Int64",
    "capi_exports": (
        "export_id String, account_id String, day Date, event_name String, event_time Int64, "
        "status String, error_code Nullable(String), error_message Nullable(String), "
        "attempts UInt32, updated_at Int64, version UInt64, export String"
    ),
    "dead_letter_reasons": (
        "worker_topic String, worker_partition UInt32, reason String, day Date, "
        "records UInt64, version UInt64"
    ),
    "unknown_phone_number_counts": (
        "worker_topic String, worker_partition UInt32, phone_number_id String, "
        "first_seen DateTime('UTC'), last_seen DateTime('UTC'), bodies UInt64, version UInt64"
    ),
}

TABLE_KEYS = {
    "schema_migrations": ("MergeTree", "version"),
    "conversation_rows": ("ReplacingMergeTree", "account_id, ad_id, user_hash, started_at"),
    "funnel_partial": ("ReplacingMergeTree", "account_id, ad_id, day, partition"),
    "contacts_partial": ("ReplacingMergeTree", "account_id, day, partition"),
    "ads": ("ReplacingMergeTree", "account_id, ad_id, partition"),
    "spend_snapshots": ("ReplacingMergeTree", "account_id, ad_id, date, partition"),
    "late_events": ("ReplacingMergeTree", "topic, partition, offset"),
    "record_accounting": ("ReplacingMergeTree", "stage, topic, partition, outcome"),
    "record_outcomes": ("ReplacingMergeTree",
                        "stage, source_topic, source_partition, worker_topic, worker_partition, outcome"),
    "check_canaries": ("ReplacingMergeTree", "canary_id, partition"),
    "capi_exports": ("ReplacingMergeTree", "export_id"),
    "dead_letter_reasons": ("ReplacingMergeTree",
                            "worker_topic, worker_partition, reason, day"),
    "unknown_phone_number_counts": ("ReplacingMergeTree",
                                    "worker_topic, worker_partition, phone_number_id"),
}


def _select_view(db, view, order_by):
    names, types, rows = db.query(f"SELECT * FROM {view} ORDER BY {order_by}")
    return list(zip(names, types)), rows


def _assert_rows(actual, expected):
    assert len(actual) == len(expected), actual
    for got, want in zip(actual, expected):
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            if isinstance(w, float):
                assert g == pytest.approx(w, rel=1e-12), (i, got)
            else:
                assert g == w and type(g) is type(w), (i, g, w, got)


# --------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------

def test_migration_files_are_well_formed():
    files = migration_files()
    assert files, "no migrations"
    numbers = []
    for path in files:
        m = MIGRATION_NAME.match(path.name)
        assert m, path.name
        numbers.append(int(m.group(1)))
        text = path.read_text()
        # The runner's split rule: ';' only at the end of a line.
        for lineno, line in enumerate(text.splitlines(), 1):
            if ";" in line:
                assert line.rstrip().endswith(";") and line.count(";") == 1, (path.name, lineno)
                assert not line.lstrip().startswith("--"), (path.name, lineno)
        # Nothing but whitespace after the last statement.
        assert text.rstrip().endswith(";"), path.name
        assert split_statements(text), path.name
        # Things that 18.16 does not know.
        upper = text.upper()
        for banned in ("DATETIME64", "CODEC", " TTL ", "IS_DELETED)", "ADD COLUMN IF NOT EXISTS"):
            assert banned not in upper, (path.name, banned)
    assert numbers == list(range(1, len(files) + 1)), numbers


def test_migrations_are_rerunnable(db):
    apply_migrations(db)
    apply_migrations(db)  # IF NOT EXISTS everywhere
    names, _, rows = db.query(
        "SELECT name, engine FROM system.tables WHERE database = currentDatabase() ORDER BY name"
    )
    assert dict(rows) == {
        "ads": "ReplacingMergeTree",
        "awaiting_reply": "View",
        "revenue_daily": "View",
        "capi_daily": "View",
        "capi_exports": "ReplacingMergeTree",
        "check_canaries": "ReplacingMergeTree",
        "contacts_daily": "View",
        "contacts_partial": "ReplacingMergeTree",
        "conversation_rows": "ReplacingMergeTree",
        "conversations": "View",
        "dead_letter_reasons": "ReplacingMergeTree",
        "dead_letters_daily": "View",
        "funnel_daily": "View",
        "funnel_partial": "ReplacingMergeTree",
        "input_accounting": "View",
        "record_outcomes": "ReplacingMergeTree",
        "late_events": "ReplacingMergeTree",
        "record_accounting": "ReplacingMergeTree",
        "schema_migrations": "MergeTree",
        "spend_snapshots": "ReplacingMergeTree",
        "unknown_phone_number_counts": "ReplacingMergeTree",
        "unknown_phone_numbers": "View",
    }


def test_table_columns_and_keys(db):
    apply_migrations(db)
    for table, spec in TABLE_COLUMNS.items():
        _, _, rows = db.query(f"DESCRIBE TABLE {table}")
        assert ", ".join(f"{r[0]} {r[1]}" for r in rows) == spec, table
        _, _, rows = db.query(
            "SELECT engine, sorting_key FROM system.tables "
            f"WHERE database = currentDatabase() AND name = '{table}'"
        )
        assert rows == [TABLE_KEYS[table]], table


def test_funnel_daily(loaded):
    columns, rows = _select_view(loaded, "funnel_daily", "account_id, ad_id, day")
    assert columns == FUNNEL_DAILY_COLUMNS
    _assert_rows(rows, FUNNEL_DAILY_ROWS)


def test_funnel_daily_with_join_use_nulls(loaded):
    # A BI data source may run with join_use_nulls = 1: an ad without a
    # hierarchy must still show '' and every type must stay the same.
    names, types, rows = loaded.query(
        "SELECT * FROM funnel_daily ORDER BY account_id, ad_id, day SETTINGS join_use_nulls = 1"
    )
    assert list(zip(names, types)) == FUNNEL_DAILY_COLUMNS
    _assert_rows(rows, FUNNEL_DAILY_ROWS)


def test_contacts_daily(loaded):
    columns, rows = _select_view(loaded, "contacts_daily", "account_id, day")
    assert columns == CONTACTS_DAILY_COLUMNS
    _assert_rows(rows, CONTACTS_DAILY_ROWS)


def test_conversations(loaded):
    columns, rows = _select_view(loaded, "conversations", "account_id, ad_id, user_hash, started_at")
    assert columns == CONVERSATIONS_COLUMNS
    _assert_rows(rows, CONVERSATIONS_ROWS)


def test_views_after_merges(loaded):
    # OPTIMIZE ... FINAL collapses the parts: the views must not change.
    for table in ("funnel_partial", "contacts_partial", "ads", "conversation_rows"):
        loaded.execute(f"SYSTEM START MERGES {table}")
        loaded.execute(f"OPTIMIZE TABLE {table} FINAL")
    _, _, rows = loaded.query(
        "SELECT table, count() FROM system.parts WHERE database = currentDatabase() "
        "AND active AND table IN ('funnel_partial', 'contacts_partial', 'ads', "
        "'conversation_rows') GROUP BY table ORDER BY table"
    )
    assert [n for _, n in rows] == [1, 1, 1, 1], rows
    _assert_rows(_select_view(loaded, "funnel_daily", "account_id, ad_id, day")[1],
                 FUNNEL_DAILY_ROWS)
    _assert_rows(_select_view(loaded, "contacts_daily", "account_id, day")[1],
                 CONTACTS_DAILY_ROWS)
    _assert_rows(_select_view(loaded, "conversations",
                              "account_id, ad_id, user_hash, started_at")[1],
                 CONVERSATIONS_ROWS)


def test_bi_queries(loaded):
    # What a dashboard asks: the views compose with filters and grouping.
    _, _, rows = loaded.query(
        "SELECT campaign_id, sum(clicks) AS clicks, sum(spend) AS spend "
        "FROM funnel_daily WHERE day >= '2026-03-01' AND account_id = 'act_1' "
        "GROUP BY campaign_id ORDER BY campaign_id"
    )
    assert rows == [("cmp_1", 3, D("0.0002")), ("cmp_2", 4, D("10.0001"))]

    _, _, rows = loaded.query(
        "SELECT day, sum(conversations_started) AS started, sum(ghost_conversations) AS ghosts "
        "FROM funnel_daily WHERE day BETWEEN toDate('2026-03-02') AND toDate('2026-03-04') "
        "GROUP BY day ORDER BY day"
    )
    assert rows == [(D2, 4, 1), (D4, 0, 0)]

    # Unique contacts over a range: distinct users over conversations.
    _, _, rows = loaded.query(
        "SELECT account_id, uniqExact(user_hash) AS contacts, count() AS n, sum(revenue) AS revenue "
        "FROM conversations WHERE started_at >= 1772409600000 GROUP BY account_id"
    )
    assert rows == [("act_1", 2, 2, D("49.9"))]

    _, _, rows = loaded.query(
        "SELECT response_bucket, count() AS n FROM conversations "
        "GROUP BY response_bucket ORDER BY response_bucket"
    )
    assert rows == [("le_5m", 1), (None, 1)]

    # People who messaged over a range (the marketer's "52"): distinct users
    # of messaged conversations, never a sum of messaging_contacts over days.
    _, _, rows = loaded.query(
        "SELECT account_id, uniqExact(user_hash) AS people, sum(inbound_messages) AS messages "
        "FROM conversations WHERE inbound_messages > 0 GROUP BY account_id"
    )
    assert rows == [("act_1", 1, 2)]


def test_decimal_division_truncates_toward_zero(db):
    # The rule behind cost_per_*: Decimal(18, 4) / integer, truncated.
    _, types, rows = db.query(
        "SELECT toDecimal64('10', 4) / toInt64(3) AS a, toDecimal64('0.0001', 4) / toInt64(3) AS b, "
        "toDecimal64('-10', 4) / toInt64(3) AS c, toDecimal64('2', 4) / toInt64(3) AS d"
    )
    assert types == ["Decimal(18, 4)"] * 4
    assert rows == [(D("3.3333"), D("0"), D("-3.3333"), D("0.6666"))]


def test_other_tables_replace_on_key(loaded):
    loaded.execute(
        "INSERT INTO late_events (topic, partition, offset, account_id, event_id, event_type, "
        f"event_time, watermark, reason, raw) VALUES ('events', 0, 42, 'act_1', 'x-1', "
        f"'message_in', {T0}, {T0 + 2 * 86400000}, 'late', 'replayed')"
    )
    _, _, rows = loaded.query("SELECT count() FROM late_events FINAL")
    assert rows == [(1,)]
    loaded.execute(
        "INSERT INTO record_accounting (stage, topic, partition, outcome, records, version) "
        "VALUES ('sessionize', 'events', 0, 'applied', 20, 2), "
        "('sessionize', 'events', 0, 'late', 0, 0)"
    )
    _, _, rows = loaded.query(
        "SELECT outcome, records FROM record_accounting FINAL ORDER BY outcome"
    )
    assert rows == [("applied", 20), ("late", 1)]


def test_input_accounting_adds_every_outcome_of_every_worker(loaded):
    loaded.execute(
        "INSERT INTO record_outcomes (stage, source_topic, source_partition, worker_topic, "
        "worker_partition, outcome, records, version) VALUES "
        "('sessionize', 'raw', 0, 'events', 0, 'applied', 7, 10), "
        "('sessionize', 'raw', 0, 'events', 0, 'applied', 5, 4), "
        "('sessionize', 'raw', 0, 'events', 1, 'applied', 3, 2), "
        "('sessionize', 'raw', 0, 'events', 1, 'duplicate', 2, 2), "
        "('sessionize', 'raw', 1, 'events', 1, 'late', 1, 2), "
        "('dead_letter', 'raw', 1, 'dead', 0, 'dead_lettered', 4, 9), "
        "('sessionize', 'raw', 1, 'events', 0, 'ignored', 6, 3)"
    )
    names, _, rows = loaded.query("SELECT * FROM input_accounting ORDER BY source_topic, source_partition")
    assert names == ["source_topic", "source_partition", "applied", "duplicate", "late",
                     "dead_lettered", "records", "ignored"]
    assert rows == [("raw", 0, 10, 2, 0, 0, 12, 0), ("raw", 1, 0, 0, 1, 4, 11, 6)]


CAPI_COLS = (
    "export_id, account_id, day, event_name, event_time, status, error_code, "
    "error_message, attempts, updated_at, version"
)


def test_capi_daily_counts_each_export_once_with_its_latest_status(db):
    apply_migrations(db)
    # e1 was sent, then replayed after a crash and sent again (a later
    # version); e2 was rejected; e3 was first written as rejected, then
    # sent on a replay; e4 never had a click id; e5 is another day.
    db.execute(
        f"INSERT INTO capi_exports ({CAPI_COLS}) VALUES "
        f"('e1', 'act_1', '{D2}', 'Purchase', {T0}, 'sent', NULL, NULL, 1, 10, 10), "
        f"('e2', 'act_1', '{D2}', 'Purchase', {T0}, 'rejected', '100', 'Invalid parameter', 1, 11, 11), "
        f"('e3', 'act_1', '{D2}', 'LeadSubmitted', {T0}, 'rejected', '2', 'Temporary', 2, 12, 12), "
        f"('e4', 'act_1', '{D2}', 'LeadSubmitted', {T0}, 'no_click_id', NULL, NULL, 0, 13, 13), "
        f"('e5', 'act_2', '{D3}', 'LeadSubmitted', {T0}, 'outside_window', NULL, NULL, 0, 14, 14)"
    )
    db.execute(
        f"INSERT INTO capi_exports ({CAPI_COLS}) VALUES "
        f"('e1', 'act_1', '{D2}', 'Purchase', {T0}, 'sent', NULL, NULL, 1, 20, 20), "
        f"('e3', 'act_1', '{D2}', 'LeadSubmitted', {T0}, 'sent', NULL, NULL, 1, 21, 21)"
    )
    expected = [
        ("act_1", D2, "LeadSubmitted", "no_click_id", 1),
        ("act_1", D2, "LeadSubmitted", "sent", 1),
        ("act_1", D2, "Purchase", "rejected", 1),
        ("act_1", D2, "Purchase", "sent", 1),
        ("act_2", D3, "LeadSubmitted", "outside_window", 1),
    ]
    order = "account_id, day, event_name, status"
    columns, rows = _select_view(db, "capi_daily", order)
    assert columns == [("account_id", "String"), ("day", "Date"), ("event_name", "String"),
                       ("status", "String"), ("exports", "Int64")]
    _assert_rows(rows, expected)
    _, _, rows = db.query(
        "SELECT export_id, status, error_code, error_message FROM capi_exports FINAL "
        "WHERE status = 'rejected'"
    )
    assert rows == [("e2", "rejected", "100", "Invalid parameter")]
    # Merged, the same.
    db.execute("OPTIMIZE TABLE capi_exports FINAL")
    _assert_rows(_select_view(db, "capi_daily", order)[1], expected)


def test_rows_written_before_0009_show_the_utc_day_and_no_currency(db):
    # A conversation written before migration 0009 has no start_day or
    # currency of its own: it reads as the UTC day of started_at and ''
    # until sessionize rewrites it.
    apply_migrations(db)
    late_evening = 1772492400000  # 2026-03-02T23:00:00Z
    old_cols = CONV_COLS.replace(", start_day, currency", "")
    db.execute(
        f"INSERT INTO conversation_rows ({old_cols}) VALUES "
        f"('act_1', 'ad_1', 'uh_o', {late_evening}, {late_evening}, 1, {late_evening}, 0, "
        "NULL, 0, NULL, NULL, NULL, NULL, 0, 0, 0, 0, NULL, 0, 0, NULL, NULL, 0, 1, 0, NULL)"
    )
    _, _, rows = db.query(
        "SELECT start_day, currency, campaign_id, started_at_time FROM conversations"
    )
    assert rows == [(D2, "", "", "2026-03-02 23:00:00")]


def test_awaiting_reply_lists_unanswered_conversations_inside_the_free_window(db):
    apply_migrations(db)
    _, _, rows = db.query("SELECT toInt64(toUnixTimestamp(now())) * 1000")
    now = rows[0][0]
    minute = 60000

    def conv(user, first_inbound, first_reply, deleted=0, version=1):
        fi = "NULL" if first_inbound is None else first_inbound
        fw = "NULL" if first_inbound is None else first_inbound + H72
        fr = "NULL" if first_reply is None else first_reply
        bucket = "NULL" if first_inbound is None else ("'none'" if first_reply is None else "'le_5m'")
        started = (first_inbound or now) - minute
        return (
            f"('act_1', 'ad_1', '{user}', {started}, {started + minute}, 1, {started}, "
            f"{0 if first_inbound is None else 2}, {fi}, {0 if first_reply is None else 1}, "
            f"{fr}, NULL, {bucket}, {fw}, 0, 0, 0, 0, NULL, 0, 0, NULL, NULL, 0, {version}, "
            f"{deleted}, NULL, '{D2}', 'USD')"
        )

    db.execute(
        f"INSERT INTO conversation_rows ({CONV_COLS}) VALUES "
        + ", ".join([
            conv("waiting_10m", now - 10 * minute, None),
            conv("waiting_2d", now - 2 * 24 * 60 * minute, None),
            conv("answered", now - 10 * minute, now - 9 * minute),
            conv("window_closed", now - 73 * 60 * minute, None),
            conv("never_wrote", None, None),
            conv("deleted", now - minute, None, deleted=1),
        ])
    )
    db.execute("INSERT INTO ads (account_id, ad_id, partition, campaign_id, adset_id, named_at, "
               "named_by, version) VALUES ('act_1', 'ad_1', 0, 'cmp_1', 'as_1', 1, 'c', 1)")
    names, types, rows = db.query(
        "SELECT * FROM awaiting_reply ORDER BY first_inbound_at"
    )
    assert list(zip(names, types)) == [
        ("account_id", "String"), ("campaign_id", "String"), ("adset_id", "String"),
        ("ad_id", "String"), ("user_hash", "String"), ("started_at", "Int64"),
        ("first_inbound_at", "Nullable(Int64)"),
        ("first_inbound_at_time", "Nullable(DateTime('UTC'))"),
        ("inbound_messages", "UInt32"), ("free_window_ends_at", "Nullable(Int64)"),
        ("waiting_ms", "Int64"),
    ]
    assert [(r[1], r[4], r[6]) for r in rows] == [
        ("cmp_1", "waiting_2d", now - 2 * 24 * 60 * minute),
        ("cmp_1", "waiting_10m", now - 10 * minute),
    ]
    # waiting_ms is measured at query time: at least what it was when the
    # rows were written, and not more than a minute later.
    for row in rows:
        waited = now - row[6]
        assert waited <= row[10] < waited + minute, row


def test_dead_letters_daily_sums_the_latest_count_of_every_partition(db):
    apply_migrations(db)
    cols = "worker_topic, worker_partition, reason, day, records, version"
    # Partition 0 counted 2 malformed on D2 at offset 5, then 3 at offset 8;
    # a replay rewrote the older row (version 5) after the newer one.
    db.execute(f"INSERT INTO dead_letter_reasons ({cols}) VALUES "
               f"('dead', 0, 'malformed', '{D2}', 2, 5), ('dead', 0, 'malformed', '{D2}', 3, 8)")
    db.execute(f"INSERT INTO dead_letter_reasons ({cols}) VALUES "
               f"('dead', 0, 'malformed', '{D2}', 2, 5), "
               f"('dead', 1, 'malformed', '{D2}', 1, 2), "
               f"('dead', 1, 'currency_mismatch', '{D3}', 4, 9)")
    expected = [(D2, "malformed", 4), (D3, "currency_mismatch", 4)]
    columns, rows = _select_view(db, "dead_letters_daily", "day, reason")
    assert columns == [("day", "Date"), ("reason", "String"), ("dead_letters", "Int64")]
    _assert_rows(rows, expected)
    db.execute("OPTIMIZE TABLE dead_letter_reasons FINAL")
    _assert_rows(_select_view(db, "dead_letters_daily", "day, reason")[1], expected)


def test_unknown_phone_numbers_lists_each_id_over_every_partition(db):
    apply_migrations(db)
    cols = "worker_topic, worker_partition, phone_number_id, first_seen, last_seen, bodies, version"
    # Partition 0 saw the id twice by offset 4, then three times by offset 7;
    # a replay rewrote the older row after the newer one. Partition 1 saw it
    # earlier and later, and another id once.
    db.execute(f"INSERT INTO unknown_phone_number_counts ({cols}) VALUES "
               "('dead', 0, '406540352242922', 1772445600, 1772449200, 2, 4), "
               "('dead', 0, '406540352242922', 1772445600, 1772452800, 3, 7)")
    db.execute(f"INSERT INTO unknown_phone_number_counts ({cols}) VALUES "
               "('dead', 0, '406540352242922', 1772445600, 1772449200, 2, 4), "
               "('dead', 1, '406540352242922', 1772442000, 1772456400, 1, 2), "
               "('dead', 1, '506540352242922', 1772460000, 1772460000, 1, 3)")
    names, types, rows = db.query(
        "SELECT phone_number_id, toString(first_seen), toString(last_seen), bodies "
        "FROM unknown_phone_numbers ORDER BY phone_number_id")
    expected = [("406540352242922", "2026-03-02 09:00:00", "2026-03-02 13:00:00", 4),
                ("506540352242922", "2026-03-02 14:00:00", "2026-03-02 14:00:00", 1)]
    _assert_rows(rows, expected)
    columns, _ = _select_view(db, "unknown_phone_numbers", "phone_number_id")
    assert columns == [("phone_number_id", "String"), ("first_seen", "DateTime('UTC')"),
                       ("last_seen", "DateTime('UTC')"), ("bodies", "Int64")]
    db.execute("OPTIMIZE TABLE unknown_phone_number_counts FINAL")
    _assert_rows(db.query(
        "SELECT phone_number_id, toString(first_seen), toString(last_seen), bodies "
        "FROM unknown_phone_numbers ORDER BY phone_number_id")[2], expected)


def test_revenue_daily(loaded):
    columns, rows = _select_view(loaded, "revenue_daily", "account_id, day")
    assert columns == [
        ("account_id", "String"),
        ("day", "Date"),
        ("currency", "String"),
        ("purchases", "Int64"),
        ("revenue", "Decimal(18, 4)"),
    ]
    _assert_rows(rows, [("act_1", D3, "USD", 2, D("59.9"))])


# --------------------------------------------------------------------------
# The queries of `wafunnel report` (schemas/clickhouse/queries/report.sql)
# --------------------------------------------------------------------------

REPORT_QUERIES = MIGRATIONS_DIR / "queries" / "report.sql"


def report_query(name: str, *binds: str, key: str = "campaign_id", accounts: str = "1") -> str:
    """The named query with its placeholders filled as the Rust side does."""
    text = REPORT_QUERIES.read_text()
    body = text.split(f"-- name: {name}\n", 1)[1].split("\n-- name: ", 1)[0]
    sql = body.strip().rstrip(";").replace("{key}", key).replace("{accounts}", accounts)
    for value in binds:
        sql = sql.replace("?", value, 1)
    assert "?" not in sql, sql
    return sql


def test_report_queries_read_the_views(loaded):
    days = ("'2026-03-01'", "'2026-03-31'")
    # Sums by campaign and by day equal the view's own sums.
    for key, column in (("campaign_id", "campaign_id"), ("toString(day)", "toString(day)")):
        _, _, rows = loaded.query(report_query("funnel_sums", *days, key=key))
        _, _, direct = loaded.query(
            f"SELECT account_id, {column} AS k, sum(spend) AS s, sum(conversations_started) AS st, "
            "sum(inbound_messages) AS im, sum(revenue) AS rv FROM funnel_daily "
            "GROUP BY account_id, k ORDER BY account_id, k"
        )
        assert [(r[0], r[1], r[2], r[5], r[7], r[19]) for r in rows] == direct
    _, _, only = loaded.query(
        report_query("funnel_sums", *days, "['act_2']", accounts="has(?, account_id)")
    )
    assert {r[0] for r in only} == {"act_2"}
    # Distinct people over the conversations of a time range, per campaign
    # and for the account; the campaign is the one funnel_daily names.
    _, _, people = loaded.query(report_query("people", "'act_1'", "0", str(T0 + 86_400_000)))
    _, _, direct = loaded.query(
        "SELECT '' AS c, toInt64(uniqExact(user_hash)) AS p, "
        "toInt64(uniqExactIf(user_hash, inbound_messages > 0)) AS m FROM conversations "
        f"WHERE account_id = 'act_1' AND started_at < {T0 + 86_400_000}"
    )
    assert people == direct and people[0][1] > 0
    _, _, by_campaign = loaded.query(
        report_query("people_by_campaign", "'act_1'", "0", "9999999999999", "'act_1'")
    )
    _, _, campaigns = loaded.query(
        "SELECT DISTINCT campaign_id FROM funnel_daily WHERE account_id = 'act_1'"
    )
    assert by_campaign and {r[0] for r in by_campaign} <= {c[0] for c in campaigns}
    for name in ("not_from_ads", "exports"):
        loaded.query(report_query(name, *days))
