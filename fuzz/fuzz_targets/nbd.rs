//! What an NBD server sends, from a hostile one: the handshake over
//! arbitrary bytes ends in an export or an error (never a panic, never an
//! allocation the server sizes), reply headers parse or are refused, and
//! URIs parse or are refused.

#![no_main]

use std::io;

use libfuzzer_sys::fuzz_target;
use rdm_ublk_server::nbd::{proto, uri};

/// The server's bytes, then end of stream.
struct Server<'a> {
    data: &'a [u8],
    sent: usize,
}

impl proto::Wire for Server<'_> {
    async fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        self.sent += buf.len();
        Ok(())
    }
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<()> {
        if self.data.len() < buf.len() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let (head, rest) = self.data.split_at(buf.len());
        buf.copy_from_slice(head);
        self.data = rest;
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut s = Server { data, sent: 0 };
    if let Ok(info) = futures_lite::future::block_on(proto::handshake(&mut s, "e0")) {
        assert!(info.min_block >= 1 && info.max_payload >= info.min_block);
        assert!(info.max_payload <= proto::DEFAULT_MAX_PAYLOAD);
    }
    // The client never sends more than it was sent reasons to.
    assert!(s.sent < 256);
    if let Ok(h) = <[u8; 16]>::try_from(data.get(..16).unwrap_or(&[])) {
        let _ = proto::reply(&h);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(u) = uri::Uri::parse(text) {
            let _ = u.identity();
            let _ = u.to_string();
        }
    }
});
