-- Indexes for the queries researchers run: the schema document's ML query
-- and `stringdriverd export` / `report` select one host's rows in a time
-- window, and the operations-history query one host's operations by time.
-- The document's single-column indexes (recorded_at, host) each leave the
-- other condition to a filter: on a fleet's table the host index reads the
-- host's whole history, the time index every host's rows of the window.
-- These composite indexes read exactly the host's window, in time order.
-- Every index and column of DATABASE_SCHEMA.md stays.
--
-- Plain CREATE INDEX (refinery runs a migration in a transaction, where
-- CONCURRENTLY is not allowed): writes to the table wait while it builds,
-- about a minute on 10 million machine_state rows; the daemon's spool keeps
-- its records meanwhile.

CREATE INDEX IF NOT EXISTS idx_machine_state_host_recorded_at
    ON machine_state (host, recorded_at);

CREATE INDEX IF NOT EXISTS idx_operations_host_recorded_at
    ON operations (host, recorded_at);

-- audmon's controls table: the ML query and the export select its frames by
-- host and time too. On an audmon database the table may belong to another
-- role, which alone may index it, and audmon may have such an index already:
-- create it only when this role owns the table and no index starts with
-- (host, recorded_at); otherwise say what the table's owner should run.
DO $$
DECLARE
    controls_rel regclass := to_regclass('controls');
    owned boolean;
    covered boolean;
BEGIN
    SELECT pg_has_role(current_user, c.relowner, 'USAGE') INTO owned
      FROM pg_class c WHERE c.oid = controls_rel;
    SELECT EXISTS (
        SELECT 1 FROM pg_index i
         WHERE i.indrelid = controls_rel
           AND i.indnkeyatts >= 2
           AND i.indexprs IS NULL
           AND i.indpred IS NULL
           AND (SELECT a.attname FROM pg_attribute a
                 WHERE a.attrelid = controls_rel AND a.attnum = i.indkey[0]) = 'host'
           AND (SELECT a.attname FROM pg_attribute a
                 WHERE a.attrelid = controls_rel AND a.attnum = i.indkey[1]) = 'recorded_at'
    ) INTO covered;
    IF covered THEN
        RETURN;
    ELSIF owned THEN
        CREATE INDEX idx_controls_host_recorded_at ON controls (host, recorded_at);
    ELSE
        RAISE NOTICE 'controls belongs to another role, so no index on controls (host, recorded_at) '
            'was created; for fast exports its owner can run: '
            'CREATE INDEX CONCURRENTLY idx_controls_host_recorded_at ON controls (host, recorded_at)';
    END IF;
END
$$;
