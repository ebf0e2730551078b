-- Audit: canonical form, sealing, verification and queries (see
-- pg_ext/src/audit.rs for the capture trigger and docs/sql-api.md "Audit").

-- Canonical form v1 of an audit record, the bytes that are hashed:
--   'medallion-audit-v1' then, for each field in this order,
--   '|' <byte length of the UTF-8 value> ':' <UTF-8 value>   or '|-' for NULL:
--   id, table_name, op, pk::text, old::text, new::text, xid::text,
--   at in UTC as YYYY-MM-DD"T"HH24:MI:SS.US"Z", db_role, app_user,
--   application_name, client_addr::text.
-- jsonb::text is Postgres' normalised rendering (sorted keys), so the form
-- does not depend on the session (TimeZone, DateStyle).
-- The UTF-8 form of one field (used by checkpoints, and by anyone who wants
-- to recompute the canonical form in plain SQL).
CREATE FUNCTION medallion._canon(v text) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE WHEN v IS NULL THEN '\x7c2d'::bytea
             ELSE pg_catalog.convert_to('|' || pg_catalog.octet_length(pg_catalog.convert_to(v, 'UTF8'))::text || ':', 'UTF8')
                  || pg_catalog.convert_to(v, 'UTF8') END $$;

-- medallion._canonical_v1 (Rust) concatenates the fields as above.
CREATE FUNCTION medallion.audit_canonical(r medallion.audit_log) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT medallion._canonical_v1(ARRAY[r.id::text, r.table_name, r.op, r.pk::text, r.old::text,
    r.new::text, r.xid::text, pg_catalog.to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    r.db_role::text, r.app_user, r.application_name, r.client_addr::text]) $$;
COMMENT ON FUNCTION medallion.audit_canonical(medallion.audit_log) IS
    'Canonical form v1 of an audit record; seal hash = sha256(previous hash || this). The first previous hash of a chain is 32 zero bytes.';

CREATE FUNCTION medallion._genesis() RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex') $$;

-- Running chain hash as a window aggregate: the first row starts from prev
-- (medallion._chain_step is sha256(COALESCE(state, prev) || canonical)).
CREATE AGGREGATE medallion._chain(bytea, bytea) (SFUNC = medallion._chain_step, STYPE = bytea);

-- Seal committed records: append them to their table's chain in id order.
-- One sealer at a time; writers never wait for it.
-- work_mem: one call sorts up to max_records canonical forms by table; in
-- memory that costs a tenth of an external merge.
CREATE FUNCTION medallion.seal_audit(max_records integer DEFAULT 100000) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET work_mem = '64MB'
AS $$
DECLARE
    st medallion.audit_sealer;
    horizon_passed boolean;
    sealed bigint;
    top bigint;
    high bigint;
BEGIN
    IF max_records IS NULL OR max_records < 1 THEN
        RAISE EXCEPTION 'max_records must be at least 1' USING ERRCODE = '22023',
            HINT = 'Pass how many records one call seals at most, e.g. 100000.';
    END IF;
    IF pg_is_in_recovery() THEN
        RAISE EXCEPTION 'cannot seal audit records on a standby' USING ERRCODE = '25006',
            HINT = 'Seal on the primary; verify_audit on a standby checks what is already sealed.';
    END IF;
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'seal_audit needs READ COMMITTED isolation' USING ERRCODE = '25001',
            HINT = 'Call it outside an explicit REPEATABLE READ or SERIALIZABLE transaction.';
    END IF;
    PERFORM pg_advisory_xact_lock(7146, 1);
    SELECT * INTO st FROM medallion.audit_sealer;
    -- Every transaction that could still add ids <= pending_high has ended:
    -- none of those that held an xid when it was read still holds it.
    -- (Not pg_snapshot_xmin against a snapshot's xmax: xmax is the latest
    -- completed xid + 1, and a transaction with a later xid may be running.)
    horizon_passed := st.pending_high IS NOT NULL
        AND NOT EXISTS (SELECT 1 FROM pg_locks k
                         WHERE k.locktype = 'transactionid' AND k.mode = 'ExclusiveLock'
                           AND k.granted AND k.transactionid = ANY (st.pending_xids));
    WITH cand AS MATERIALIZED (
        SELECT l AS rec, l.id, l.table_name
          FROM medallion.audit_log l
         WHERE l.id > st.low_water
           AND NOT EXISTS (SELECT 1 FROM medallion.audit_seal s WHERE s.record_id = l.id)
         ORDER BY l.id
         LIMIT max_records
    ), chained AS (
        SELECT c.table_name, COALESCE(h.seq, 0) + row_number() OVER w AS seq, c.id AS record_id,
               medallion._chain(COALESCE(h.hash, medallion._genesis()), medallion.audit_canonical(c.rec)) OVER w AS hash,
               -- the last link of each table's run is its new head (no second sort)
               row_number() OVER w = count(*) OVER (PARTITION BY c.table_name) AS head
          FROM cand c LEFT JOIN medallion.audit_chain h ON h.table_name = c.table_name
        WINDOW w AS (PARTITION BY c.table_name ORDER BY c.id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
    ), ins AS (
        INSERT INTO medallion.audit_seal (table_name, seq, record_id, hash)
        SELECT table_name, seq, record_id, hash FROM chained
        RETURNING record_id
    ), heads AS (
        INSERT INTO medallion.audit_chain AS h (table_name, seq, hash, sealed_at)
        SELECT table_name, seq, hash, now() FROM chained WHERE head
        ON CONFLICT (table_name) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash, sealed_at = EXCLUDED.sealed_at
    )
    SELECT count(*), max(record_id) INTO sealed, top FROM ins;
    IF horizon_passed THEN
        UPDATE medallion.audit_sealer SET
            low_water = GREATEST(low_water, CASE WHEN sealed >= max_records
                                                 THEN LEAST(st.pending_high, top) ELSE st.pending_high END),
            pending_high = NULL, pending_xids = NULL;
    END IF;
    IF horizon_passed OR st.pending_high IS NULL THEN
        -- The highest id handed out (a fresh sequence's last_value is the
        -- first id to come, not one taken).
        SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END INTO high
          FROM medallion.audit_log_id_seq;
        -- Then every transaction that holds an xid. A writer takes its xid
        -- (and the lock on it) before its first row change, so before
        -- nextval: each one that took an id <= high is in this list while it
        -- runs, subtransactions and prepared transactions included.
        UPDATE medallion.audit_sealer SET pending_high = high,
            pending_xids = ARRAY(SELECT k.transactionid FROM pg_locks k
                                  WHERE k.locktype = 'transactionid' AND k.mode = 'ExclusiveLock'
                                    AND k.granted AND k.transactionid IS NOT NULL);
    END IF;
    RETURN sealed;
END
$$;

CREATE FUNCTION medallion._seal_all() RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
    total bigint := 0;
BEGIN
    LOOP
        n := medallion.seal_audit(100000);
        total := total + n;
        EXIT WHEN n < 100000;
    END LOOP;
    RETURN total;
END
$$;

-- The quoted, schema-qualified name a table's records carry.
CREATE FUNCTION medallion._audit_name(tbl regclass) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = tbl $$;

-- Checkpoint hash: sha256 over the previous checkpoint hash and the
-- checkpoint's fields, in the same length-prefixed form as records.
CREATE FUNCTION medallion._checkpoint_hash(t text, seq bigint, hash bytea, removed bigint,
    removed_before timestamptz, signed_off_by name, signed_off_at timestamptz, prev bytea) RETURNS bytea
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT sha256(COALESCE(prev, medallion._genesis()) || convert_to('medallion-checkpoint-v1', 'UTF8')
    || medallion._canon(t) || medallion._canon(seq::text) || medallion._canon(encode(hash, 'hex'))
    || medallion._canon(removed::text)
    || medallion._canon(to_char(removed_before AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))
    || medallion._canon(signed_off_by::text)
    || medallion._canon(to_char(signed_off_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))) $$;

-- Verify one chain: the first broken link, or OK.
CREATE FUNCTION medallion._verify_chain(t text, since timestamptz)
RETURNS TABLE (table_name text, status text, records bigint, unsealed bigint,
               broken_seq bigint, record_id bigint, problem text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    base_seq bigint := 0;
    base_hash bytea := medallion._genesis();
    start_seq bigint;
    cp medallion.audit_checkpoints;
    cp_prev bytea;
    broken boolean;
    s0 bigint;
    lw bigint;
    bad record;
    head medallion.audit_chain;
    last_seq bigint;
    last_hash bytea;
    n bigint;
    waiting bigint;
    stray bigint;
BEGIN
    table_name := t;
    SELECT low_water INTO lw FROM medallion.audit_sealer;
    -- Checkpoints chain among themselves; the latest is where seals resume.
    cp_prev := NULL;
    FOR cp IN SELECT c.* FROM medallion.audit_checkpoints c WHERE c.table_name = t ORDER BY c.seq LOOP
        IF cp.checkpoint_hash <> medallion._checkpoint_hash(cp.table_name, cp.seq, cp.hash, cp.removed,
               cp.removed_before, cp.signed_off_by, cp.signed_off_at, cp_prev) THEN
            status := 'BROKEN'; broken_seq := cp.seq; record_id := NULL; records := 0;
            problem := format('retention checkpoint at seq %s was altered', cp.seq);
            RETURN NEXT; RETURN;
        END IF;
        cp_prev := cp.checkpoint_hash;
        base_seq := cp.seq;
        base_hash := cp.hash;
    END LOOP;
    start_seq := base_seq + 1;
    IF since IS NOT NULL THEN
        SELECT min(s.seq) INTO s0 FROM medallion.audit_seal s
          JOIN medallion.audit_log l ON l.id = s.record_id
         WHERE s.table_name = t AND s.seq > base_seq AND l.at >= since;
        IF s0 IS NOT NULL AND s0 > start_seq THEN
            SELECT s.hash INTO base_hash FROM medallion.audit_seal s WHERE s.table_name = t AND s.seq = s0 - 1;
            IF NOT FOUND THEN
                status := 'BROKEN'; broken_seq := s0 - 1; records := 0;
                problem := format('seal %s is missing', s0 - 1);
                RETURN NEXT; RETURN;
            END IF;
            base_seq := s0 - 1;
            start_seq := s0;
        END IF;
    END IF;
    SELECT x.* INTO bad FROM (
        SELECT s.seq, s.record_id AS rid, s.hash, l.id AS lid, l.table_name AS ltable, l AS rec,
               lag(s.seq, 1, base_seq) OVER w AS prev_seq, lag(s.hash, 1, base_hash) OVER w AS prev_hash
          FROM medallion.audit_seal s LEFT JOIN medallion.audit_log l ON l.id = s.record_id
         WHERE s.table_name = t AND s.seq >= start_seq
        WINDOW w AS (ORDER BY s.seq)) x
     WHERE x.seq <> x.prev_seq + 1 OR x.lid IS NULL OR x.ltable <> t
        OR x.hash <> sha256(x.prev_hash || medallion.audit_canonical(x.rec))
        OR (x.rec).row_key IS DISTINCT FROM medallion._row_key(t, (x.rec).pk)
     ORDER BY x.seq LIMIT 1;
    broken := FOUND;
    SELECT count(*) INTO n FROM medallion.audit_seal s WHERE s.table_name = t AND s.seq >= start_seq;
    records := n;
    SELECT count(*) INTO waiting FROM medallion.audit_log l
     WHERE l.table_name = t AND l.id > lw
       AND NOT EXISTS (SELECT 1 FROM medallion.audit_seal s WHERE s.record_id = l.id);
    unsealed := waiting;
    IF broken THEN
        status := 'BROKEN';
        IF bad.seq <> bad.prev_seq + 1 THEN
            broken_seq := bad.prev_seq + 1; record_id := NULL;
            problem := format('seals %s..%s are missing: records were removed from the chain',
                              bad.prev_seq + 1, bad.seq - 1);
        ELSIF bad.lid IS NULL THEN
            broken_seq := bad.seq; record_id := bad.rid;
            problem := format('record %s was deleted from medallion.audit_log', bad.rid);
        ELSIF bad.ltable <> t THEN
            broken_seq := bad.seq; record_id := bad.rid;
            problem := format('record %s now names table %s', bad.rid, bad.ltable);
        ELSIF bad.hash <> sha256(bad.prev_hash || medallion.audit_canonical(bad.rec)) THEN
            broken_seq := bad.seq; record_id := bad.rid;
            problem := format('record %s or its seal was altered: hash does not match', bad.rid);
        ELSE
            broken_seq := bad.seq; record_id := bad.rid;
            problem := format('record %s has an altered row_key (it would be hidden from its row''s history)', bad.rid);
        END IF;
        RETURN NEXT; RETURN;
    END IF;
    -- The tail: the head remembers the last seal.
    SELECT * INTO head FROM medallion.audit_chain h WHERE h.table_name = t;
    SELECT s.seq, s.hash INTO last_seq, last_hash FROM medallion.audit_seal s
     WHERE s.table_name = t ORDER BY s.seq DESC LIMIT 1;
    IF head.table_name IS NULL AND last_seq IS NOT NULL THEN
        status := 'BROKEN'; broken_seq := last_seq; record_id := NULL;
        problem := 'the chain head (medallion.audit_chain) was deleted';
        RETURN NEXT; RETURN;
    END IF;
    IF head.table_name IS NOT NULL AND head.seq > COALESCE(last_seq, base_seq) THEN
        status := 'BROKEN'; broken_seq := COALESCE(last_seq, base_seq) + 1; record_id := NULL;
        problem := format('seals %s..%s at the end of the chain are missing', COALESCE(last_seq, base_seq) + 1, head.seq);
        RETURN NEXT; RETURN;
    END IF;
    IF head.table_name IS NOT NULL AND last_seq = head.seq AND last_hash <> head.hash THEN
        status := 'BROKEN'; broken_seq := head.seq; record_id := NULL;
        problem := 'the last seal does not match the chain head';
        RETURN NEXT; RETURN;
    END IF;
    -- Records behind the sealer that are in no chain were inserted afterwards.
    SELECT min(l.id) INTO stray FROM medallion.audit_log l
     WHERE l.table_name = t AND l.id <= lw AND (since IS NULL OR l.at >= since)
       AND NOT EXISTS (SELECT 1 FROM medallion.audit_seal s WHERE s.record_id = l.id);
    IF stray IS NOT NULL THEN
        status := 'BROKEN'; broken_seq := NULL; record_id := stray;
        problem := format('record %s is in no chain: it was inserted behind the sealer', stray);
        RETURN NEXT; RETURN;
    END IF;
    status := 'OK';
    RETURN NEXT;
END
$$;

-- The capture trigger arguments enable_audit gives (pg_trigger.tgargs:
-- each argument NUL-terminated).
CREATE FUNCTION medallion._capture_args(a medallion.audit_tables) RETURNS bytea
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT convert_to(COALESCE(to_json(a.columns)::text, ''), 'UTF8') || '\x00'::bytea
          || convert_to(COALESCE(to_json(a.exclude_columns)::text, ''), 'UTF8') || '\x00'::bytea $$;

-- What is wrong with a table's capture triggers (NULL: both present,
-- ENABLE ALWAYS, calling medallion.audit_capture with enable_audit's
-- arguments, or the table no longer exists).
CREATE FUNCTION medallion._capture_problem(a medallion.audit_tables) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT string_agg(n.tgname || ' ' || n.problem, '; ' ORDER BY n.tgname)
        FROM (SELECT x.tgname,
                     CASE WHEN t.oid IS NULL THEN 'is missing'
                          WHEN t.tgenabled = 'D' THEN 'is disabled'
                          WHEN t.tgenabled <> 'A' THEN 'no longer fires in every session (ENABLE ALWAYS was changed)'
                          WHEN t.tgfoid <> 'medallion.audit_capture'::regproc
                               OR t.tgargs <> medallion._capture_args(a) THEN 'was altered'
                     END AS problem
                FROM (VALUES ('medallion_audit'), ('medallion_audit_truncate')) x(tgname)
                LEFT JOIN pg_trigger t ON t.tgrelid = to_regclass(a.table_name) AND t.tgname = x.tgname
               WHERE to_regclass(a.table_name) IS NOT NULL) n
       WHERE n.problem IS NOT NULL $$;

-- Compare a table's capture triggers with its last known state and record
-- a change in audit_gaps (called by the event trigger and enable_audit).
CREATE FUNCTION medallion._check_capture(t text) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a medallion.audit_tables;
    problem text;
BEGIN
    SELECT * INTO a FROM medallion.audit_tables x WHERE x.table_name = t AND x.disabled_at IS NULL;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    problem := medallion._capture_problem(a);
    IF problem IS NOT NULL AND a.capture_intact THEN
        INSERT INTO medallion.audit_gaps (table_name, event, detail) VALUES (t, 'capture stopped', problem);
        UPDATE medallion.audit_tables SET capture_intact = false WHERE table_name = t;
        RAISE WARNING 'medallion: the audit trail of % is not captured from now on: %', t, problem
            USING HINT = format('verify_audit reports the gap; SELECT medallion.enable_audit(%L) restores capture.', t);
    ELSIF problem IS NULL AND NOT a.capture_intact THEN
        INSERT INTO medallion.audit_gaps (table_name, event, detail)
            VALUES (t, 'capture restored', 'medallion_audit and medallion_audit_truncate are intact');
        UPDATE medallion.audit_tables SET capture_intact = true WHERE table_name = t;
    END IF;
END
$$;

-- Trigger DDL on audited tables is recorded as it happens, whoever runs it;
-- enable_audit's and disable_audit's own trigger DDL is not a gap. Never
-- fails the user's DDL.
CREATE FUNCTION medallion._on_audit_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t text;
BEGIN
    IF medallion._audit_maintaining() THEN
        RETURN;
    END IF;
    FOR t IN SELECT a.table_name FROM medallion.audit_tables a WHERE a.disabled_at IS NULL LOOP
        BEGIN
            PERFORM medallion._check_capture(t);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'medallion: could not check the capture triggers of %: %', t, SQLERRM;
        END;
    END LOOP;
END
$$;

CREATE EVENT TRIGGER medallion_audit_capture ON ddl_command_end
    WHEN TAG IN ('ALTER TABLE', 'CREATE TRIGGER', 'DROP TRIGGER', 'ALTER TRIGGER')
    EXECUTE FUNCTION medallion._on_audit_ddl();

-- The stretches a trail was not captured (since `since`), and the current
-- state when capture is stopped now: NULL when there is none.
CREATE FUNCTION medallion._capture_gaps(t text, since timestamptz) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT NULLIF(concat_ws('; ',
        (SELECT string_agg(format('%s at %s by %s (%s)', g.event,
                        to_char(g.at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), g.by_role, g.detail), '; ' ORDER BY g.id)
           FROM medallion.audit_gaps g
          WHERE g.table_name = t AND (since IS NULL OR g.at >= since)
            AND g.at >= (SELECT a.enabled_at FROM medallion.audit_tables a WHERE a.table_name = t)),
        (SELECT 'not captured now: ' || medallion._capture_problem(a)
           FROM medallion.audit_tables a WHERE a.table_name = t AND a.disabled_at IS NULL)), '') $$;

-- A chain's verification, with GAP instead of OK when capture stopped:
-- an intact chain of an incomplete trail is not OK.
CREATE FUNCTION medallion._verify_with_gaps(t text, since timestamptz)
RETURNS TABLE (table_name text, status text, records bigint, unsealed bigint,
               broken_seq bigint, record_id bigint, problem text)
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT v.table_name,
             CASE WHEN v.status = 'OK' AND g.gaps IS NOT NULL THEN 'GAP' ELSE v.status END,
             v.records, v.unsealed, v.broken_seq, v.record_id,
             CASE WHEN v.status = 'OK' THEN g.gaps ELSE v.problem END
        FROM medallion._verify_chain(t, since) v
        LEFT JOIN LATERAL (SELECT medallion._capture_gaps(t, since) AS gaps) g ON true $$;

CREATE FUNCTION medallion.verify_audit(tbl regclass DEFAULT NULL, since timestamptz DEFAULT NULL)
RETURNS TABLE (table_name text, status text, records bigint, unsealed bigint,
               broken_seq bigint, record_id bigint, problem text)
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    t text;
BEGIN
    -- Seal what is committed first, when this session can write.
    IF NOT pg_is_in_recovery() AND NOT current_setting('transaction_read_only')::boolean
       AND current_setting('transaction_isolation') = 'read committed' THEN
        PERFORM medallion._seal_all();
    END IF;
    IF tbl IS NOT NULL THEN
        t := medallion._audit_name(tbl);
        IF NOT EXISTS (SELECT 1 FROM medallion.audit_tables a WHERE a.table_name = t)
           AND NOT EXISTS (SELECT 1 FROM medallion.audit_chain h WHERE h.table_name = t) THEN
            RAISE EXCEPTION 'table % is not audited', t USING ERRCODE = '42704',
                HINT = format('Start its trail with SELECT medallion.enable_audit(%L).', t);
        END IF;
        RETURN QUERY SELECT * FROM medallion._verify_with_gaps(t, since);
        RETURN;
    END IF;
    FOR t IN SELECT a.table_name FROM medallion.audit_tables a
             UNION SELECT h.table_name FROM medallion.audit_chain h ORDER BY 1 LOOP
        RETURN QUERY SELECT * FROM medallion._verify_with_gaps(t, since);
    END LOOP;
END
$$;

-- Row data is returned only to a caller who may SELECT its table. The
-- functions that call this are SECURITY INVOKER: current_user is the
-- effective caller (after SET ROLE, inside an outer definer function), and
-- the live table is read with the caller's own privileges, so its domain
-- checks, casts and policies never run as the extension owner.
CREATE FUNCTION medallion._require_select(tbl regclass) RETURNS void
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT has_table_privilege(tbl, 'SELECT') THEN
        RAISE EXCEPTION 'permission denied to read the rows of %: role "%" may not SELECT it', tbl::text, current_user
            USING ERRCODE = '42501',
            HINT = format('GRANT SELECT ON %s TO %I; the trail itself is readable through medallion.audit_trail.', tbl::text, current_user);
    END IF;
END
$$;

-- The audited table's configuration, or an error naming what to do.
CREATE FUNCTION medallion._audited(tbl regclass) RETURNS medallion.audit_tables
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a medallion.audit_tables;
    t text := medallion._audit_name(tbl);
BEGIN
    SELECT * INTO a FROM medallion.audit_tables x WHERE x.table_name = t;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table % is not audited', t USING ERRCODE = '42704',
            HINT = format('Start its trail with SELECT medallion.enable_audit(%L).', t);
    END IF;
    RETURN a;
END
$$;

-- The primary key columns of tbl, in key order.
CREATE FUNCTION medallion._key_columns(tbl regclass) RETURNS text[]
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$ SELECT array_agg(a.attname::text ORDER BY k.ord) FROM pg_index i
        JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) ON true
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
       WHERE i.indrelid = tbl AND i.indisprimary $$;

-- pk as the trail stores it: the key columns' to_jsonb values.
CREATE FUNCTION medallion._audit_key(tbl regclass, pk jsonb) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cols text[] := medallion._key_columns(tbl);
    given text[];
    missing text[];
    extra text[];
    key jsonb;
BEGIN
    IF cols IS NULL THEN
        RAISE EXCEPTION 'table % has no primary key', tbl::text USING ERRCODE = '55000',
            HINT = 'Audit records identify rows by primary key.';
    END IF;
    IF pk IS NULL OR jsonb_typeof(pk) <> 'object' THEN
        RAISE EXCEPTION 'pk must be a JSON object of the primary key columns' USING ERRCODE = '22023',
            HINT = format('The primary key of %s is (%s), e.g. %s.', tbl::text, array_to_string(cols, ', '),
                          (SELECT jsonb_object_agg(c, 1) FROM unnest(cols) c));
    END IF;
    SELECT array_agg(k) INTO given FROM jsonb_object_keys(pk) k;
    SELECT array_agg(c) INTO missing FROM unnest(cols) c WHERE c <> ALL (COALESCE(given, '{}'));
    SELECT array_agg(g) INTO extra FROM unnest(given) g WHERE g <> ALL (cols);
    IF missing IS NOT NULL OR extra IS NOT NULL THEN
        RAISE EXCEPTION 'pk does not match the primary key of %', tbl::text USING ERRCODE = '22023',
            DETAIL = concat_ws('; ', 'missing: ' || array_to_string(missing, ', '),
                               'not key columns: ' || array_to_string(extra, ', ')),
            HINT = format('The primary key of %s is (%s).', tbl::text, array_to_string(cols, ', '));
    END IF;
    EXECUTE format('SELECT jsonb_build_object(%s) FROM jsonb_populate_record(NULL::%s, $1) r',
                   (SELECT string_agg(format('%L, r.%I', c, c), ', ') FROM unnest(cols) c), tbl)
        INTO key USING pk;
    RETURN key;
END
$$;

-- Every record of one row, plus its table's TRUNCATEs (inlined by the
-- planner, so both branches use the row_key index).
CREATE FUNCTION medallion._row_records(t text, key jsonb) RETURNS SETOF medallion.audit_log
LANGUAGE sql STABLE
AS $$ SELECT l.* FROM medallion.audit_log l
       WHERE (l.row_key = medallion._row_key(t, key) AND l.table_name = t AND l.pk = key)
          OR (l.row_key = medallion._row_key(t, NULL) AND l.table_name = t AND l.op = 'TRUNCATE') $$;

CREATE FUNCTION medallion.audit_history(tbl regclass, pk jsonb)
RETURNS TABLE (id bigint, op text, at timestamptz, xid xid8, db_role name, app_user text,
               application_name text, client_addr inet, old jsonb, new jsonb, seq bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a medallion.audit_tables := medallion._audited(tbl);
    key jsonb;
BEGIN
    PERFORM medallion._require_select(tbl);
    key := medallion._audit_key(tbl, pk);
    RETURN QUERY
        SELECT l.id, l.op, l.at, l.xid, l.db_role, l.app_user, l.application_name, l.client_addr,
               l.old, l.new, s.seq
          FROM medallion._row_records(a.table_name, key) l LEFT JOIN medallion.audit_seal s ON s.record_id = l.id
         ORDER BY l.id;
END
$$;

-- The audited columns of a live row, as the trail renders them (to_jsonb).
CREATE FUNCTION medallion._live_row(tbl regclass, key jsonb, a medallion.audit_tables) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    cols text[] := medallion._key_columns(tbl);
    img jsonb;
BEGIN
    EXECUTE format('SELECT to_jsonb(t) FROM %s t, jsonb_populate_record(NULL::%s, $1) k WHERE %s',
                   tbl, tbl, (SELECT string_agg(format('t.%I IS NOT DISTINCT FROM k.%I', c, c), ' AND ') FROM unnest(cols) c))
        INTO img USING key;
    IF img IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN (SELECT COALESCE(jsonb_object_agg(e.key, e.value), '{}'::jsonb) FROM jsonb_each(img) e
             WHERE e.key = ANY (cols)
                OR ((a.columns IS NULL OR e.key = ANY (a.columns))
                    AND (a.exclude_columns IS NULL OR e.key <> ALL (a.exclude_columns))));
END
$$;

-- The audited columns of a row at a past instant (NULL: no such row then).
-- Rewinds the live row through the trail; across a TRUNCATE it replays
-- forward from the row's INSERT.
CREATE FUNCTION medallion.row_as_of(tbl regclass, pk jsonb, at timestamptz) RETURNS jsonb
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a medallion.audit_tables := medallion._audited(tbl);
    key jsonb;
    complete_from timestamptz;
    state jsonb;
    r record;
BEGIN
    PERFORM medallion._require_select(tbl);
    key := medallion._audit_key(tbl, pk);
    IF at IS NULL THEN
        RAISE EXCEPTION 'at must not be NULL' USING ERRCODE = '22004', HINT = 'Pass a past instant, e.g. now() - interval ''1 day''.';
    END IF;
    IF a.disabled_at IS NOT NULL THEN
        RAISE EXCEPTION 'audit of % was disabled at %: the trail no longer reaches the live row', a.table_name, a.disabled_at
            USING ERRCODE = '55000', HINT = format('Re-enable it with SELECT medallion.enable_audit(%L); row_as_of works from then on.', a.table_name);
    END IF;
    complete_from := GREATEST(a.enabled_at, (SELECT max(c.removed_before) FROM medallion.audit_checkpoints c WHERE c.table_name = a.table_name));
    IF at < complete_from THEN
        RAISE EXCEPTION 'the trail of % is complete only from %', a.table_name, complete_from USING ERRCODE = '22023',
            HINT = 'Ask for an instant at or after that (audit was enabled or retention removed earlier records).';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM medallion.audit_log l WHERE l.row_key = medallion._row_key(a.table_name, NULL)
                      AND l.table_name = a.table_name AND l.op = 'TRUNCATE' AND l.at > row_as_of.at) THEN
        state := medallion._live_row(tbl, key, a);
        FOR r IN SELECT l.op, l.old FROM medallion._row_records(a.table_name, key) l
                  WHERE l.op <> 'TRUNCATE' AND l.at > row_as_of.at ORDER BY l.id DESC LOOP
            CASE r.op
                WHEN 'INSERT' THEN state := NULL;
                WHEN 'UPDATE' THEN state := COALESCE(state, '{}'::jsonb) || r.old;
                WHEN 'DELETE' THEN state := r.old;
            END CASE;
        END LOOP;
        RETURN state;
    END IF;
    -- Replay forward from the row's INSERT (a TRUNCATE left no row image).
    state := NULL;
    FOR r IN SELECT l.op, l.new FROM medallion._row_records(a.table_name, key) l
              WHERE l.at <= row_as_of.at ORDER BY l.id LOOP
        CASE r.op
            WHEN 'INSERT' THEN state := r.new;
            WHEN 'UPDATE' THEN
                IF state IS NULL THEN
                    RAISE EXCEPTION 'cannot reconstruct % %: the row predates the trail and the table was truncated since',
                        a.table_name, key USING ERRCODE = '55000',
                        HINT = 'Its state before the TRUNCATE was never recorded as a whole row.';
                END IF;
                state := state || r.new;
            ELSE state := NULL;
        END CASE;
    END LOOP;
    RETURN state;
END
$$;

-- Columns whose value differs between two instants (SQL NULL: no row then;
-- JSON null: the column was NULL).
CREATE FUNCTION medallion.audit_diff(tbl regclass, pk jsonb, from_at timestamptz, to_at timestamptz)
RETURNS TABLE (column_name text, from_value jsonb, to_value jsonb)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    a jsonb := medallion.row_as_of(tbl, pk, from_at);
    b jsonb := medallion.row_as_of(tbl, pk, to_at);
BEGIN
    RETURN QUERY
        SELECT k, a -> k, b -> k
          FROM (SELECT jsonb_object_keys(COALESCE(a, '{}'::jsonb)) AS k
                UNION SELECT jsonb_object_keys(COALESCE(b, '{}'::jsonb))) keys
         WHERE (a -> k) IS DISTINCT FROM (b -> k)
         ORDER BY k;
END
$$;

-- Records with their place in the chain (seq/hash NULL: not sealed yet).
CREATE VIEW medallion.audit_trail AS
    SELECT l.*, s.seq, s.hash
      FROM medallion.audit_log l LEFT JOIN medallion.audit_seal s ON s.record_id = l.id;

-- Append-only: UPDATE, DELETE and TRUNCATE are refused (DELETE only passes
-- inside medallion.audit_retention).
CREATE TRIGGER medallion_append_only BEFORE UPDATE OR DELETE ON medallion.audit_log
    FOR EACH ROW EXECUTE FUNCTION medallion.audit_guard();
CREATE TRIGGER medallion_append_only_truncate BEFORE TRUNCATE ON medallion.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION medallion.audit_guard();
CREATE TRIGGER medallion_append_only BEFORE UPDATE OR DELETE ON medallion.audit_seal
    FOR EACH ROW EXECUTE FUNCTION medallion.audit_guard();
CREATE TRIGGER medallion_append_only_truncate BEFORE TRUNCATE ON medallion.audit_seal
    FOR EACH STATEMENT EXECUTE FUNCTION medallion.audit_guard();
CREATE TRIGGER medallion_append_only BEFORE UPDATE OR DELETE ON medallion.audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION medallion.audit_guard();
CREATE TRIGGER medallion_append_only BEFORE UPDATE OR DELETE ON medallion.audit_gaps
    FOR EACH ROW EXECUTE FUNCTION medallion.audit_guard();
CREATE TRIGGER medallion_append_only_truncate BEFORE TRUNCATE ON medallion.audit_gaps
    FOR EACH STATEMENT EXECUTE FUNCTION medallion.audit_guard();
CREATE TRIGGER medallion_append_only_truncate BEFORE TRUNCATE ON medallion.audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION medallion.audit_guard();
