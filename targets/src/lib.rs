//! rdm-targets
