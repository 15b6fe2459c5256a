//! The mapping against a sector-by-sector reference model, over random
//! tables and random requests, plus a write/read-back through the mapping
//! into in-memory backing "files".

use proptest::prelude::*;
use rdm_targets::{Op, Piece, PieceKind, Table};

const NDEV: usize = 3;

/// Where one device sector goes, computed the slow, obvious way.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum Model {
    Dev(usize, u64),
    Zero,
    Error,
}

fn model(table: &Table, sector: u64) -> (usize, Model) {
    let (i, seg) = table
        .segments()
        .iter()
        .enumerate()
        .find(|(_, s)| s.start <= sector && sector < s.start + s.len)
        .unwrap();
    let off = sector - seg.start;
    let m = match layout(table, i) {
        Layout::Linear(dev, offset) => Model::Dev(dev, offset + off),
        Layout::Striped(chunk, stripes) => {
            let n = stripes.len() as u64;
            let c = off / chunk;
            let (dev, offset) = stripes[(c % n) as usize];
            Model::Dev(dev, (c / n) * chunk + off % chunk + offset)
        }
        Layout::Zero => Model::Zero,
        Layout::Error => Model::Error,
    };
    (i, m)
}

/// A segment's layout, read back from its printed table line (the targets
/// themselves are opaque).
enum Layout {
    Linear(usize, u64),
    Striped(u64, Vec<(usize, u64)>),
    Zero,
    Error,
}

fn layout(table: &Table, seg: usize) -> Layout {
    let line = table.to_string().lines().nth(seg).unwrap().to_string();
    let w: Vec<&str> = line.split_whitespace().collect();
    let dev = |name: &str| {
        table
            .devices()
            .iter()
            .position(|p| p.to_str() == Some(name))
            .unwrap()
    };
    match w[2] {
        "linear" => Layout::Linear(dev(w[3]), w[4].parse().unwrap()),
        "striped" => Layout::Striped(
            w[4].parse().unwrap(),
            w[5..]
                .chunks(2)
                .map(|c| (dev(c[0]), c[1].parse().unwrap()))
                .collect(),
        ),
        "zero" => Layout::Zero,
        _ => Layout::Error,
    }
}

/// Random valid table text: linear, striped, zero and error segments over
/// three devices named d0..d2, non-overlapping per device.
fn table_text() -> impl Strategy<Value = String> {
    let seg = prop_oneof![
        (1u64..64, 0..NDEV).prop_map(|(len, d)| (0u8, len, d, 0u32, 0u64)),
        (
            1u32..5,
            prop::sample::select(vec![1u64, 2, 3, 8, 16, 24]),
            1u64..6,
            0..NDEV
        )
            .prop_map(|(n, chunk, per, d)| (1u8, u64::from(n) * chunk * per, d, n, chunk)),
        (1u64..40).prop_map(|len| (2u8, len, 0, 0, 0)),
        (1u64..40).prop_map(|len| (3u8, len, 0, 0, 0)),
    ];
    prop::collection::vec(seg, 1..6).prop_map(|segs| {
        let mut next_free = [5u64; NDEV];
        let mut start = 0;
        let mut text = String::new();
        for (kind, len, d, n, chunk) in segs {
            let body = match kind {
                0 => {
                    let off = next_free[d];
                    next_free[d] += len + 3;
                    format!("linear d{d} {off}")
                }
                1 => {
                    let width = len / u64::from(n);
                    let mut s = format!("striped {n} {chunk}");
                    for k in 0..n as usize {
                        let dev = (d + k) % NDEV;
                        s += &format!(" d{dev} {}", next_free[dev]);
                        next_free[dev] += width + 1;
                    }
                    s
                }
                2 => "zero".to_string(),
                _ => "error".to_string(),
            };
            text += &format!("{start} {len} {body}\n");
            start += len;
        }
        text
    })
}

fn table_and_request() -> impl Strategy<Value = (String, u64, u64)> {
    table_text().prop_flat_map(|text| {
        let total = Table::parse(&text).unwrap().total_sectors();
        (Just(text), 0..total).prop_flat_map(move |(text, s)| (Just(text), Just(s), 1..=total - s))
    })
}

fn device_sizes(t: &Table) -> Vec<u64> {
    let mut sizes = vec![0u64; t.devices().len()];
    for e in t.extents() {
        sizes[e.dev] = sizes[e.dev].max(e.start + e.len);
    }
    sizes
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn map_matches_model((text, sector, nr) in table_and_request()) {
        let t = Table::parse(&text).unwrap();
        let sizes = device_sizes(&t);
        let mut pieces = Vec::new();
        t.map(Op::Read, 0, sector, nr, &mut pieces).unwrap();
        // Coverage exactly once, in order.
        let mut expect_off = 0;
        for p in &pieces {
            prop_assert_eq!(p.buf_offset, expect_off);
            prop_assert!(p.len > 0 && p.len % 512 == 0);
            expect_off += p.len;
        }
        prop_assert_eq!(expect_off, nr * 512);
        // Every sector lands where the model says, inside its device.
        for p in &pieces {
            for k in 0..p.len / 512 {
                let s = sector + p.buf_offset / 512 + k;
                let (seg, want) = model(&t, s);
                prop_assert_eq!(p.segment, seg);
                let got = match p.kind {
                    PieceKind::Io { dev, dev_offset } => {
                        let ds = dev_offset / 512 + k;
                        prop_assert!(ds < sizes[dev], "beyond the device");
                        Model::Dev(dev, ds)
                    }
                    PieceKind::Zero => Model::Zero,
                    PieceKind::Error | PieceKind::Drop => Model::Error,
                    PieceKind::Serve { .. } => unreachable!("only remapping targets here"),
                };
                prop_assert_eq!(got, want, "sector {}", s);
            }
        }
        // No piece crosses a chunk boundary of a striped segment.
        for p in &pieces {
            if let Layout::Striped(chunk, _) = layout(&t, p.segment) {
                let seg_off = sector + p.buf_offset / 512 - t.segments()[p.segment].start;
                prop_assert!(seg_off % chunk + p.len / 512 <= chunk);
            }
        }
        // Range mapping (discard) covers the same device sectors.
        let mut ranges = Vec::new();
        t.map_range(Op::Discard, 0, sector, nr, &mut ranges).unwrap();
        prop_assert_eq!(ranges.iter().map(|p| p.len).sum::<u64>(), nr * 512);
        prop_assert!(ranges.len() <= pieces.len());
        let mut a = expand(&pieces);
        let mut b = expand(&ranges);
        a.sort();
        b.sort();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn out_of_range_requests_are_refused((text, sector, nr) in table_and_request()) {
        let t = Table::parse(&text).unwrap();
        let total = t.total_sectors();
        let mut out = Vec::new();
        prop_assert!(t.map(Op::Read, 0, sector, total - sector + 1, &mut out).is_err());
        prop_assert!(t.map(Op::Read, 0, total, 1, &mut out).is_err());
        prop_assert!(t.map(Op::Read, 0, sector, u64::MAX, &mut out).is_err());
        prop_assert!(out.is_empty(), "nothing of a refused request is mapped");
        prop_assert!(t.map(Op::Read, 0, sector, nr, &mut out).is_ok());
    }

    /// Bytes written through the mapping into in-memory devices read back
    /// identical through it, zero segments read zeros, and each device
    /// holds exactly what the model puts there.
    #[test]
    fn write_then_read_back((text, sector, nr) in table_and_request(), seed in any::<u8>()) {
        let t = Table::parse(&text).unwrap();
        let mut devs: Vec<Vec<u8>> = device_sizes(&t).iter().map(|s| vec![0u8; *s as usize * 512]).collect();
        let data: Vec<u8> = (0..nr * 512).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
        let mut pieces = Vec::new();
        t.map(Op::Read, 0, sector, nr, &mut pieces).unwrap();
        for p in &pieces {
            if let PieceKind::Io { dev, dev_offset } = p.kind {
                let (o, b, l) = (dev_offset as usize, p.buf_offset as usize, p.len as usize);
                devs[dev][o..o + l].copy_from_slice(&data[b..b + l]);
            }
        }
        let mut back = vec![0xAAu8; data.len()];
        for p in &pieces {
            let (b, l) = (p.buf_offset as usize, p.len as usize);
            match p.kind {
                PieceKind::Io { dev, dev_offset } => {
                    let o = dev_offset as usize;
                    back[b..b + l].copy_from_slice(&devs[dev][o..o + l]);
                }
                PieceKind::Zero => back[b..b + l].fill(0),
                PieceKind::Error | PieceKind::Drop => {}
                PieceKind::Serve { .. } => unreachable!("only remapping targets here"),
            }
        }
        for s in 0..nr {
            let (_, m) = model(&t, sector + s);
            let r = (s * 512) as usize..(s * 512 + 512) as usize;
            match m {
                Model::Dev(d, ds) => {
                    prop_assert_eq!(&back[r.clone()], &data[r.clone()]);
                    let o = ds as usize * 512;
                    prop_assert_eq!(&devs[d][o..o + 512], &data[r]);
                }
                Model::Zero => prop_assert!(back[r].iter().all(|&x| x == 0)),
                Model::Error => prop_assert!(back[r].iter().all(|&x| x == 0xAA)),
            }
        }
    }
}

fn expand(pieces: &[Piece]) -> Vec<(u8, usize, u64)> {
    let mut v = Vec::new();
    for p in pieces {
        for k in 0..p.len / 512 {
            v.push(match p.kind {
                PieceKind::Io { dev, dev_offset } => (0, dev, dev_offset / 512 + k),
                PieceKind::Zero => (1, p.segment, p.buf_offset / 512 + k),
                PieceKind::Error | PieceKind::Drop => (2, p.segment, p.buf_offset / 512 + k),
                PieceKind::Serve { .. } => (3, p.segment, p.buf_offset / 512 + k),
            });
        }
    }
    v
}

#[test]
fn striped_layout_matches_dm_stripe_by_hand() {
    // 3 stripes of chunk 2: chunks 0,1,2 go to stripes 0,1,2, chunk 3 to
    // stripe 0 at its second chunk, and so on.
    let t = Table::parse("0 12 striped 3 2 d0 100 d1 200 d2 300").unwrap();
    let mut p = Vec::new();
    t.map(Op::Read, 0, 1, 8, &mut p).unwrap();
    let got: Vec<(usize, u64, u64)> = p
        .iter()
        .map(|p| match p.kind {
            PieceKind::Io { dev, dev_offset } => (dev, dev_offset / 512, p.len / 512),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (0, 101, 1),
            (1, 200, 2),
            (2, 300, 2),
            (0, 102, 2),
            (1, 202, 1)
        ]
    );
}
