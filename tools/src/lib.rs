//! What oxccl's two command-line tools share: the parsers of sizes, times and bandwidths that
//! their flags take (clap value parsers), so that `-b 64M` means the same in both.
//!
//! The tools themselves are `src/bin/oxccl-perf/` (collective bandwidth, printed as nccl-tests
//! prints it) and `src/bin/oxccl-sim/` (the simulator's command line).

pub mod units;

/// What a tool's command line holds, once clap has read it.
#[derive(Debug)]
pub enum Flags<T> {
    /// `-h`/`--help`: this text, to print on stdout before exiting with 0.
    Help(String),
    /// The flags.
    Given(T),
}

impl<T> Flags<T> {
    /// The flags; `None` for help.
    pub fn given(self) -> Option<T> {
        match self {
            Flags::Help(_) => None,
            Flags::Given(t) => Some(t),
        }
    }
}

/// Reads `args` (without the program name) with `cmd`: help is not an error here, and an error
/// is one line (clap's message without its `error:` prefix and usage lines), pointing at `-h`;
/// both tools exit with 1 on it.
pub fn read_flags<T: clap::FromArgMatches>(
    cmd: clap::Command,
    args: &[String],
) -> Result<Flags<T>, String> {
    let argv = std::iter::once(cmd.get_name().to_string()).chain(args.iter().cloned());
    let read = cmd
        .try_get_matches_from(argv)
        .and_then(|m| T::from_arg_matches(&m));
    match read {
        Ok(t) => Ok(Flags::Given(t)),
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelp => {
            Ok(Flags::Help(e.render().to_string()))
        }
        Err(e) => {
            let text = e.render().to_string();
            let body: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = body.join(" ");
            Err(format!(
                "{} (see -h)",
                line.strip_prefix("error: ").unwrap_or(&line)
            ))
        }
    }
}
