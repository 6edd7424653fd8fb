//! The audmon feed reader (being written).
