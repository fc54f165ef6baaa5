-- wafunnel ClickHouse schema, migration 0012: exports waiting for a
-- credential. Same format rule as 0001: each statement ends with a
-- semicolon at the end of a line, and no other semicolon appears in this
-- file.
--
-- An export Meta refused because of its account's credential (an invalid
-- or expired token, a missing permission) is not final: its row has the
-- status waiting_credential and keeps the export itself (JSON: the account,
-- the click id, a purchase's value, nothing about the person) in export, so
-- that `wafunnel capi` sends it once the credential works, after a restart
-- too. Its later row (sent, with a higher version) replaces it. export is
-- empty in every other row.

ALTER TABLE capi_exports ADD COLUMN export String DEFAULT '';
