//! Touch sensors (being written).
