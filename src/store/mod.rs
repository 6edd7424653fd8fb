//! Storage that loses nothing: the PostgreSQL schema and its migrations, the
//! local durable spool, and the shipper between them.

pub mod controls;
pub mod migrate;
pub mod pg;
pub mod record;
pub mod roles;
pub mod ship;
pub mod spool;
pub mod spool_handle;
pub mod tls;

pub use record::{MachineState, OperationEvent, OperationStatus, OperationType, Record, Trigger};
pub use spool::{Damage, Spool, SpoolError, SpoolStatus, Spooled};
pub use spool_handle::SpoolHandle;
