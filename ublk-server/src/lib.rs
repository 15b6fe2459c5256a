//! The rdm daemon: everything that touches devices and files.
//!
//! This crate owns the backing files (inspecting and opening them), the ublk
//! device lifecycle through `libublk`, and the request path: queue thread
//! (`queue`) → request handler (`handler`) → target map (`rdm-targets`) →
//! backend (`backend::uring` or `backend::dax`) → completion; `gate` holds
//! requests while suspended and swaps tables, `verbs` is the control side. The mapping itself — which bytes
//! of which backing file a request touches — is `rdm-targets`' job, and DAX
//! probing is `rdm-dax`'s; this crate only wires them to real I/O.

pub mod backend;
pub mod control;
pub mod io;
pub mod services;

// The paths the CLI, the benchmarks and the tests use.
pub use backend::{backing, buffer, dax_path, nbd, ring};
pub use control::{claims, lifecycle as server, recovery};
pub use io::{features, handler, lockfs, request};
pub use services::stats;
