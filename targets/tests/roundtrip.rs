//! Printing a valid table and parsing it again gives the same table, and
//! printing that gives the same text: for every target type, with the
//! spellings the parser accepts (extra blanks, comments, `+` numbers, mixed
//! case feature names, any escaped character, features in any order).

use proptest::prelude::*;
use rdm_targets::Table;

/// A backing path, with characters that need escaping now and then.
fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            8 => prop::char::range('a', 'z'),
            2 => Just('/'),
            1 => prop::sample::select(vec![' ', '\t', '\\', '#', '.', '-', 'é', '\u{a0}', '\r']),
        ],
        1..10,
    )
    .prop_map(|cs| cs.into_iter().collect())
}

/// `path` as a table word: white space and backslashes escaped, and any
/// other character escaped now and then (`\x` reads as `x`).
fn word(path: &str, escape_more: bool) -> String {
    let mut out = String::new();
    for (i, c) in path.chars().enumerate() {
        if c.is_whitespace() || c == '\\' || (escape_more && i % 3 == 0) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A number as the table may write it: with a `+` where the kernel reads
/// it with kstrtouint.
fn num(n: u64, plus: bool) -> String {
    if plus {
        format!("+{n}")
    } else {
        n.to_string()
    }
}

/// Mixed case, as dm-flakey compares feature names case-insensitively.
fn mixed(name: &str, upper: bool) -> String {
    if upper {
        name.chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect()
    } else {
        name.to_string()
    }
}

/// One segment: its length and its arguments after the type word.
fn segment() -> impl Strategy<Value = (u64, String, String)> {
    let offset = || prop_oneof![0..1u64 << 20, 0..1u64 << 40];
    let linear = (1..1u64 << 30, path(), offset(), any::<bool>())
        .prop_map(|(len, p, o, e)| (len, "linear".to_string(), format!("{} {o}", word(&p, e))));
    let striped = (
        1..=4u64,
        1..=64u64,
        1..=4u64,
        prop::collection::vec((path(), offset()), 4),
        any::<(bool, bool)>(),
    )
        .prop_map(|(n, chunk, rows, devs, (plus, e))| {
            let mut args = format!("{} {}", num(n, plus), num(chunk, plus));
            for (p, o) in &devs[..n as usize] {
                args.push_str(&format!(" {} {o}", word(p, e)));
            }
            (n * chunk * rows, "striped".to_string(), args)
        });
    let plain = (1..1u64 << 30, prop::sample::select(vec!["zero", "error"]))
        .prop_map(|(len, t)| (len, t.to_string(), String::new()));
    let flakey = (
        1..1u64 << 30,
        path(),
        offset(),
        (0..=1000u32, 0..=u32::MAX / 2).prop_filter("not both 0", |&(u, d)| u + d > 0),
        features(),
    )
        .prop_map(|(len, p, o, (up, down), feats)| {
            (
                len,
                "flakey".to_string(),
                format!("{} {o} {up} {down}{feats}", word(&p, false)),
            )
        });
    let delay = (
        1..1u64 << 30,
        prop::sample::select(vec![1usize, 2, 3]),
        prop::collection::vec((path(), offset(), any::<u32>()), 3),
    )
        .prop_map(|(len, classes, cs)| {
            let args: Vec<String> = cs[..classes]
                .iter()
                .map(|(p, o, ms)| format!("{} {o} {ms}", word(p, false)))
                .collect();
            (len, "delay".to_string(), args.join(" "))
        });
    prop_oneof![linear, striped, plain, flakey, delay]
}

/// dm-flakey's optional `<#features> <features>…`, valid combinations only,
/// in any order (with a leading space when present).
fn features() -> impl Strategy<Value = String> {
    (
        any::<bool>(),
        0..3u8,
        prop::option::of((1..=u32::MAX, any::<bool>(), any::<u8>(), any::<u32>())),
        prop_oneof![Just(0u32), 0..=1_000_000_000u32],
        prop_oneof![Just(0u32), 0..=1_000_000_000u32],
        any::<(bool, bool, bool)>(),
        any::<u64>(),
    )
        .prop_map(
            |(error_reads, writes, mut corrupt, mut rr, mut rw, (upper, omit, zero_rr), seed)| {
                // What dm-flakey refuses together.
                if writes != 0 {
                    rw = 0;
                    corrupt = corrupt.filter(|c| !c.1);
                }
                if error_reads {
                    rr = 0;
                    corrupt = corrupt.filter(|c| c.1);
                }
                let mut groups: Vec<String> = Vec::new();
                if error_reads {
                    groups.push(mixed("error_reads", upper));
                }
                match writes {
                    1 => groups.push(mixed("drop_writes", upper)),
                    2 => groups.push(mixed("error_writes", upper)),
                    _ => {}
                }
                if let Some((nth, w, value, flags)) = corrupt {
                    let dir = match (w, upper) {
                        (true, false) => "w",
                        (true, true) => "W",
                        (false, false) => "r",
                        (false, true) => "R",
                    };
                    groups.push(format!(
                        "{} {nth} {dir} {value} {flags}",
                        mixed("corrupt_bio_byte", upper)
                    ));
                }
                // A probability of 0 means "not set"; it may still be given.
                if rr > 0 || zero_rr {
                    groups.push(format!("{} {rr}", mixed("random_read_corrupt", upper)));
                }
                if rw > 0 {
                    groups.push(format!("random_write_corrupt {rw}"));
                }
                // Any order: rotate and maybe reverse, from the seed.
                let n = groups.len().max(1);
                groups.rotate_left(seed as usize % n);
                if seed & 1 << 63 != 0 {
                    groups.reverse();
                }
                let words: usize = groups.iter().map(|g| g.split(' ').count()).sum();
                if words == 0 && omit {
                    String::new()
                } else {
                    let mut s = format!(" {words}");
                    for g in groups {
                        s.push(' ');
                        s.push_str(&g);
                    }
                    s
                }
            },
        )
}

/// A table's text from its segments, with blank and comment lines and
/// uneven spacing, as a user might write it; and its total length.
fn table() -> impl Strategy<Value = (String, u64, usize)> {
    (
        prop::collection::vec((segment(), any::<(bool, bool)>()), 1..6),
        any::<bool>(),
    )
        .prop_map(|(segs, trailing_newline)| {
            let mut text = String::new();
            let mut start = 0;
            for ((len, ty, args), (comment, wide)) in &segs {
                if *comment {
                    text.push_str("# a comment\n\n");
                }
                let sep = if *wide { " \t " } else { " " };
                text.push_str(&format!("{start}{sep}{len}{sep}{ty}"));
                if !args.is_empty() {
                    text.push_str(sep);
                    text.push_str(args);
                }
                text.push('\n');
                start += len;
            }
            if !trailing_newline {
                text.pop();
            }
            (text, start, segs.len())
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn printing_and_parsing_again_gives_the_same_table((text, total, segments) in table()) {
        let t = Table::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        prop_assert_eq!(t.total_sectors(), total);
        prop_assert_eq!(t.segments().len(), segments);

        let printed = t.to_string();
        let again = Table::parse(&printed).unwrap_or_else(|e| panic!("{e}\n{printed}"));
        prop_assert_eq!(&again, &t);
        prop_assert_eq!(again.to_string(), printed.clone());
        prop_assert_eq!(again.devices(), t.devices());
        prop_assert_eq!(again.extents(), t.extents());
        prop_assert_eq!(again.total_sectors(), total);
        for (a, b) in again.segments().iter().zip(t.segments()) {
            prop_assert_eq!((a.start, a.len, a.target.name()), (b.start, b.len, b.target.name()));
        }
    }
}
