-- Status: what the sidecar writes (as a member of medallion_admin) and what
-- medallion.status() shows. A silver table or gold model the refiner proved
-- up to date follows the refiner's position (medallion.refiner_position):
-- its row is not rewritten each cycle, status() shows the later position.
\c - medallion_test_admin
INSERT INTO medallion.table_status (slot_name, layer, name, state, last_lsn, updated_at, follows_refiner) VALUES
    ('s1', 'bronze', 'public.t', 'streaming', '0/100', '2026-01-01 00:00:00+00', false),
    ('s1', 'silver', 'quiet',    'ok',        '0/100', '2026-01-01 00:00:00+00', true),
    ('s1', 'silver', 'ahead',    'ok',        '0/900', '2026-01-01 00:10:00+00', true),
    ('s1', 'gold',   'held',     'ok',        '0/100', '2026-01-01 00:00:00+00', false),
    ('s1', 'silver', 'broken',   'failed',    '0/100', '2026-01-01 00:00:00+00', false),
    ('s2', 'silver', 'quiet',    'ok',        '0/100', '2026-01-01 00:00:00+00', true);
INSERT INTO medallion.refiner_position (slot_name, watermark, updated_at)
    VALUES ('s1', '0/500', '2026-01-01 00:05:00+00');

-- quiet follows s1's refiner (0/500, 00:05); ahead was written past it and
-- keeps its own; held, broken and the bronze table keep theirs; s2 has no
-- refiner position yet.
SELECT slot_name, layer, name, state, last_lsn, updated_at AT TIME ZONE 'UTC' AS updated_at
  FROM medallion.status() ORDER BY slot_name, layer, name;

-- The reader role may read it, and may not write positions.
\c - medallion_test_reader
SELECT name, last_lsn FROM medallion.status() WHERE slot_name = 's1' AND layer = 'silver' ORDER BY name;
SELECT err($$UPDATE medallion.refiner_position SET watermark = '0/1'$$);
SELECT err($$UPDATE medallion.table_status SET follows_refiner = true$$);
\c - medallion_test_nobody
SELECT err($$SELECT * FROM medallion.status()$$);
SELECT err($$SELECT * FROM medallion.refiner_position$$);

\c - medallion_test_admin
DELETE FROM medallion.table_status WHERE slot_name IN ('s1', 's2');
DELETE FROM medallion.refiner_position;
