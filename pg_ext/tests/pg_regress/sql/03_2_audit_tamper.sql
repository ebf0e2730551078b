-- Audit tamper evidence: records appended through SPI (an index with an
-- expression on the log) and a superuser who bypasses the guard.

-- An index with an expression on the log: records go through SPI instead
-- of the direct append, with the same content.
-- The expression runs as the role records are appended as, never as the
-- extension owner or the writer.
\c - postgres
CREATE FUNCTION public.lower_noted(v text) RETURNS text LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    IF current_setting('medallion.test_note', true) = 'on' THEN
        RAISE NOTICE 'index expression runs as %', current_user;
    END IF;
    RETURN lower(v);
END $$;
CREATE INDEX audit_log_app_user_lower ON medallion.audit_log (public.lower_noted(app_user));
\c - medallion_test_app
BEGIN;
SET LOCAL medallion.app_user = 'Carol';
SET LOCAL medallion.test_note = 'on';
UPDATE account_move SET state = 'cancel' WHERE id = 1;
UPDATE account_move SET state = 'posted' WHERE id = 1;
COMMIT;
\c - medallion_test_auditor
SELECT op, old, new, app_user, db_role, row_key = medallion._row_key(table_name, pk) AS key_ok
  FROM medallion.audit_log WHERE lower(app_user) = 'carol' ORDER BY id;
\c - postgres
DROP INDEX medallion.audit_log_app_user_lower;
DROP FUNCTION public.lower_noted(text);

-- Tamper evidence: a superuser who bypasses the guard is caught.
\c - medallion_test_app
UPDATE account_move SET state = 'draft' WHERE id = 1;
UPDATE account_move SET state = 'posted' WHERE id = 1;
\c - medallion_test_auditor
SELECT status FROM medallion.verify_audit('public.account_move');
SELECT min(id) AS victim FROM medallion.audit_log WHERE table_name = 'public.account_move' AND new ->> 'state' = 'draft' \gset
\c - postgres
SET session_replication_role = replica;
UPDATE medallion.audit_log SET new = '{"state": "posted"}' WHERE id = :victim;
RESET session_replication_role;
\c - medallion_test_auditor
SELECT status, broken_seq, record_id = :victim AS is_victim, problem ~ 'altered' AS altered
  FROM medallion.verify_audit('public.account_move');
\c - postgres
SET session_replication_role = replica;
UPDATE medallion.audit_log SET new = '{"state": "draft"}' WHERE id = :victim;
DELETE FROM medallion.audit_log WHERE id = :victim;
RESET session_replication_role;
\c - medallion_test_auditor
SELECT status, record_id = :victim AS is_victim, problem ~ 'deleted' AS deleted
  FROM medallion.verify_audit('public.account_move');
-- A seal removed from the middle of the chain.
\c - medallion_test_app
INSERT INTO move_tag_rel VALUES (3, 30, 'a'), (3, 31, 'b'), (3, 32, 'c');
\c - medallion_test_auditor
SELECT status, broken_seq, record_id, problem FROM medallion.verify_audit('public.move_tag_rel');
\c - postgres
SET session_replication_role = replica;
DELETE FROM medallion.audit_seal WHERE table_name = 'public.move_tag_rel' AND seq = 7;
RESET session_replication_role;
\c - medallion_test_auditor
SELECT status, broken_seq, record_id, problem FROM medallion.verify_audit('public.move_tag_rel');
