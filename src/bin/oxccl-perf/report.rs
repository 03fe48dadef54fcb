//! The table, printed exactly as nccl-tests prints it, and the JSON report. Pure string building.

use std::fmt::Write as _;

use crate::args::{Options, Step};

/// One timed mode (out-of-place or in-place) of one row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measure {
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
    pub fn new(bytes: usize, time_us: f64, factor: f64, wrong: Option<u64>) -> Measure {
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
pub struct Row {
    /// Message size in bytes (count * element size).
    pub bytes: usize,
    /// Elements per rank.
    pub count: usize,
    /// Element type name, as nccl-tests spells it ("float", "int32", ...).
    pub dtype: &'static str,
    /// Operator name ("sum", ...).
    pub op: &'static str,
    /// Root rank; -1 for rootless collectives.
    pub root: i64,
    /// Separate send and receive buffers.
    pub oop: Measure,
    /// One buffer, reduced in place.
    pub ip: Measure,
}

/// nccl-tests' time column: fewer decimals as the time grows, always 7 wide.
pub fn format_time(us: f64) -> String {
    if us >= 10000.0 {
        format!("{us:7.0}")
    } else if us >= 100.0 {
        format!("{us:7.1}")
    } else {
        format!("{us:7.2}")
    }
}

/// C's `%g` (6 significant digits, trailing zeros dropped), as nccl-tests' summary lines use.
pub fn format_g(x: f64) -> String {
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
pub fn config_line(o: &Options) -> String {
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
pub fn device_line(rank: usize, pid: u32, host: &str, transport: &str) -> String {
    format!("#  Rank {rank:2} Group  0 Pid {pid:6} on {host:>10} device cpu [{transport}]")
}

/// The three column-title lines of the table.
pub fn table_header() -> [String; 3] {
    [
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
    ]
}

fn measure_cols(m: &Measure) -> String {
    let wrong = m.wrong.map_or_else(|| "N/A".to_string(), |w| w.to_string());
    format!(
        "  {}  {:6.2}  {:6.2}  {:>5}",
        format_time(m.time_us),
        m.algbw,
        m.busbw,
        wrong
    )
}

/// One table row, as nccl-tests prints it.
pub fn format_row(r: &Row) -> String {
    format!(
        "{:12}  {:12}  {:>8}  {:>6}  {:6}{}{}",
        r.bytes,
        r.count,
        r.dtype,
        r.op,
        r.root,
        measure_cols(&r.oop),
        measure_cols(&r.ip)
    )
}

/// nccl-tests' average bus bandwidth: the mean busbw over every row's two modes.
pub fn avg_busbw(rows: &[Row]) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    rows.iter().map(|r| r.oop.busbw + r.ip.busbw).sum::<f64>() / (2 * rows.len()) as f64
}

/// Total wrong elements over every row and mode.
pub fn total_wrong(rows: &[Row]) -> u64 {
    rows.iter()
        .map(|r| r.oop.wrong.unwrap_or(0) + r.ip.wrong.unwrap_or(0))
        .sum()
}

/// The closing lines (`# Out of bounds values`, `# Avg bus bandwidth`, and `# Errors` when any).
pub fn footer(rows: &[Row]) -> Vec<String> {
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
pub fn json_str(s: &str) -> String {
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
pub struct RunInfo<'a> {
    /// Number of ranks.
    pub nranks: usize,
    /// `comm.algorithm_name()`.
    pub algorithm: &'a str,
    /// The transport asked for ("auto" when none was).
    pub transport: &'a str,
}

/// The whole JSON report: one object with the config, every row and the summary.
pub fn json_report(o: &Options, info: &RunInfo<'_>, rows: &[Row]) -> String {
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
         \"check\":{},\"datatypes\":[{}],\"ops\":[{}],\"rows\":[",
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
        names(o.dtypes.iter().map(|d| d.name()).collect()),
        names(o.ops.iter().map(|op| op.name()).collect()),
    );
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        let _ = write!(
            s,
            "\n{{\"size\":{},\"count\":{},\"type\":{},\"redop\":{},\"root\":{},\"oop\":{},\"ip\":{}}}",
            r.bytes,
            r.count,
            json_str(r.dtype),
            json_str(r.op),
            r.root,
            json_measure(&r.oop),
            json_measure(&r.ip)
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
            ip: Measure {
                time_us: 3.90,
                algbw: 0.0,
                busbw: 0.0,
                wrong: Some(0),
            },
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
        let [top, names, units] = table_header();
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
        r.ip.wrong = None;
        assert!(format_row(&r).ends_with("  N/A     3.90    0.00    0.00    N/A"));
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
        r.ip.busbw = 2.0;
        let f = footer(std::slice::from_ref(&r));
        assert_eq!(f[0], "# Out of bounds values : 0 OK");
        assert_eq!(f[1], "# Avg bus bandwidth    : 1.5 ");
        r.ip.wrong = Some(3);
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
