-- machine_state and operations, as DATABASE_SCHEMA.md gives them.
--
-- machine_state.controls_id references audmon's controls(controls_id). On an
-- audmon database that table is audmon's: it is used as it is, and the type
-- of machine_state.controls_id follows its controls_id (UUID per the schema
-- document, TEXT on some audmon installs), since a foreign key needs equal
-- types. On a database without audmon, audmon-compatible controls and
-- partials are created so that the document's queries run; audmon can later
-- write into them.
--
-- refinery runs this file in one transaction: a failure leaves nothing behind.

DO $$
DECLARE
    controls_rel regclass := to_regclass('controls');
    partials_rel regclass := to_regclass('partials');
    controls_kind "char";
    id_attnum smallint;
    id_type text;
BEGIN
    IF controls_rel IS NULL THEN
        -- partials without controls is a half-installed or foreign schema:
        -- creating controls beside it would hide the problem.
        IF partials_rel IS NOT NULL THEN
            RAISE EXCEPTION 'table "partials" exists but table "controls" does not; '
                'machine_state links to audmon''s controls(controls_id), so the audmon '
                'schema in this database is incomplete: repair it (or use a database '
                'without audmon''s tables) and migrate again';
        END IF;
        CREATE TABLE controls (
            controls_id UUID PRIMARY KEY,
            host VARCHAR(255) NOT NULL,
            recorded_at TIMESTAMP WITH TIME ZONE NOT NULL
        );
        id_type := 'uuid';
    ELSE
        SELECT c.relkind INTO controls_kind FROM pg_class c WHERE c.oid = controls_rel;
        IF controls_kind NOT IN ('r', 'p') THEN
            RAISE EXCEPTION '"controls" exists but is not a table (pg_class.relkind %); '
                'machine_state needs a foreign key to audmon''s controls table', controls_kind;
        END IF;
        SELECT a.attnum, format_type(a.atttypid, a.atttypmod)
          INTO id_attnum, id_type
          FROM pg_attribute a
         WHERE a.attrelid = controls_rel
           AND a.attname = 'controls_id'
           AND a.attnum > 0
           AND NOT a.attisdropped;
        IF id_type IS NULL THEN
            RAISE EXCEPTION 'table "controls" has no column "controls_id"; it is not '
                'audmon''s controls table, which machine_state links to';
        END IF;
        -- The daemon writes controls_id as a UUID or as a string; any other
        -- type would make every insert fail later, so refuse it now.
        IF id_type NOT IN ('uuid', 'text') AND id_type NOT LIKE 'character varying%' THEN
            RAISE EXCEPTION 'controls.controls_id has type %, but machine_state.controls_id '
                'can only follow uuid, text or character varying', id_type;
        END IF;
        IF NOT EXISTS (
            SELECT 1 FROM pg_index i
             WHERE i.indrelid = controls_rel
               AND i.indisunique
               AND i.indpred IS NULL
               AND i.indexprs IS NULL
               AND i.indnkeyatts = 1
               AND i.indkey[0] = id_attnum
        ) THEN
            RAISE EXCEPTION 'controls.controls_id is neither the primary key of "controls" '
                'nor unique, so machine_state cannot reference it; add a primary key or '
                'a unique constraint on controls(controls_id)';
        END IF;
    END IF;

    IF partials_rel IS NULL THEN
        EXECUTE format(
            'CREATE TABLE partials (
                controls_id %s REFERENCES controls(controls_id) ON DELETE CASCADE,
                channel INTEGER NOT NULL,
                partial_index INTEGER NOT NULL,
                frequency REAL NOT NULL,
                amplitude REAL NOT NULL,
                PRIMARY KEY (controls_id, channel, partial_index)
            )', id_type);
    END IF;
END
$$;

-- The document's definition; its FOREIGN KEY clause is added below, once
-- controls_id has the type of audmon's column.
CREATE TABLE machine_state (
    state_id UUID PRIMARY KEY,
    controls_id UUID,  -- Links to audmon's controls table for concurrent time-series correlation
    host VARCHAR(255) NOT NULL,
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL,

    -- ALL stepper positions (array matches total number of steppers on system)
    stepper_positions INTEGER[] NOT NULL,

    -- ALL stepper enable states (array matches total number of steppers)
    stepper_enabled BOOLEAN[] NOT NULL,

    -- Operations control settings
    bump_check_enable BOOLEAN NOT NULL,
    z_up_step INTEGER NOT NULL,
    z_down_step INTEGER NOT NULL,

    -- Rest timings (seconds)
    tune_rest REAL NOT NULL,
    x_rest REAL NOT NULL,
    z_rest REAL NOT NULL,
    lap_rest REAL NOT NULL,

    -- Adjustment parameters
    adjustment_level INTEGER NOT NULL,
    retry_threshold INTEGER NOT NULL,
    delta_threshold INTEGER NOT NULL,
    z_variance_threshold INTEGER NOT NULL,

    -- Runtime-calculated audio analysis data (from partials, per-channel)
    voice_count INTEGER[] NOT NULL,  -- Per-channel voice count from partials
    amp_sum REAL[] NOT NULL,         -- Per-channel amplitude sum from partials

    -- Thresholds for z_adjust (per-channel arrays)
    voice_count_min INTEGER[] NOT NULL,
    voice_count_max INTEGER[] NOT NULL,
    amp_sum_min INTEGER[] NOT NULL,
    amp_sum_max INTEGER[] NOT NULL
);

DO $$
DECLARE
    id_type text;
BEGIN
    SELECT format_type(a.atttypid, a.atttypmod)
      INTO id_type
      FROM pg_attribute a
     WHERE a.attrelid = to_regclass('controls')
       AND a.attname = 'controls_id'
       AND NOT a.attisdropped;
    IF id_type <> 'uuid' THEN
        -- The table is empty: changing the type rewrites nothing.
        EXECUTE format('ALTER TABLE machine_state ALTER COLUMN controls_id TYPE %s', id_type);
    END IF;
END
$$;

ALTER TABLE machine_state
    ADD FOREIGN KEY (controls_id) REFERENCES controls(controls_id) ON DELETE SET NULL;

CREATE INDEX idx_machine_state_recorded_at ON machine_state(recorded_at);
CREATE INDEX idx_machine_state_controls_id ON machine_state(controls_id);
CREATE INDEX idx_machine_state_host ON machine_state(host);

CREATE TABLE operations (
    operation_id UUID PRIMARY KEY,
    state_id UUID,  -- Links to machine_state snapshot before operation
    host VARCHAR(255) NOT NULL,
    recorded_at TIMESTAMP WITH TIME ZONE NOT NULL,

    operation_type VARCHAR(50) NOT NULL,  -- 'z_calibrate', 'bump_check', 'z_adjust'
    operation_status VARCHAR(50) NOT NULL,  -- 'started', 'completed', 'failed', 'cancelled'
    message TEXT,  -- Operation result message

    stepper_indices INTEGER[] NOT NULL,  -- Which steppers were involved
    final_positions INTEGER[] NOT NULL,  -- Final positions after operation

    FOREIGN KEY (state_id) REFERENCES machine_state(state_id) ON DELETE SET NULL
);

CREATE INDEX idx_operations_recorded_at ON operations(recorded_at);
CREATE INDEX idx_operations_state_id ON operations(state_id);
CREATE INDEX idx_operations_type ON operations(operation_type);
CREATE INDEX idx_operations_host ON operations(host);
