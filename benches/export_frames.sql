-- (a)'s one-host recording generated in the server, as the run of
-- docs/PERFORMANCE.md used it (faster than the COPY path of
-- tests/common/recordings.rs on a loaded machine): 1,000,000 frames at 4 fps from
-- 2026-01-01, 6 channels x 12 partials (empty slots included), a 30 s audio
-- pause every 125,000 frames, a timer snapshot a second with 20 s holes, every
-- 4th frame linked, 200 sweeps with nested children, 19 stepper_roles.
-- psql -d sd_bench_export_1000000 -f benches/export_frames.sql on a migrated
-- database, then VACUUM ANALYZE and CREATE TABLE bench_done () so that
-- cargo bench --bench export uses it.
SET maintenance_work_mem = '512MB';
ALTER TABLE partials DROP CONSTRAINT partials_pkey;
INSERT INTO stepper_roles (host, stepper_index, board, local_index, role, string_index)
SELECT 'bench-a', g, CASE WHEN g <= 12 THEN 'carriage' ELSE 'tuners' END, g,
       CASE WHEN g = 0 THEN 'x' WHEN g <= 12 AND g % 2 = 1 THEN 'z_in' WHEN g <= 12 THEN 'z_out' ELSE 'tuner' END,
       CASE WHEN g = 0 THEN NULL WHEN g <= 12 THEN (g - 1) / 2 ELSE g - 13 END
FROM generate_series(0, 18) g;
INSERT INTO controls (controls_id, host, recorded_at)
SELECT lpad(to_hex(i), 32, '0')::uuid, 'bench-a',
       '2026-01-01T00:00:00Z'::timestamptz + i * interval '250 ms' + (i / 125000) * interval '30 s'
FROM generate_series(0, 999999) i;
INSERT INTO partials (controls_id, channel, partial_index, frequency, amplitude)
SELECT lpad(to_hex(i), 32, '0')::uuid, ch, k,
       CASE WHEN k < (i * 7 + ch * 3) % 13 THEN (110 * (ch + 1) * (k + 1) + (i % 100) * 0.01)::real ELSE 0 END,
       CASE WHEN k < (i * 7 + ch * 3) % 13 THEN (0.5 + ((i + k * 7 + ch) % 200) * 0.1)::real ELSE 0 END
FROM generate_series(0, 999999) i, generate_series(0, 5) ch, generate_series(0, 11) k;
ALTER TABLE partials ADD PRIMARY KEY (controls_id, channel, partial_index);
INSERT INTO machine_state
SELECT ('10000000' || lpad(to_hex(n), 24, '0'))::uuid, NULL, 'bench-a',
       '2026-01-01T00:00:00Z'::timestamptz + n * interval '1 s',
       ARRAY(SELECT ((n * 7 + k * 13) % 2000 - 1000)::int FROM generate_series(0, 18) k),
       ARRAY(SELECT (n + k) % 5 <> 0 FROM generate_series(0, 18) k),
       n % 2 = 0, 1 + n % 3, -1 - n % 4, 0.5 + (n % 10) * 0.25, 1 + (n % 7) * 0.5, 0.25 + (n % 3) * 0.125, 2 + n % 5,
       1 + n % 6, 40 + n % 20, 30 + n % 11, 50 + n % 13,
       ARRAY[n % 13, (n + 1) % 13, (n + 2) % 13, (n + 3) % 13, (n + 4) % 13, (n + 5) % 13],
       ARRAY[n % 100, (n + 1) % 100, (n + 2) % 100, (n + 3) % 100, (n + 4) % 100, (n + 5) % 100]::real[],
       ARRAY[0, 1, 2, 3, 4, 5], ARRAY[8, 9, 10, 11, 12, 13], ARRAY[10, 15, 20, 25, 30, 35], ARRAY[90, 95, 100, 105, 110, 115]
FROM generate_series(0, 250210) n
WHERE NOT ((n - 600) % 31250 BETWEEN 0 AND 19 AND n > 31250);
INSERT INTO machine_state
SELECT ('20000000' || lpad(to_hex(i), 24, '0'))::uuid, lpad(to_hex(i), 32, '0')::uuid, 'bench-a',
       '2026-01-01T00:00:00Z'::timestamptz + i * interval '250 ms' + (i / 125000) * interval '30 s' + interval '10 ms',
       ARRAY(SELECT ((i * 3 + k * 13) % 2000 - 1000)::int FROM generate_series(0, 18) k),
       ARRAY(SELECT (i + k) % 5 <> 0 FROM generate_series(0, 18) k),
       true, 2, -2, 5, 5, 1, 4, 4, 50, 50, 50,
       ARRAY[3, 4, 5, 6, 7, 8], ARRAY[20.5, 30, 40, 50, 60, 70]::real[],
       ARRAY[0, 1, 2, 3, 4, 5], ARRAY[8, 9, 10, 11, 12, 13], ARRAY[10, 15, 20, 25, 30, 35], ARRAY[90, 95, 100, 105, 110, 115]
FROM generate_series(0, 999999, 4) i;
INSERT INTO operations (operation_id, state_id, host, recorded_at, operation_type, operation_status,
                        message, stepper_indices, final_positions, completed_at)
SELECT ('30000000' || lpad(to_hex(j * 8 + c), 24, '0'))::uuid, NULL, 'bench-a',
       t0 + len * f0 / 100, kind, CASE WHEN j = 199 AND c = 0 THEN 'started' ELSE st END, msg,
       ARRAY[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], ARRAY[10, 20],
       CASE WHEN j = 199 AND c = 0 THEN NULL ELSE t0 + len * f1 / 100 END
FROM generate_series(0, 199) j,
     LATERAL (SELECT '2026-01-01T00:00:00Z'::timestamptz + j * interval '1250 s' + interval '125 s' AS t0,
                     interval '750 s' AS len) s,
     (VALUES (0, 'sweep_left_right', 'completed', 'sweep done', 0, 100),
             (1, 'z_adjust', 'completed', '3 moves', 10, 30),
             (2, 'z_adjust', 'failed', 'retry threshold reached on string 1', 40, 70),
             (3, 'bump_check', 'completed', NULL, 45, 55),
             (4, 'z_adjust', 'cancelled', NULL, 75, 90)) v(c, kind, st, msg, f0, f1);
