//! Simulated audmon feed (being written).
