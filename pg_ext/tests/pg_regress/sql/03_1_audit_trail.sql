-- Audit: enable/disable, the trail, the hash chain, queries, retention,
-- roles, append-only (tamper evidence: 03_2_audit_tamper).
\c - medallion_test_admin
SELECT medallion.enable_audit('public.account_move', exclude_columns => ARRAY['write_date']);
SELECT medallion.enable_audit('public.account_move', exclude_columns => ARRAY['write_date']);
SELECT medallion.enable_audit('public.move_tag_rel');
SELECT table_name, columns, exclude_columns, disabled_at IS NULL AS enabled FROM medallion.audit_tables ORDER BY 1;
SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = 'public.account_move'::regclass ORDER BY 1;
SELECT err($$SELECT medallion.enable_audit('public.no_key')$$);
SELECT err($$SELECT medallion.enable_audit('public.partner_view')$$);
SELECT err($$SELECT medallion.enable_audit('medallion.sources')$$);
SELECT err($$SELECT medallion.enable_audit('public.nope')$$);
SELECT err($$SELECT medallion.enable_audit('public.account_move', columns => ARRAY['nope'])$$);
SELECT err($$SELECT medallion.enable_audit('public.account_move', exclude_columns => ARRAY['id'])$$);
SELECT err($$SELECT medallion.enable_audit('public.account_move', columns => ARRAY['name'], exclude_columns => ARRAY['state'])$$);
SELECT err($$SELECT medallion.enable_audit('public.account_move', columns => ARRAY[]::text[])$$);

-- The application writes; it has no privilege on medallion at all.
\c - medallion_test_app
INSERT INTO account_move VALUES (1, 'INV/1', 'draft', 100.50, '2024-01-31', '2024-01-31 10:00:00.123456',
    now(), repeat('x', 5000) || 'end', '{"en_US": "Invoice", "fr_FR": "Facture"}', '{a,"b c"}', 2);
INSERT INTO account_move VALUES (2, 'INV/2', 'draft', 0.000000000000000001, NULL, NULL, now(), 'short', NULL, NULL, 2);
BEGIN;
SET LOCAL medallion.app_user = 'alice@example.com';
-- narration (TOASTed) is unchanged; 100.50 -> 100.500 is a change of scale.
UPDATE account_move SET state = 'posted', amount_total = 100.500, write_date = now(), write_uid = 7 WHERE id = 1;
COMMIT;
-- Only an excluded column, or nothing, changes: no record.
UPDATE account_move SET write_date = now() WHERE id = 1;
UPDATE account_move SET name = name WHERE id = 2;
UPDATE account_move SET narration = narration || '!', payload = payload || '{"de_DE": "Rechnung"}' WHERE id = 1;
SET request.jwt.claims = '{"sub": "6c1a1e3e-2d7f-4c53-9a57-2f1b0b0f3e11", "role": "authenticated"}';
DELETE FROM account_move WHERE id = 2;
RESET request.jwt.claims;
INSERT INTO move_tag_rel VALUES (1, 10, 'x'), (1, 11, 'y');
UPDATE move_tag_rel SET note = 'z' WHERE move_id = 1 AND tag_id = 11;
TRUNCATE move_tag_rel;
INSERT INTO move_tag_rel VALUES (1, 11, 'after');
SELECT err($$SELECT count(*) FROM medallion.audit_log$$);
SELECT err($$SELECT * FROM medallion.verify_audit()$$);

\c - medallion_test_auditor
SELECT id, table_name, op, pk, old - 'narration' AS old, new - 'narration' AS new,
       length(old ->> 'narration') AS old_narration, length(new ->> 'narration') AS new_narration,
       db_role, app_user
  FROM medallion.audit_log ORDER BY id;
SELECT count(DISTINCT xid) AS transactions, bool_and(at <= now()) AS at_in_past FROM medallion.audit_log;
-- Nothing is sealed until a sealer runs; verify_audit seals first.
SELECT count(*) AS sealed_before FROM medallion.audit_seal;
SELECT * FROM medallion.verify_audit();
SELECT * FROM medallion.verify_audit('public.move_tag_rel', since => now() - interval '1 hour');
SELECT table_name, seq, record_id, length(hash) AS hash_bytes, version FROM medallion.audit_seal ORDER BY table_name, seq;
-- The documented canonical form reproduces every seal.
SELECT s.table_name,
       bool_and(s.hash = sha256(COALESCE(p.hash, decode(repeat('00', 32), 'hex')) || medallion.audit_canonical(l))) AS chain_ok
  FROM medallion.audit_seal s JOIN medallion.audit_log l ON l.id = s.record_id
  LEFT JOIN medallion.audit_seal p ON p.table_name = s.table_name AND p.seq = s.seq - 1
 GROUP BY 1 ORDER BY 1;
SELECT convert_from(medallion.audit_canonical(l), 'UTF8') LIKE
       'medallion-audit-v1|1:1|19:public.account_move|6:INSERT|9:{"id": 1}|-|%' AS canonical_v1
  FROM medallion.audit_log l WHERE id = 1;
SELECT table_name, seq, length(hash) AS hash_bytes FROM medallion.audit_chain ORDER BY 1;
SELECT id, op, seq FROM medallion.audit_trail ORDER BY id;

-- History, state at an instant, differences.
SELECT op, old - 'narration' AS old, new - 'narration' AS new, app_user, seq
  FROM medallion.audit_history('public.account_move', '{"id": 1}');
SELECT op, old, new, seq FROM medallion.audit_history('public.move_tag_rel', '{"tag_id": 11, "move_id": "1"}');
SELECT at AS t_insert FROM medallion.audit_log WHERE id = 1 \gset
SELECT at AS t_update FROM medallion.audit_log WHERE id = 3 \gset
SELECT at AS t_insert2 FROM medallion.audit_log WHERE id = 2 \gset
SELECT at AS t_rel_update FROM medallion.audit_log WHERE op = 'UPDATE' AND table_name = 'public.move_tag_rel' \gset
SELECT medallion.row_as_of('public.account_move', '{"id": 1}', :'t_insert') - 'narration' AS at_insert;
SELECT medallion.row_as_of('public.account_move', '{"id": 1}', :'t_update') - 'narration' AS at_update;
SELECT length(medallion.row_as_of('public.account_move', '{"id": 1}', now()) ->> 'narration') AS narration_now;
SELECT medallion.row_as_of('public.account_move', '{"id": 2}', :'t_insert') AS deleted_row_then,
       medallion.row_as_of('public.account_move', '{"id": 2}', now()) AS deleted_row_now;
-- Across a TRUNCATE the row is replayed forward from its INSERT.
SELECT medallion.row_as_of('public.move_tag_rel', '{"move_id": 1, "tag_id": 11}', :'t_rel_update') AS before_truncate,
       medallion.row_as_of('public.move_tag_rel', '{"move_id": 1, "tag_id": 10}', now()) AS truncated,
       medallion.row_as_of('public.move_tag_rel', '{"move_id": 1, "tag_id": 11}', now()) AS reinserted;
SELECT column_name, from_value, to_value
  FROM medallion.audit_diff('public.account_move', '{"id": 1}', :'t_insert', now())
 WHERE column_name <> 'narration';
SELECT * FROM medallion.audit_diff('public.account_move', '{"id": 2}', :'t_insert2', now()) WHERE column_name <> 'narration';
SELECT err($$SELECT * FROM medallion.audit_history('public.sale_order', '{"id": 1}')$$);
SELECT err($$SELECT * FROM medallion.audit_history('public.move_tag_rel', '{"move_id": 1}')$$);
SELECT err($$SELECT * FROM medallion.audit_history('public.move_tag_rel', '{"move_id": 1, "tag_id": 1, "x": 2}')$$);
SELECT err($$SELECT * FROM medallion.audit_history('public.account_move', '[1]')$$);
SELECT err($$SELECT * FROM medallion.audit_history('public.account_move', '{"id": "one"}')$$);
-- (instants in messages are masked: they differ per run)
SELECT regexp_replace(err($$SELECT medallion.row_as_of('public.account_move', '{"id": 1}', now() - interval '10 years')$$), ' from .* 20\d\d \w+', ' from <enabled_at>');
SELECT err($$SELECT medallion.row_as_of('public.account_move', '{"id": 1}', NULL)$$);
SELECT err($$SELECT * FROM medallion.verify_audit('public.sale_order')$$);
SELECT err($$SELECT medallion.seal_audit(0)$$);
-- Auditors read and verify; they do not configure, remove or change.
SELECT err($$SELECT medallion.enable_audit('public.sale_order')$$);
SELECT err($$SELECT * FROM medallion.audit_retention(interval '1 day')$$);
SELECT err($$DELETE FROM medallion.audit_log$$);
\c - medallion_test_reader
SELECT err($$SELECT count(*) FROM medallion.audit_log$$);

-- Append-only, even for a superuser.
\c - postgres
SELECT err($$DELETE FROM medallion.audit_log WHERE id = 1$$);
SELECT err($$UPDATE medallion.audit_log SET app_user = 'mallory' WHERE id = 1$$);
SELECT err($$TRUNCATE medallion.audit_log$$);
SELECT err($$DELETE FROM medallion.audit_seal$$);

-- Disable: idempotent; the trail stops and says so.
\c - medallion_test_admin
SELECT medallion.disable_audit('public.move_tag_rel');
SELECT medallion.disable_audit('public.move_tag_rel');
SELECT table_name, disabled_at IS NOT NULL AS disabled FROM medallion.audit_tables ORDER BY 1;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'public.move_tag_rel'::regclass AND tgname LIKE 'medallion_audit%';
\c - medallion_test_app
INSERT INTO move_tag_rel VALUES (2, 20, 'unaudited');
\c - medallion_test_auditor
SELECT count(*) AS rel_records FROM medallion.audit_log WHERE table_name = 'public.move_tag_rel';
SELECT regexp_replace(err($$SELECT medallion.row_as_of('public.move_tag_rel', '{"move_id": 1, "tag_id": 11}', now())$$), ' at .* 20\d\d \w+:', ' at <disabled_at>:');
\c - medallion_test_admin
SELECT medallion.enable_audit('public.move_tag_rel');

-- Retention keeps the chain verifiable through a signed-off checkpoint.
SELECT err($$SELECT * FROM medallion.audit_retention(interval '-1 day')$$);
SELECT * FROM medallion.audit_retention(interval '10 years');
-- An admin cannot empty the trail: a minimum window (1 year by default)
-- that only a superuser lowers.
SELECT err($$SELECT * FROM medallion.audit_retention(interval '0')$$);
SELECT err($$INSERT INTO medallion.audit_settings (min_retention) VALUES ('0')$$);
\c - postgres
INSERT INTO medallion.audit_settings (min_retention) VALUES ('0');
\c - medallion_test_admin
-- Even then the newest record of each trail stays.
SELECT table_name, removed, checkpoint_seq FROM medallion.audit_retention(interval '0');
SELECT table_name, count(*) AS kept FROM medallion.audit_log GROUP BY 1 ORDER BY 1;
SELECT table_name, seq, removed, signed_off_by, length(checkpoint_hash) AS hash_bytes FROM medallion.audit_checkpoints ORDER BY 1;
\c - postgres
SELECT err($$UPDATE medallion.audit_checkpoints SET removed = 0$$);
SELECT err($$DELETE FROM medallion.audit_checkpoints$$);
\c - medallion_test_app
UPDATE account_move SET state = 'cancel' WHERE id = 1;
\c - medallion_test_auditor
SELECT * FROM medallion.verify_audit();
SELECT op, old, new, seq FROM medallion.audit_history('public.account_move', '{"id": 1}');
SELECT regexp_replace(err(format($$SELECT medallion.row_as_of('public.account_move', '{"id": 1}', %L)$$, :'t_insert')), ' from .* 20\d\d \w+', ' from <retention cut>');

