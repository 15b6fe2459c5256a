//! rdm-dax
