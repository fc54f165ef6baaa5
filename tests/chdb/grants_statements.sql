CREATE DATABASE IF NOT EXISTS `wafunnel_client_acme`
CREATE OR REPLACE VIEW `wafunnel_client_acme`.`capi_daily` SQL SECURITY DEFINER AS SELECT * FROM `wafunnel`.`capi_daily` WHERE account_id IN ('act_1001', 'act_\'2')
CREATE OR REPLACE VIEW `wafunnel_client_acme`.`funnel_daily` SQL SECURITY DEFINER AS SELECT * FROM `wafunnel`.`funnel_daily` WHERE account_id IN ('act_1001', 'act_\'2')
DROP TABLE IF EXISTS `wafunnel_client_acme`.`old`
CREATE USER IF NOT EXISTS `wafunnel_client_acme` IDENTIFIED WITH sha256_hash BY '144fa1e902375b757abb8e47016c6a44bd0b08e1a910c3ffc05c0d139b05b353' SALT '00112233445566778899aabbccddeeff'
ALTER USER `wafunnel_client_acme` HOST IP '::/0', IP '10.0.0.0/8' DEFAULT DATABASE `wafunnel_client_acme` SETTINGS readonly = 1
GRANT SELECT ON `wafunnel_client_acme`.* TO `wafunnel_client_acme` WITH REPLACE OPTION
ALTER USER `wafunnel_client_acme` IDENTIFIED WITH sha256_hash BY '144fa1e902375b757abb8e47016c6a44bd0b08e1a910c3ffc05c0d139b05b353' SALT '00112233445566778899aabbccddeeff'
ALTER USER `wafunnel_client_acme` HOST IP '::/0', IP '10.0.0.0/8' DEFAULT DATABASE `wafunnel_client_acme` SETTINGS readonly = 1
GRANT SELECT ON `wafunnel_client_acme`.* TO `wafunnel_client_acme` WITH REPLACE OPTION
