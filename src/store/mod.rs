//! Storage that loses nothing: the PostgreSQL schema and its migrations, the
//! local durable spool, and the shipper between them.

pub mod migrate;
pub mod pg;
pub mod roles;
