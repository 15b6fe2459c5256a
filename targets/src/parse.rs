//! The dmsetup table syntax, read as `dmsetup` and the kernel read it.

use std::path::PathBuf;

use crate::error::{TableError, TableErrorKind as K};
use crate::table::{DevIdx, Segment, Stripe, Table, Target};

impl Table {
    /// Parses and validates a table: one `<start> <length> <type> <args...>`
    /// line per segment, blank lines and lines starting with `#` ignored.
    ///
    /// Checks everything that needs no I/O, with the kernel's rules: known
    /// target types, argument counts, numbers, non-empty segments that start
    /// at 0 and adjoin, and dm-stripe's divisibility rules. Backing files are
    /// checked separately by [`Table::check_devices`].
    pub fn parse(text: &str) -> Result<Table, TableError> {
        let mut table = Table {
            segments: Vec::new(),
            devices: Vec::new(),
            total_sectors: 0,
        };
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let err = |kind| TableError::new(line, raw, kind);
            let words = split_args(trimmed);
            if words.len() < 3 {
                return Err(err(K::Syntax));
            }
            let start = sectors("start", &words[0]).map_err(err)?;
            let len = sectors("length", &words[1]).map_err(err)?;
            let args = &words[3..];
            // dm_table_add_target's order: zero length, unknown type, gap,
            // then the target's own constructor.
            if len == 0 {
                return Err(err(K::ZeroLength));
            }
            let kind = words[2].as_str();
            if !matches!(kind, "linear" | "striped" | "zero" | "error") {
                return Err(err(K::UnknownTarget(kind.to_string())));
            }
            if start != table.total_sectors {
                return Err(err(K::Gap {
                    start,
                    expected: table.total_sectors,
                }));
            }
            let target = match kind {
                "linear" => table.linear(args),
                "striped" => table.striped(args, len),
                "zero" => no_args("zero", args).map(|()| Target::Zero),
                _ => no_args("error", args).map(|()| Target::Error),
            }
            .map_err(err)?;
            table.total_sectors = start
                .checked_add(len)
                .filter(|end| end.checked_mul(crate::SECTOR_SIZE).is_some())
                .ok_or_else(|| err(K::TooLarge))?;
            table.segments.push(Segment {
                start,
                len,
                target,
                line,
            });
        }
        if table.segments.is_empty() {
            return Err(TableError::new(0, "", K::Empty));
        }
        Ok(table)
    }

    /// dm-linear's constructor: `<dev> <offset>`.
    fn linear(&mut self, args: &[String]) -> Result<Target, K> {
        if args.len() != 2 {
            return Err(K::ArgCount {
                target: "linear",
                got: args.len(),
                expected: "2 (<dev> <offset>)",
            });
        }
        let offset = digits(&args[1]).ok_or_else(|| K::InvalidDeviceSector(args[1].clone()))?;
        let dev = self.device(&args[0])?;
        Ok(Target::Linear { dev, offset })
    }

    /// dm-stripe's constructor, checks in the kernel's order.
    fn striped(&mut self, args: &[String], len: u64) -> Result<Target, K> {
        if args.len() < 2 {
            return Err(K::ArgCount {
                target: "striped",
                got: args.len(),
                expected: "at least 2 (<#stripes> <chunk_size> (<dev> <offset>)+)",
            });
        }
        let stripes = kstrtouint(&args[0])
            .filter(|&n| n > 0)
            .ok_or_else(|| K::InvalidStripeCount(args[0].clone()))?;
        let chunk = kstrtouint(&args[1])
            .filter(|&n| n > 0)
            .ok_or_else(|| K::InvalidChunkSize(args[1].clone()))?;
        if !len.is_multiple_of(u64::from(stripes)) {
            return Err(K::LengthNotDivisibleByStripes { len, stripes });
        }
        let width = len / u64::from(stripes);
        if !width.is_multiple_of(u64::from(chunk)) {
            return Err(K::LengthNotDivisibleByChunk {
                len,
                stripes,
                width,
                chunk: chunk.into(),
            });
        }
        let expected = 2 * stripes as usize;
        if args.len() - 2 != expected {
            return Err(K::StripeDestinations {
                stripes,
                expected,
                got: args.len() - 2,
            });
        }
        let mut out = Vec::with_capacity(stripes as usize);
        for pair in args[2..].chunks(2) {
            let offset = digits(&pair[1]).ok_or_else(|| K::BadNumber {
                what: "stripe offset",
                value: pair[1].clone(),
            })?;
            let dev = self.device(&pair[0])?;
            out.push(Stripe { dev, offset });
        }
        Ok(Target::Striped {
            chunk: chunk.into(),
            stripes: out,
        })
    }

    /// Index of a backing path, adding it on first use (dm_get_device shares
    /// one reference per device across a table).
    fn device(&mut self, path: &str) -> Result<DevIdx, K> {
        if path.is_empty() {
            return Err(K::EmptyPath);
        }
        let path = PathBuf::from(path);
        if let Some(i) = self.devices.iter().position(|p| *p == path) {
            return Ok(i);
        }
        self.devices.push(path);
        Ok(self.devices.len() - 1)
    }
}

fn no_args(target: &'static str, args: &[String]) -> Result<(), K> {
    if args.is_empty() {
        Ok(())
    } else {
        Err(K::NoArgsExpected {
            target,
            got: args.len(),
        })
    }
}

fn sectors(what: &'static str, s: &str) -> Result<u64, K> {
    digits(s).ok_or_else(|| K::BadNumber {
        what,
        value: s.to_string(),
    })
}

/// A plain unsigned decimal that fits in 64 bits (the kernel's `%llu` with
/// trailing garbage rejected). Signs and other bases are refused: a negative
/// sector count is never what a user meant.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `kstrtouint(s, 10, ..)`: decimal, optional leading `+`, fits in 32 bits.
fn kstrtouint(s: &str) -> Option<u32> {
    let s = s.strip_prefix('+').unwrap_or(s);
    digits(s).and_then(|n| u32::try_from(n).ok())
}

/// Splits on white space like the kernel's `dm_split_args`: a backslash
/// makes the next character (white space included) part of the word.
pub(crate) fn split_args(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                in_word = true;
                if let Some(next) = chars.next() {
                    cur.push(next);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}
