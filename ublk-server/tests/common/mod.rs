//! Helpers shared by the I/O-core test files.

use rdm_ublk_server::request::Request;

pub fn req(op: u32, sector: u64, nr: u32) -> Request {
    Request {
        op_flags: op,
        sector,
        nr_sectors: nr,
    }
}

/// Deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
