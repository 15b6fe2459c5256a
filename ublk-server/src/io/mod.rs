//! The I/O plane: one thread and one io_uring per queue ([`queue`],
//! [`queue_batch`]), the gate every request passes (suspend, table swaps:
//! [`gate`]), one request as the driver describes it ([`request`]), the
//! request handler ([`handler`]) that maps it through the table and hands
//! each piece to a backend or to its target. [`features`] is what the
//! kernel offers and the data mode chosen from it.

pub mod features;
pub(crate) mod gate;
pub mod handler;
pub(crate) mod loaded;
pub mod lockfs;
pub(crate) mod queue;
pub(crate) mod queue_batch;
pub mod request;
mod run_jobs;
