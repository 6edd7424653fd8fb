//! What `stringdriverctl` prints for people, as functions of the daemon's
//! JSON replies (so they are tested here, not through a process): the
//! `status` summary and its tables (`status_view`), and the small
//! formatters they share (`fmt`: sizes, ages, yes/no), `get`/`unset`
//! with where a setting comes from (`settings_view`), the events and an
//! operation's progress as lines (`progress`); and the manual pages of both
//! programs (`docs`).

pub mod docs;
pub mod fmt;
pub mod progress;
pub mod settings_view;
pub mod status_view;
