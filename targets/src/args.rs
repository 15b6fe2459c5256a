//! Reading target arguments the way the kernel's constructors do.

/// A plain unsigned decimal that fits in 64 bits (the kernel's `%llu` with
/// trailing garbage rejected). Signs and other bases are refused: a negative
/// sector count is never what a user meant.
pub fn digits(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `kstrtouint(s, 10, ..)`: decimal, optional leading `+`, fits in 32 bits.
pub fn kstrtouint(s: &str) -> Option<u32> {
    let s = s.strip_prefix('+').unwrap_or(s);
    digits(s).and_then(|n| u32::try_from(n).ok())
}

/// The kernel's `sscanf("%u%c")`: digits only, keeping the low 32 bits.
pub fn scan_u32(s: &str) -> Option<u32> {
    digits(s).map(|v| v as u32)
}

/// `dm_read_arg`: a `%u` in `min..=max`, or the given error message.
pub fn read_arg(s: Option<&String>, min: u32, max: u32, error: &str) -> Result<u32, String> {
    s.and_then(|s| scan_u32(s))
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| error.to_string())
}

/// `sscanf("%llu%c")` for a device sector, with the kernel's message.
pub fn device_sector(s: &str) -> Result<u64, String> {
    digits(s).ok_or_else(|| format!("Invalid device sector {s:?}"))
}

/// Splits on white space like the kernel's `dm_split_args`: a backslash
/// makes the next character (white space included) part of the word.
pub fn split_args(line: &str) -> Vec<String> {
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

/// Escapes a path the way `dm_split_args` reads it back: backslash before
/// white space and before a backslash.
pub fn escape_path(p: &std::path::Path) -> String {
    let mut out = String::new();
    for c in p.to_string_lossy().chars() {
        if c.is_whitespace() || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
