//! NBD exports as backing devices: where one is ([`uri`]), the protocol
//! ([`proto`]: the fixed newstyle handshake, requests and replies), the
//! sockets on the queue rings ([`socket`]), an export's connections and
//! its requests on them ([`conn`]), its status ([`status`]), and the
//! backend that serves pieces over them ([`NbdBackend`]).

pub use backend::{open_export, ExportOptions, NbdBackend};

mod backend;
pub mod conn;
pub mod proto;
pub mod socket;
pub mod status;
pub mod uri;
