-- When an operation ended. NULL while it runs, and on rows written by
-- anything that only logs status transitions.
ALTER TABLE operations ADD COLUMN completed_at TIMESTAMP WITH TIME ZONE NULL;

-- What each global stepper index of a host is for, so that the positions in
-- machine_state.stepper_positions (indexed by global stepper) can be read
-- without that host's configuration file. stepper_index is the daemon's
-- 0-based global index; SQL arrays count from 1, so stepper k's position is
-- stepper_positions[k + 1]. Rewritten by the daemon at start;
-- updated_at changes only when a row's content does.
CREATE TABLE stepper_roles (
    host VARCHAR(255) NOT NULL,
    stepper_index INTEGER NOT NULL,
    board VARCHAR(255) NOT NULL,
    local_index INTEGER NOT NULL,
    role VARCHAR(16) NOT NULL CHECK (role IN ('x', 'z_in', 'z_out', 'tuner', 'unused')),
    string_index INTEGER NULL,
    updated_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    PRIMARY KEY (host, stepper_index)
);
