//! Intakes beside the HTTP API, over the same run service
//! ([`crate::service::RunService`]): the same checks, the same evidence.
//! Every capsule and approval is signed and bound, so a transport needs
//! only to deliver, not to be trusted.
//!
//! - [`spool`]: a directory for air-gapped segments (removable media, a
//!   one-way link).

pub mod spool;
