//! The runner's state directory: file-system helpers and (as the layout
//! grows) the evidence log and every state path in one module.

pub mod fs;
pub mod trust;
