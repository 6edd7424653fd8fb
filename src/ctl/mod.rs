//! What `stringdriverctl` prints for people, as functions of the daemon's
//! JSON replies (so they are tested here, not through a process): the
//! `status` summary and its tables (`status_view`), and the small
//! formatters they share (`fmt`: sizes, ages, yes/no).

pub mod fmt;
pub mod status_view;
