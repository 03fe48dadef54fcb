//! Logging to stderr, controlled by `OXCCL_DEBUG=WARN|INFO|TRACE` (default WARN).
//! Each line is prefixed with host, pid and rank: `myhost:1234:2 oxccl INFO ...`.

use std::sync::OnceLock;

/// Log levels, in increasing verbosity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Level {
    /// Nothing at all (`OXCCL_DEBUG=NONE`).
    None = 0,
    /// Problems worth knowing about (the default).
    Warn = 1,
    /// What was chosen at init and per call.
    Info = 2,
    /// Everything, per step.
    Trace = 3,
}

static LEVEL: OnceLock<Level> = OnceLock::new();

fn parse(s: &str) -> Level {
    match s.trim().to_ascii_uppercase().as_str() {
        "NONE" | "OFF" | "0" => Level::None,
        "INFO" | "2" => Level::Info,
        "TRACE" | "3" | "ALL" => Level::Trace,
        _ => Level::Warn,
    }
}

/// The level in force.
pub(crate) fn level() -> Level {
    *LEVEL.get_or_init(|| {
        std::env::var("OXCCL_DEBUG")
            .map(|v| parse(&v))
            .unwrap_or(Level::Warn)
    })
}

/// Whether messages at `l` are printed.
pub(crate) fn enabled(l: Level) -> bool {
    l != Level::None && l <= level()
}

fn host() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(crate::sys::hostname)
}

/// Writes one line; use the `warn!`/`info!`/`trace!` macros instead.
pub(crate) fn write(l: Level, rank: Option<usize>, args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let lvl = match l {
        Level::Warn => "WARN",
        Level::Info => "INFO",
        Level::Trace => "TRACE",
        Level::None => return,
    };
    let r = rank.map(|r| r.to_string()).unwrap_or_else(|| "-".into());
    let line = format!(
        "{}:{}:{} oxccl {lvl} {args}\n",
        host(),
        std::process::id(),
        r
    );
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// `warn!(rank_option, "fmt", args...)`
macro_rules! warn_ {
    ($rank:expr, $($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Warn) {
            $crate::log::write($crate::log::Level::Warn, $rank, format_args!($($arg)*))
        }
    };
}

/// `info!(rank_option, "fmt", args...)`
macro_rules! info {
    ($rank:expr, $($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Info) {
            $crate::log::write($crate::log::Level::Info, $rank, format_args!($($arg)*))
        }
    };
}

/// `trace!(rank_option, "fmt", args...)`
macro_rules! trace {
    ($rank:expr, $($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Trace) {
            $crate::log::write($crate::log::Level::Trace, $rank, format_args!($($arg)*))
        }
    };
}

// `warn` is also a built-in attribute: the macro is defined under another name, so that naming
// it here is unambiguous, and used as `crate::warn!`.
pub(crate) use {info, trace, warn_ as warn};

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn parses_levels() {
        assert_eq!(parse("info"), Level::Info);
        assert_eq!(parse("TRACE"), Level::Trace);
        assert_eq!(parse("warn"), Level::Warn);
        assert_eq!(parse("bogus"), Level::Warn);
        assert_eq!(parse("none"), Level::None);
    }
}
