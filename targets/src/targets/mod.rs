//! The registry: the word a table names a target with → its constructor.
//! Adding a target is one file here plus one line in [`REGISTRY`].

mod delay;
mod error;
mod flakey;
mod linear;
mod log_writes;
mod mirror;
mod striped;
mod zero;

use crate::target::TargetType;

pub static REGISTRY: &[TargetType] = &[
    linear::TYPE,
    striped::TYPE,
    zero::TYPE,
    error::TYPE,
    flakey::TYPE,
    delay::TYPE,
    log_writes::TYPE,
    mirror::TYPE,
];

/// The type registered under `name`.
pub fn lookup(name: &str) -> Option<&'static TargetType> {
    REGISTRY.iter().find(|t| t.name == name)
}

/// The registered names, for error messages.
pub fn names() -> String {
    REGISTRY
        .iter()
        .map(|t| t.name)
        .collect::<Vec<_>>()
        .join(", ")
}
