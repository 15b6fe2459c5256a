//! The control plane: a device's life — created, started, recovered,
//! stopped ([`lifecycle`]) — its state file and control socket
//! ([`state`]), the verbs the socket serves ([`verbs`]), the writable
//! ranges devices claim ([`claims`]), recovery's checks ([`recovery`]).
//! It drives the I/O plane and never the other way round.

pub mod claims;
pub mod config;
pub(crate) mod ctrl_cmd;
pub(crate) mod kernel;
pub mod lifecycle;
pub(crate) mod open;
pub mod recovery;
pub mod rundir;
pub mod socket;
pub mod state;
pub(crate) mod verbs;

pub use socket::*;
pub use state::*;
