//! One test per table rule: what the kernel accepts we accept, what it
//! refuses we refuse with its reason and the line.

use rdm_targets::{DeviceInfo, Table, TableErrorKind as K};

fn err(text: &str) -> (usize, K) {
    let e = Table::parse(text).expect_err("table should be refused");
    (e.line, e.kind)
}

#[test]
fn parses_all_targets_and_normalizes() {
    let text = "\
# a comment
0 100 linear /a 8

100 64 striped 2 16 /b 0 /c 32
  164 36 zero
200 8 error
";
    let t = Table::parse(text).unwrap();
    assert_eq!(t.total_sectors(), 208);
    assert_eq!(t.total_bytes(), 208 * 512);
    assert_eq!(t.devices().len(), 3);
    assert_eq!(t.segments()[0].line, 2);
    assert_eq!(t.segments()[2].line, 5);
    assert_eq!(
        t.to_string(),
        "0 100 linear /a 8\n100 64 striped 2 16 /b 0 /c 32\n164 36 zero\n200 8 error\n"
    );
    // Printing and parsing again is the identity.
    assert_eq!(
        Table::parse(&t.to_string()).unwrap().to_string(),
        t.to_string()
    );
}

#[test]
fn same_path_twice_is_one_device() {
    let t = Table::parse("0 8 linear /a 0\n8 8 linear /a 8\n").unwrap();
    assert_eq!(t.devices().len(), 1);
}

#[test]
fn escaped_spaces_in_paths_round_trip() {
    let t = Table::parse("0 8 linear /my\\ dir/f\\\\x 0").unwrap();
    assert_eq!(t.devices()[0].to_str().unwrap(), "/my dir/f\\x");
    assert_eq!(t.to_string(), "0 8 linear /my\\ dir/f\\\\x 0\n");
}

#[test]
fn empty_table() {
    assert_eq!(err("").1, K::Empty);
    assert_eq!(err("# only\n\n").1, K::Empty);
}

#[test]
fn syntax_and_numbers() {
    assert_eq!(err("0 8").1, K::Syntax);
    assert!(matches!(
        err("x 8 zero").1,
        K::BadNumber { what: "start", .. }
    ));
    assert!(matches!(
        err("0 -8 zero").1,
        K::BadNumber { what: "length", .. }
    ));
    assert!(matches!(err("0 8k zero").1, K::BadNumber { .. }));
    assert!(matches!(
        err("0 99999999999999999999 zero").1,
        K::BadNumber { .. }
    ));
    assert!(matches!(err("0 8 raid1 a b").1, K::UnknownTarget { name, .. } if name == "raid1"));
    assert!(msg("0 8 raid1 a b").contains("known: linear, striped, zero, error, flakey, delay"));
}

#[test]
fn segments_start_at_zero_adjoin_and_are_not_empty() {
    assert_eq!(
        err("8 8 zero").1,
        K::Gap {
            start: 8,
            expected: 0
        }
    );
    assert_eq!(
        (
            2,
            K::Gap {
                start: 9,
                expected: 8
            }
        ),
        err("0 8 zero\n9 8 zero")
    );
    assert_eq!(
        (
            2,
            K::Gap {
                start: 0,
                expected: 8
            }
        ),
        err("0 8 zero\n0 8 zero")
    );
    assert_eq!(err("0 0 zero").1, K::ZeroLength);
    let huge = format!("0 {} zero", u64::MAX / 256);
    assert_eq!(err(&huge).1, K::TooLarge);
}

/// A backing range must end within 2^64 bytes, or mapping it would
/// overflow (found by the `table` fuzz target: a striped offset of 2^64-1).
#[test]
fn backing_ranges_end_within_2_pow_64_bytes() {
    let last = u64::MAX / 512; // the last sector end that fits in bytes
    for ok in [
        format!("0 8 linear /a {}", last - 8),
        format!("0 16 striped 2 8 /a 0 /b {}", last - 8),
        format!("0 8 flakey /a {} 1 1", last - 8),
        format!("0 8 delay /a 0 0 /b {} 0", last - 8),
    ] {
        Table::parse(&ok).unwrap();
    }
    for (bad, path) in [
        (format!("0 8 linear /a {}", last - 7), "/a"),
        (format!("0 16 striped 2 8 /a 0 /b {}", u64::MAX), "/b"),
        (format!("0 8 flakey /a {} 1 1", last), "/a"),
        (format!("0 8 delay /a 0 0 /b {} 0", last - 7), "/b"),
    ] {
        match err(&bad) {
            (1, K::BackingTooLarge { path: p, .. }) => assert_eq!(p.to_str(), Some(path)),
            other => panic!("{bad}: {other:?}"),
        }
    }
}

/// The message of a refused table's rule.
fn msg(text: &str) -> String {
    err(text).1.to_string()
}

#[test]
fn linear_rules() {
    assert_eq!(
        msg("0 8 linear /a"),
        "linear: invalid argument count 1: expected 2 (<dev> <offset>)"
    );
    assert!(msg("0 8 linear /a 0 1").contains("invalid argument count 3"));
    assert_eq!(
        msg("0 8 linear /a 1x"),
        "linear: Invalid device sector \"1x\""
    );
}

#[test]
fn striped_rules_follow_dm_stripe() {
    assert!(msg("0 8 striped 1").starts_with("striped: invalid argument count 1"));
    assert!(msg("0 8 striped 0 8 /a 0").contains("invalid stripe count \"0\""));
    assert!(msg("0 8 striped 4294967296 8 /a 0").contains("invalid stripe count \"4294967296\""));
    assert!(msg("0 8 striped 1 0 /a 0").contains("invalid chunk_size \"0\""));
    assert_eq!(
        msg("0 9 striped 2 1 /a 0 /b 0"),
        "striped: target length 9 not divisible by number of stripes 2"
    );
    assert!(msg("0 24 striped 2 8 /a 0 /b 0")
        .contains("24 sectors over 2 stripes is 12 sectors per stripe, not a multiple of chunk 8"));
    assert!(msg("0 32 striped 2 8 /a 0")
        .contains("2 stripes need 4 arguments after the chunk size, got 2"));
    assert!(msg("0 32 striped 2 8 /a 0 /b x").contains("invalid stripe offset \"x\""));
    // dm-stripe accepts any non-zero chunk, power of two or not, and a '+'.
    assert!(Table::parse("0 36 striped 3 +12 /a 0 /b 0 /c 0").is_ok());
    assert!(Table::parse("0 6 striped 2 3 /a 0 /b 0").is_ok());
}

#[test]
fn zero_and_error_take_no_arguments() {
    assert_eq!(msg("0 8 zero x"), "zero: takes no arguments, got 1");
    assert_eq!(msg("0 8 error x y"), "error: takes no arguments, got 2");
}

#[test]
fn errors_name_the_line_and_its_text() {
    let e = Table::parse("0 8 zero\n8 8 linear /a\n").unwrap_err();
    assert_eq!(e.line, 2);
    assert_eq!(e.text, "8 8 linear /a");
    assert!(e
        .to_string()
        .starts_with("line 2: linear: invalid argument count 1"));
}

fn info(size_sectors: u64, id: u64) -> DeviceInfo {
    DeviceInfo {
        size_bytes: size_sectors * 512,
        read_only: false,
        identity: (1, id),
    }
}

#[test]
fn backing_ranges_must_fit() {
    let t = Table::parse("0 100 linear /a 10\n100 64 striped 2 8 /b 0 /c 8").unwrap();
    t.check_devices(&[info(110, 1), info(32, 2), info(40, 3)], true)
        .unwrap();
    let e = t
        .check_devices(&[info(109, 1), info(32, 2), info(40, 3)], true)
        .unwrap_err();
    assert_eq!(e.line, 1);
    assert!(matches!(
        e.kind,
        K::DeviceTooSmall {
            dev_sectors: 109,
            start: 10,
            end: 110,
            ..
        }
    ));
    let e = t
        .check_devices(&[info(110, 1), info(32, 2), info(39, 3)], true)
        .unwrap_err();
    assert_eq!(e.line, 2);
    // Size not a multiple of 512: only whole sectors count.
    let mut odd = info(110, 1);
    odd.size_bytes -= 1;
    assert!(t
        .check_devices(&[odd, info(32, 2), info(40, 3)], true)
        .is_err());
}

#[test]
fn read_only_devices_need_a_read_only_table() {
    let t = Table::parse("0 8 linear /a 0").unwrap();
    let mut ro = info(8, 1);
    ro.read_only = true;
    assert!(matches!(
        t.check_devices(&[ro], true).unwrap_err().kind,
        K::ReadOnlyDevice { .. }
    ));
    t.check_devices(&[ro], false).unwrap();
}

#[test]
fn no_byte_mapped_writable_twice() {
    let t = Table::parse("0 16 linear /a 0\n16 16 linear /a 8").unwrap();
    let e = t.check_devices(&[info(100, 1)], true).unwrap_err();
    assert_eq!(e.line, 2);
    assert_eq!(
        e.kind,
        K::Overlap {
            path: "/a".into(),
            start: 8,
            end: 16,
            other_line: 1
        }
    );
    // Read-only tables may alias; adjacent ranges are fine.
    t.check_devices(&[info(100, 1)], false).unwrap();
    Table::parse("0 16 linear /a 0\n16 16 linear /a 16")
        .unwrap()
        .check_devices(&[info(100, 1)], true)
        .unwrap();
    // Two paths to one file are one file.
    let t = Table::parse("0 16 linear /a 0\n16 16 linear /b 15").unwrap();
    assert!(t
        .check_devices(&[info(100, 7), info(100, 7)], true)
        .is_err());
    t.check_devices(&[info(100, 7), info(100, 8)], true)
        .unwrap();
    // Stripes of one segment on one file overlap when their ranges do.
    let t = Table::parse("0 32 striped 2 8 /a 0 /a 8").unwrap();
    assert!(t.check_devices(&[info(100, 1)], true).is_err());
    let t = Table::parse("0 32 striped 2 8 /a 0 /a 16").unwrap();
    t.check_devices(&[info(100, 1)], true).unwrap();
}

#[test]
fn block_size_alignment() {
    let t = Table::parse("0 16 linear /a 8\n16 64 striped 2 8 /b 0 /c 16\n80 8 zero").unwrap();
    t.check_block_size(512).unwrap();
    t.check_block_size(4096).unwrap();
    let e = Table::parse("0 12 zero")
        .unwrap()
        .check_block_size(4096)
        .unwrap_err();
    assert_eq!(
        e.kind,
        K::Misaligned {
            what: "length",
            value: 12,
            block_size: 4096
        }
    );
    let e = Table::parse("0 8 linear /a 1")
        .unwrap()
        .check_block_size(4096)
        .unwrap_err();
    assert!(matches!(
        e.kind,
        K::Misaligned {
            what: "device offset",
            ..
        }
    ));
    let e = Table::parse("0 24 striped 2 4 /a 0 /b 0")
        .unwrap()
        .check_block_size(4096)
        .unwrap_err();
    assert!(matches!(
        e.kind,
        K::Misaligned {
            what: "chunk size",
            ..
        }
    ));
}

#[test]
fn dax_capability_follows_dm_table_supports_dax() {
    let t = Table::parse("0 8 linear /a 0\n8 16 striped 2 8 /b 0 /c 0\n24 8 error").unwrap();
    assert!(t.supports_dax(&[true, true, true]));
    assert!(!t.supports_dax(&[true, false, true]));
    let z = Table::parse("0 8 linear /a 0\n8 8 zero").unwrap();
    assert!(!z.supports_dax(&[true]));
}

#[test]
fn stripe_hints_and_extents() {
    let t = Table::parse("0 8 linear /a 0\n8 96 striped 3 16 /b 0 /c 0 /d 4").unwrap();
    assert_eq!(t.io_hints(), Some((16, 48)));
    let ex = t.extents();
    assert_eq!(ex.len(), 4);
    assert_eq!((ex[3].start, ex[3].len), (4, 32));
    assert_eq!(t.segments()[1].target.name(), "striped");
    assert_eq!(Table::parse("0 8 zero").unwrap().io_hints(), None);
}

#[test]
fn json_shape() {
    let t = Table::parse("0 8 linear /a 0\n8 8 zero").unwrap();
    let v = serde_json::to_value(&t).unwrap();
    assert_eq!(v["segments"][0]["target"]["type"], "linear");
    assert_eq!(v["segments"][1]["target"]["type"], "zero");
    assert_eq!(v["total_sectors"], 16);
}

#[test]
fn rewrite_paths_keeps_the_table() {
    let t = Table::parse("0 8 linear a 0\n8 16 striped 2 8 b 0 /c 0").unwrap();
    let abs = t.rewrite_paths(|p| std::path::Path::new("/w").join(p));
    assert_eq!(
        abs.to_string(),
        "0 8 linear /w/a 0\n8 16 striped 2 8 /w/b 0 /c 0\n"
    );
    let merged = t.rewrite_paths(|_| "/same".into());
    assert_eq!(merged.devices().len(), 1);
}

#[test]
fn a_table_longer_than_the_limit_is_refused_whole() {
    let line = "0 8 zero\n";
    let long = format!(
        "{line}{}",
        "# padding\n".repeat(rdm_targets::MAX_TABLE_BYTES / 10)
    );
    let e = Table::parse(&long).unwrap_err();
    assert!(matches!(e.kind, K::TooLong { .. }), "{e}");
    assert!(e.to_string().starts_with("the table is "), "{e}");
    assert!(Table::parse(line).is_ok());
}
