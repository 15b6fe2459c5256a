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
pub mod backing;
pub mod buffer;
pub mod claims;
pub mod control;
mod ctrl_cmd;
pub mod dax_path;
pub mod features;
mod gate;
pub mod handler;
pub mod lockfs;
pub mod nbd;
mod queue;
mod queue_batch;
pub mod recovery;
pub mod request;
pub mod ring;
pub mod rundir;
pub mod server;
pub mod stats;
mod verbs;
