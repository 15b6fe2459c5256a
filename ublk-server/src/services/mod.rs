//! What the daemon gives a stateful target (as dm's core gives dm-io,
//! kcopyd and the rest): the I/O context on a queue ring ([`target_io`]),
//! jobs outside requests — messages, hooks, background work — on the first
//! queue ([`jobs`]), and the counters every piece is accounted to
//! ([`stats`]). The copier, metadata and background controls written on
//! the I/O context live with the target interface, in `rdm-targets`.

pub(crate) mod jobs;
pub mod stats;
pub(crate) mod target_io;
