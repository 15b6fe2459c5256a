//! The state-file reader: `read_state` without the file, then what its
//! callers do with a record (liveness, the recovery check, the table it
//! carries). A record that reads must read back the same once rewritten
//! (`StateGuard::update` writes it pretty-printed).

#![no_main]

use libfuzzer_sys::fuzz_target;
use rdm_ublk_server::{control, recovery};

fuzz_target!(|data: &[u8]| {
    let st = match control::parse_state(data) {
        Ok(st) => st,
        Err(e) => {
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
            return;
        }
    };
    let _ = control::check_name(&st.name);
    let _ = st.liveness();
    let _ = recovery::waiting(&st);
    if let Ok(t) = rdm_targets::Table::parse(&st.table) {
        let _ = t.to_string();
    }
    let text = serde_json::to_string_pretty(&st).expect("plain data serializes");
    let back = control::parse_state(text.as_bytes())
        .unwrap_or_else(|e| panic!("a written record does not read back: {e}\n{text}"));
    assert_eq!(
        serde_json::to_string_pretty(&back).expect("plain data serializes"),
        text
    );
});
