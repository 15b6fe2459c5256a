//! The rdm daemon: everything that touches devices and files.
//!
//! This crate owns the backing files (inspecting and opening them), the ublk
//! device lifecycle through `libublk`, and the I/O core that turns one ublk
//! request into the backing I/Os of its targets on the queue's io_uring and
//! completes it once all of them are done. The mapping itself — which bytes
//! of which backing file a request touches — is `rdm-targets`' job, and DAX
//! probing is `rdm-dax`'s; this crate only wires them to real I/O.

pub mod backing;
pub mod control;
pub mod dax_path;
pub mod engine;
pub mod features;
pub mod ring;
pub mod server;
pub mod stats;
