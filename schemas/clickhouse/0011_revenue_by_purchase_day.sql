-- wafunnel ClickHouse schema, migration 0011: purchases and revenue by the
-- day of the purchase. funnel_daily counts them on the conversation's start
-- day (a cohort view): an account's cash by day needs the purchase's own
-- day, attributed or not. Same format rule as 0001: each statement ends
-- with a semicolon at the end of a line, and no other semicolon appears in
-- this file.
--
-- contacts_partial gains two counters (0 in rows written before: rebuild to
-- fill them for history). contacts_daily keeps every column, name and type,
-- and gains them last. revenue_daily reads them.

ALTER TABLE contacts_partial ADD COLUMN purchases_on_day Int64 DEFAULT 0;

ALTER TABLE contacts_partial ADD COLUMN revenue_on_day Decimal(18, 4) DEFAULT 0;

DROP TABLE IF EXISTS contacts_daily;

CREATE VIEW contacts_daily AS
SELECT
    account_id,
    day,
    unique_contacts,
    organic_inbound_messages,
    organic_contacts,
    unattributed_leads,
    unattributed_purchases,
    messaging_contacts,
    currency,
    purchases_on_day,
    revenue_on_day
FROM
(
    SELECT
        account_id,
        day,
        sum(unique_contacts) AS unique_contacts,
        sum(organic_inbound_messages) AS organic_inbound_messages,
        sum(organic_contacts) AS organic_contacts,
        sum(unattributed_leads) AS unattributed_leads,
        sum(unattributed_purchases) AS unattributed_purchases,
        sum(messaging_contacts) AS messaging_contacts,
        max(currency_code) AS currency,
        sum(purchases_on_day) AS purchases_on_day,
        toDecimal64(sum(revenue_on_day), 4) AS revenue_on_day
    FROM
    (
        SELECT
            account_id,
            day,
            unique_contacts,
            organic_inbound_messages,
            organic_contacts,
            unattributed_leads,
            unattributed_purchases,
            messaging_contacts,
            currency AS currency_code,
            purchases_on_day,
            revenue_on_day
        FROM contacts_partial FINAL
    )
    GROUP BY account_id, day
)
WHERE NOT (
    unique_contacts = 0 AND organic_inbound_messages = 0
    AND organic_contacts = 0 AND unattributed_leads = 0
    AND unattributed_purchases = 0 AND messaging_contacts = 0
    AND purchases_on_day = 0 AND revenue_on_day = 0
);

-- Purchases and revenue per account and purchase day, in the account's
-- time zone and currency.
CREATE VIEW IF NOT EXISTS revenue_daily AS
SELECT
    account_id,
    day,
    currency,
    purchases_on_day AS purchases,
    revenue_on_day AS revenue
FROM contacts_daily
WHERE purchases_on_day != 0;
