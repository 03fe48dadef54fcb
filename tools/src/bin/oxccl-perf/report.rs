//! The table, printed exactly as nccl-tests prints it, and the JSON report. Pure string building.

use std::fmt::Write as _;

use crate::args::{Options, Step};

/// One timed mode (out-of-place or in-place) of one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Measure {
    /// Slowest rank's average time per call, in microseconds.
    pub time_us: f64,
    /// bytes / time, in GB/s (10^9 bytes).
    pub algbw: f64,
    /// algbw times the collective's bus factor.
    pub busbw: f64,
    /// Wrong elements summed over ranks; `None` when checking is off.
    pub wrong: Option<u64>,
}

impl Measure {
    /// Builds the bandwidths from the size, the time and the bus factor.
    pub(crate) fn new(bytes: usize, time_us: f64, factor: f64, wrong: Option<u64>) -> Measure {
        let algbw = if time_us > 0.0 {
            bytes as f64 / time_us / 1e3
        } else {
            0.0
        };
        Measure {
            time_us,
            algbw,
            busbw: algbw * factor,
            wrong,
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    /// Message size in bytes (count * element size).
    pub bytes: usize,
    /// Elements per rank.
    pub count: usize,
    /// Element type name, as nccl-tests spells it ("float", "int32", ...).
    pub dtype: &'static str,
    /// Operator name ("sum", ...; "none" for collectives that do not reduce).
    pub op: &'static str,
    /// Root rank; -1 for rootless collectives.
    pub root: i64,
    /// Separate send and receive buffers.
    pub oop: Measure,
    /// One buffer, in place; `None` for a collective without an in-place form (printed N/A).
    pub ip: Option<Measure>,
    /// The algorithm, when it changes from row to row (printed after the nccl-tests columns).
    pub algorithm: Option<String>,
}

impl Row {
    /// The measured modes: out of place, then in place where there is one.
    pub(crate) fn measures(&self) -> impl Iterator<Item = &Measure> {
        std::iter::once(&self.oop).chain(self.ip.as_ref())
    }
}

/// nccl-tests' time column: fewer decimals as the time grows, always 7 wide.
pub(crate) fn format_time(us: f64) -> String {
    if us >= 10000.0 {
        format!("{us:7.0}")
    } else if us >= 100.0 {
        format!("{us:7.1}")
    } else {
        format!("{us:7.2}")
    }
}

/// C's `%g` (6 significant digits, trailing zeros dropped), as nccl-tests' summary lines use.
pub(crate) fn format_g(x: f64) -> String {
    if x == 0.0 {
        return "0".into();
    }
    if !x.is_finite() {
        return if x.is_nan() {
            "nan".into()
        } else if x > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let sci = format!("{x:.5e}");
    let (mant, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{}e{sign}{:02}", trim(mant.to_string()), exp.abs())
    } else {
        let decimals = (5 - exp).max(0) as usize;
        trim(format!("{x:.decimals$}"))
    }
}

/// The first header line (nccl-tests' `# nThread ...`).
pub(crate) fn config_line(o: &Options) -> String {
    let (step, how) = match o.step {
        Step::Factor(f) => (f, "factor"),
        Step::Bytes(b) => (b, "bytes"),
    };
    format!(
        "# nThread 1 nGpus 1 minBytes {} maxBytes {} step: {}({}) warmup iters: {} iters: {} agg iters: 1 validation: {} graph: 0",
        o.minbytes,
        o.maxbytes,
        step,
        how,
        o.warmup,
        o.iters,
        u8::from(o.check)
    )
}

/// One `# Using devices` line.
pub(crate) fn device_line(rank: usize, pid: u32, host: &str, transport: &str) -> String {
    format!("#  Rank {rank:2} Group  0 Pid {pid:6} on {host:>10} device cpu [{transport}]")
}

/// The three column-title lines of the table; `algorithm` adds the trailing column's title.
pub(crate) fn table_header(algorithm: bool) -> [String; 3] {
    let mut lines = [
        format!(
            "# {:>10}  {:>12}  {:>8}  {:>6}  {:>6}           out-of-place                       in-place          ",
            "", "", "", "", ""
        ),
        format!(
            "# {:>10}  {:>12}  {:>8}  {:>6}  {:>6}  {:>7}  {:>6}  {:>6} {:>6}  {:>7}  {:>6}  {:>6} {:>6}",
            "size",
            "count",
            "type",
            "redop",
            "root",
            "time",
            "algbw",
            "busbw",
            "#wrong",
            "time",
            "algbw",
            "busbw",
            "#wrong"
        ),
        format!(
            "# {:>10}  {:>12}  {:>8}  {:>6}  {:>6}  {:>7}  {:>6}  {:>6}  {:>5}  {:>7}  {:>6}  {:>6}  {:>5}",
            "(B)",
            "(elements)",
            "",
            "",
            "",
            "(us)",
            "(GB/s)",
            "(GB/s)",
            "",
            "(us)",
            "(GB/s)",
            "(GB/s)",
            ""
        ),
    ];
    if algorithm {
        lines[1].push_str("  algorithm");
    }
    lines
}

fn measure_cols(m: Option<&Measure>) -> String {
    let Some(m) = m else {
        return format!("  {:>7}  {:>6}  {:>6}  {:>5}", "N/A", "N/A", "N/A", "N/A");
    };
    let wrong = m.wrong.map_or_else(|| "N/A".to_string(), |w| w.to_string());
    format!(
        "  {}  {:6.2}  {:6.2}  {:>5}",
        format_time(m.time_us),
        m.algbw,
        m.busbw,
        wrong
    )
}

/// One table row, as nccl-tests prints it (then the algorithm, when rows differ in it).
pub(crate) fn format_row(r: &Row) -> String {
    let mut s = format!(
        "{:12}  {:12}  {:>8}  {:>6}  {:6}{}{}",
        r.bytes,
        r.count,
        r.dtype,
        r.op,
        r.root,
        measure_cols(Some(&r.oop)),
        measure_cols(r.ip.as_ref())
    );
    if let Some(a) = &r.algorithm {
        let _ = write!(s, "  {a:>9}");
    }
    s
}

/// nccl-tests' average bus bandwidth: the mean busbw over every row's measured modes.
pub(crate) fn avg_busbw(rows: &[Row]) -> f64 {
    let (sum, n) = rows
        .iter()
        .flat_map(Row::measures)
        .fold((0.0, 0usize), |(s, n), m| (s + m.busbw, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// Total wrong elements over every row and mode.
pub(crate) fn total_wrong(rows: &[Row]) -> u64 {
    rows.iter()
        .flat_map(Row::measures)
        .map(|m| m.wrong.unwrap_or(0))
        .sum()
}

/// The closing lines (`# Out of bounds values`, `# Avg bus bandwidth`, and `# Errors` when any).
pub(crate) fn footer(rows: &[Row]) -> Vec<String> {
    let wrong = total_wrong(rows);
    let mut out = vec![
        format!(
            "# {:<20} : {} {}",
            "Out of bounds values",
            wrong,
            if wrong > 0 { "FAILED" } else { "OK" }
        ),
        format!(
            "# {:<20} : {} ",
            "Avg bus bandwidth",
            format_g(avg_busbw(rows))
        ),
    ];
    if wrong > 0 {
        out.push(format!("# Errors: {wrong} wrong elements"));
    }
    out.push("#".into());
    out
}

/// A JSON string literal.
pub(crate) fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A JSON number (non-finite values become null, which JSON has no number for).
fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x}")
    } else {
        "null".into()
    }
}

fn json_measure(m: &Measure) -> String {
    format!(
        "{{\"time_us\":{},\"algbw\":{},\"busbw\":{},\"wrong\":{}}}",
        json_num(m.time_us),
        json_num(m.algbw),
        json_num(m.busbw),
        m.wrong
            .map_or_else(|| "null".to_string(), |w| w.to_string())
    )
}

/// What the JSON report says besides the flags and the rows.
pub(crate) struct RunInfo<'a> {
    /// Number of ranks.
    pub nranks: usize,
    /// The algorithm of every row, or "per-size" (each row then names its own).
    pub algorithm: &'a str,
    /// The transport asked for ("auto" when none was).
    pub transport: &'a str,
}

/// The whole JSON report: one object with the config, every row and the summary.
pub(crate) fn json_report(o: &Options, info: &RunInfo<'_>, rows: &[Row]) -> String {
    let (stepfactor, stepbytes) = match o.step {
        Step::Factor(f) => (f.to_string(), "null".to_string()),
        Step::Bytes(b) => ("null".to_string(), b.to_string()),
    };
    let names = |v: Vec<&str>| v.iter().map(|s| json_str(s)).collect::<Vec<_>>().join(",");
    let mut s = String::new();
    let _ = write!(
        s,
        "{{\"tool\":\"oxccl-perf\",\"collective\":{},\"nranks\":{},\"algorithm\":{},\"transport\":{},\
         \"minbytes\":{},\"maxbytes\":{},\"stepfactor\":{},\"stepbytes\":{},\"iters\":{},\"warmup_iters\":{},\
         \"check\":{},\"root\":{},\"datatypes\":[{}],\"ops\":[{}],\"rows\":[",
        json_str(o.collective.name()),
        info.nranks,
        json_str(info.algorithm),
        json_str(info.transport),
        o.minbytes,
        o.maxbytes,
        stepfactor,
        stepbytes,
        o.iters,
        o.warmup,
        o.check,
        o.root.map_or(-1, |r| r as i64),
        names(o.dtypes.iter().map(|d| d.name()).collect()),
        names(if o.collective.reduces() {
            o.ops.iter().map(|op| op.name()).collect()
        } else {
            vec!["none"]
        }),
    );
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "\n{{\"size\":{},\"count\":{},\"type\":{},\"redop\":{},\"root\":{},\"algorithm\":{},\"oop\":{},\"ip\":{}}}",
            r.bytes,
            r.count,
            json_str(r.dtype),
            json_str(r.op),
            r.root,
            json_str(r.algorithm.as_deref().unwrap_or(info.algorithm)),
            json_measure(&r.oop),
            r.ip.as_ref()
                .map_or_else(|| "null".to_string(), json_measure)
        );
    }
    let _ = writeln!(
        s,
        "],\"avg_busbw\":{},\"wrong\":{}}}",
        json_num(avg_busbw(rows)),
        total_wrong(rows)
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            bytes: 8,
            count: 2,
            dtype: "float",
            op: "sum",
            root: -1,
            oop: Measure {
                time_us: 4.21,
                algbw: 0.0,
                busbw: 0.0,
                wrong: Some(0),
            },
            ip: Some(Measure {
                time_us: 3.90,
                algbw: 0.0,
                busbw: 0.0,
                wrong: Some(0),
            }),
            algorithm: None,
        }
    }

    #[test]
    fn row_matches_nccl_tests_layout() {
        assert_eq!(
            format_row(&row()),
            "           8             2     float     sum      -1     4.21    0.00    0.00      0     3.90    0.00    0.00      0"
        );
    }

    #[test]
    fn header_columns_line_up_with_rows() {
        let [top, names, units] = table_header(false);
        let r = format_row(&row());
        assert_eq!(names.len(), r.len());
        assert_eq!(units.len(), r.len());
        assert!(top.contains("out-of-place") && top.contains("in-place"));
        // Every column title ends where its column ends.
        for title in ["size", "count", "type", "redop", "root", "busbw"] {
            let end = names.find(title).unwrap() + title.len();
            assert_ne!(
                r.as_bytes()[end - 1],
                b' ',
                "column {title} misaligned:\n{names}\n{r}"
            );
            assert_eq!(
                r.as_bytes()[end],
                b' ',
                "column {title} misaligned:\n{names}\n{r}"
            );
        }
    }

    #[test]
    fn time_column_widths() {
        assert_eq!(format_time(4.214), "   4.21");
        assert_eq!(format_time(123.45), "  123.5");
        assert_eq!(format_time(12345.6), "  12346");
        assert_eq!(format_time(1234567.0), "1234567");
    }

    #[test]
    fn unchecked_rows_say_na() {
        let mut r = row();
        r.oop.wrong = None;
        r.ip.as_mut().unwrap().wrong = None;
        assert!(format_row(&r).ends_with("  N/A     3.90    0.00    0.00    N/A"));
    }

    #[test]
    fn no_in_place_form_prints_na_and_is_left_out_of_the_average() {
        let mut r = row();
        r.op = "none";
        r.oop.busbw = 2.0;
        r.ip = None;
        let s = format_row(&r);
        assert_eq!(s.len(), format_row(&row()).len());
        assert!(
            s.ends_with("      0      N/A     N/A     N/A    N/A"),
            "{s:?}"
        );
        assert_eq!(avg_busbw(&[r]), 2.0);
    }

    #[test]
    fn algorithm_column_follows_the_nccl_tests_ones() {
        let mut r = row();
        r.algorithm = Some("rhd".into());
        let s = format_row(&r);
        assert!(s.starts_with(&format_row(&row())));
        assert!(s.ends_with("        rhd"));
        let [_, names, _] = table_header(true);
        let end = names.find("algorithm").unwrap() + "algorithm".len();
        assert_eq!(end, s.len(), "\n{names}\n{s}");
    }

    #[test]
    fn bandwidths() {
        let m = Measure::new(1_000_000, 1000.0, 1.5, Some(0));
        assert!((m.algbw - 1.0).abs() < 1e-12);
        assert!((m.busbw - 1.5).abs() < 1e-12);
        assert_eq!(Measure::new(8, 0.0, 1.0, None).algbw, 0.0);
    }

    #[test]
    fn percent_g() {
        assert_eq!(format_g(0.0), "0");
        assert_eq!(format_g(1.2345), "1.2345");
        assert_eq!(format_g(0.940347123), "0.940347");
        assert_eq!(format_g(12.0), "12");
        assert_eq!(format_g(123456789.0), "1.23457e+08");
        assert_eq!(format_g(0.00001234), "1.234e-05");
        assert_eq!(format_g(999999.7), "1e+06");
    }

    #[test]
    fn footer_reports_errors() {
        let mut r = row();
        r.oop.busbw = 1.0;
        r.ip.as_mut().unwrap().busbw = 2.0;
        let f = footer(std::slice::from_ref(&r));
        assert_eq!(f[0], "# Out of bounds values : 0 OK");
        assert_eq!(f[1], "# Avg bus bandwidth    : 1.5 ");
        r.ip.as_mut().unwrap().wrong = Some(3);
        let f = footer(&[r]);
        assert_eq!(f[0], "# Out of bounds values : 3 FAILED");
        assert_eq!(f[2], "# Errors: 3 wrong elements");
    }

    #[test]
    fn json_escapes() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
        assert_eq!(json_num(f64::NAN), "null");
    }
}
