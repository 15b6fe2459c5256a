//! rdm-ublk-server
