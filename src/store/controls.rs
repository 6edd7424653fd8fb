//! controls_id linking (being written).
