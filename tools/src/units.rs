//! Units on the command line: sizes (`64K`, `1G`, binary multiples as nccl-tests), times (`5us`)
//! and bandwidths (`12.5GB/s`). Each parser fits clap's `value_parser`.

/// A byte count such as `8`, `64K`, `64M`, `1G`, `2T` (binary multiples, as nccl-tests; the
/// suffix in either case).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let bad = || format!("bad size '{s}': expected a number with an optional K, M, G or T suffix");
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: usize = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1usize << shift)
        .ok_or_else(|| format!("size '{s}' is too large"))
}

/// A duration in seconds such as `5us`, `1.5ms`, `2e-6` (no unit: seconds).
pub fn parse_time(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let (num, mult) = [("ns", 1e-9), ("us", 1e-6), ("ms", 1e-3), ("s", 1.0)]
        .iter()
        .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((t, 1.0));
    match num.trim().parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v * mult),
        _ => Err(format!("bad time '{s}': expected e.g. 5us, 1.5ms, 2e-6")),
    }
}

/// A bandwidth in bytes per second such as `12.5GB/s`, `800MB/s`, `10GiB/s`, `1e9`.
pub fn parse_bw(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let units = [
        ("GiB/s", (1u64 << 30) as f64),
        ("MiB/s", (1u64 << 20) as f64),
        ("GB/s", 1e9),
        ("MB/s", 1e6),
        ("KB/s", 1e3),
        ("B/s", 1.0),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| t.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((t, 1.0));
    match num.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v * mult),
        _ => Err(format!(
            "bad bandwidth '{s}': expected e.g. 12.5GB/s, 800MB/s"
        )),
    }
}

/// A factor of at least 1 (`--oversub`, `--cache-speedup`).
pub fn parse_factor(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|f| *f >= 1.0 && f.is_finite())
        .ok_or_else(|| format!("bad factor '{s}': expected a number >= 1"))
}

/// `0` or `1` (nccl-tests' boolean flags: `-c`, `-z`).
pub fn parse_bool01(s: &str) -> Result<bool, String> {
    match s.trim() {
        "0" => Ok(false),
        "1" => Ok(true),
        _ => Err(format!("bad value '{s}': expected 0 or 1")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("8"), Ok(8));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size(" 3k "), Ok(3 << 10));
        for bad in ["", "M", "12X", "-1", "1.5M", "99999999999999999999G"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("16777216T").unwrap_err().contains("too large"));
    }

    #[test]
    fn times_bandwidths_factors() {
        let near = |a: Result<f64, String>, b: f64| (a.unwrap() - b).abs() < 1e-15;
        assert!(near(parse_time("5us"), 5e-6));
        assert!(near(parse_time("1.5ms"), 1.5e-3));
        assert!(near(parse_time("3ns"), 3e-9));
        assert_eq!(parse_time("2"), Ok(2.0));
        assert!(parse_time("-1s").is_err());
        assert!(parse_time("soon").is_err());
        assert_eq!(parse_bw("12.5GB/s"), Ok(12.5e9));
        assert_eq!(parse_bw("1GiB/s"), Ok((1u64 << 30) as f64));
        assert_eq!(parse_bw("800MB/s"), Ok(800e6));
        assert!(parse_bw("fast").is_err());
        assert!(parse_bw("0GB/s").is_err());
        assert_eq!(parse_factor("2"), Ok(2.0));
        assert!(parse_factor("0.5").is_err());
        assert_eq!(parse_bool01("1"), Ok(true));
        assert!(parse_bool01("2").is_err());
    }
}
