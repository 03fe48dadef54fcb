//! Finding rank, world size and the root's address from the launcher's environment.
//!
//! Sources, first match wins (a source matches when any of its rank/size variables is set):
//!
//! | source     | rank / size / local rank                                  | root                        |
//! |------------|-----------------------------------------------------------|-----------------------------|
//! | `oxccl`    | `OXCCL_RANK`, `OXCCL_WORLD_SIZE`, `OXCCL_LOCAL_RANK`      | `OXCCL_ROOT`                |
//! | `torchrun` | `RANK`, `WORLD_SIZE`, `LOCAL_RANK`                        | `MASTER_ADDR`:`MASTER_PORT` (+1, see below) |
//! | `slurm`    | `SLURM_PROCID`, `SLURM_NTASKS` (or `SLURM_NPROCS`), `SLURM_LOCALID` | `OXCCL_ROOT` or `MASTER_ADDR`:`MASTER_PORT` |
//! | `openmpi`  | `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_LOCAL_RANK` | same |
//! | `pmi`      | `PMI_RANK`, `PMI_SIZE`, `MPI_LOCALRANKID`                 | same                        |
//!
//! For every source, `OXCCL_ROOT=host:port` (if set) overrides the root, `OXCCL_SECRET` (32 hex
//! digits), or the file `OXCCL_SECRET_FILE` names, holds the shared secret, and `OXCCL_ROOT_EXTERNAL=1` says the store at the root is
//! served by a launcher, so rank 0 must not serve it itself.
//!
//! **torchrun:** when `TORCHELASTIC_USE_AGENT_STORE=True` the elastic agent already serves its
//! own TCPStore on `MASTER_PORT`, so oxccl's store uses `MASTER_PORT + 1` on `MASTER_ADDR`. Set
//! `OXCCL_ROOT` to choose another port.
//!
//! Host names are resolved with the system resolver, preferring an IPv4 address. Empty
//! variables count as unset. A source that is only partly set, or a value that does not parse,
//! is an [`ErrorKind::InvalidArgument`](crate::error::ErrorKind::InvalidArgument) naming the variable, its value and what to set.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use super::id::parse_secret_hex;
use crate::error::{Error, Result};

/// What the environment says about this process's place in the job.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvInfo {
    /// This process's rank, below `world_size`.
    pub rank: usize,
    /// Number of ranks in the job.
    pub world_size: usize,
    /// Rank among the processes on this host, when the launcher says.
    pub local_rank: Option<usize>,
    /// Address of the rendezvous store.
    pub root: SocketAddr,
    /// The shared secret from `OXCCL_SECRET`; `None` means unauthenticated (all-zero key).
    pub secret: Option<[u8; 16]>,
    /// The store at `root` is served by the launcher (`OXCCL_ROOT_EXTERNAL=1`): rank 0 must
    /// connect to it like every other rank instead of serving it.
    pub root_external: bool,
    /// Which launcher's variables were used: "oxccl", "torchrun", "slurm", "openmpi" or "pmi".
    pub source: &'static str,
}

impl std::fmt::Debug for EnvInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvInfo")
            .field("rank", &self.rank)
            .field("world_size", &self.world_size)
            .field("local_rank", &self.local_rank)
            .field("root", &self.root)
            .field("secret", &self.secret.map(|_| "<hidden>"))
            .field("root_external", &self.root_external)
            .field("source", &self.source)
            .finish()
    }
}

/// Reads the process environment; `Ok(None)` when no launcher's variables are set.
pub(crate) fn discover() -> Result<Option<EnvInfo>> {
    discover_from(&|k| std::env::var(k).ok())
}

struct Source {
    name: &'static str,
    rank: &'static str,
    size: &'static str,
    size_alt: Option<&'static str>,
    local: &'static str,
}

const SOURCES: [Source; 5] = [
    Source {
        name: "oxccl",
        rank: "OXCCL_RANK",
        size: "OXCCL_WORLD_SIZE",
        size_alt: None,
        local: "OXCCL_LOCAL_RANK",
    },
    Source {
        name: "torchrun",
        rank: "RANK",
        size: "WORLD_SIZE",
        size_alt: None,
        local: "LOCAL_RANK",
    },
    Source {
        name: "slurm",
        rank: "SLURM_PROCID",
        size: "SLURM_NTASKS",
        size_alt: Some("SLURM_NPROCS"),
        local: "SLURM_LOCALID",
    },
    Source {
        name: "openmpi",
        rank: "OMPI_COMM_WORLD_RANK",
        size: "OMPI_COMM_WORLD_SIZE",
        size_alt: None,
        local: "OMPI_COMM_WORLD_LOCAL_RANK",
    },
    Source {
        name: "pmi",
        rank: "PMI_RANK",
        size: "PMI_SIZE",
        size_alt: None,
        local: "MPI_LOCALRANKID",
    },
];

/// Like `discover` with `get` in place of the process environment (for tests and embedders).
pub fn discover_from(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<EnvInfo>> {
    let var = |k: &str| {
        get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let Some(src) = SOURCES
        .iter()
        .find(|s| var(s.rank).is_some() || var(s.size).is_some())
    else {
        return Ok(None);
    };

    let (size_var, size_val) = match (
        var(src.size),
        src.size_alt.and_then(|a| var(a).map(|v| (a, v))),
    ) {
        (Some(v), _) => (src.size, v),
        (None, Some((a, v))) => (a, v),
        (None, None) => {
            return Err(missing(
                src.size,
                &format!("{} is set", src.rank),
                "the number of ranks",
            ));
        }
    };
    let Some(rank_val) = var(src.rank) else {
        return Err(missing(
            src.rank,
            &format!("{size_var} is set"),
            "this process's rank",
        ));
    };
    let rank = parse_usize(src.rank, &rank_val)?;
    let world_size = parse_usize(size_var, &size_val)?;
    if world_size == 0 {
        return Err(Error::invalid_argument(format!(
            "{size_var}=0: the world size must be at least 1"
        )));
    }
    if rank >= world_size {
        return Err(Error::invalid_argument(format!(
            "{}={rank} is not below {size_var}={world_size}: ranks are numbered 0..{size_var}-1",
            src.rank
        )));
    }
    let local_rank = var(src.local)
        .map(|v| parse_usize(src.local, &v))
        .transpose()?;

    let root = match var("OXCCL_ROOT") {
        Some(v) => parse_host_port("OXCCL_ROOT", &v)?,
        None if src.name == "oxccl" => {
            return Err(missing(
                "OXCCL_ROOT",
                "OXCCL_RANK/OXCCL_WORLD_SIZE are set",
                "the host:port of rank 0's store (e.g. OXCCL_ROOT=node0:29500)",
            ));
        }
        None => master_root(&var, src)?,
    };
    let secret = match (var("OXCCL_SECRET"), var("OXCCL_SECRET_FILE")) {
        (Some(_), Some(_)) => {
            return Err(Error::invalid_argument(
                "both OXCCL_SECRET and OXCCL_SECRET_FILE are set: set one of them",
            ));
        }
        (Some(v), None) => Some(parse_secret_hex(&v).map_err(|e| {
            Error::invalid_argument(format!("OXCCL_SECRET (value hidden): {}", e.message()))
        })?),
        (None, Some(path)) => Some(secret_from_file(&path)?),
        (None, None) => None,
    };
    let root_external = match var("OXCCL_ROOT_EXTERNAL") {
        None => false,
        Some(v) => match v.to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => true,
            "0" | "false" | "no" | "off" => false,
            _ => {
                return Err(Error::invalid_argument(format!(
                    "OXCCL_ROOT_EXTERNAL={v:?}: expected 1 (a launcher serves the store) or 0"
                )));
            }
        },
    };
    Ok(Some(EnvInfo {
        rank,
        world_size,
        local_rank,
        root,
        secret,
        root_external,
        source: src.name,
    }))
}

/// The secret in the file `OXCCL_SECRET_FILE` names: 32 hex digits, surrounding whitespace
/// ignored. Errors name the file, never its content.
fn secret_from_file(path: &str) -> Result<[u8; 16]> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::invalid_argument(format!(
            "OXCCL_SECRET_FILE={path}: cannot read it ({e}); it must hold the job's secret as 32 \
             hex digits, readable by every rank"
        ))
    })?;
    parse_secret_hex(&text).map_err(|e| {
        Error::invalid_argument(format!(
            "OXCCL_SECRET_FILE={path} (content hidden): {}",
            e.message()
        ))
    })
}

/// The root from MASTER_ADDR/MASTER_PORT (torchrun's convention, also honoured under Slurm and MPI).
fn master_root(var: &dyn Fn(&str) -> Option<String>, src: &Source) -> Result<SocketAddr> {
    let (addr, port) = match (var("MASTER_ADDR"), var("MASTER_PORT")) {
        (Some(a), Some(p)) => (a, p),
        (Some(_), None) => {
            return Err(missing(
                "MASTER_PORT",
                "MASTER_ADDR is set",
                "the root's port",
            ));
        }
        (None, Some(_)) => {
            return Err(missing(
                "MASTER_ADDR",
                "MASTER_PORT is set",
                "the root's host",
            ));
        }
        (None, None) => {
            let hint = if src.name == "torchrun" {
                "torchrun sets MASTER_ADDR and MASTER_PORT; set them (or OXCCL_ROOT=host:port)"
            } else {
                "set OXCCL_ROOT=host:port (rank 0's host and a free port, e.g. the first host of the \
                 job and 29500), or MASTER_ADDR and MASTER_PORT"
            };
            return Err(Error::invalid_argument(format!(
                "running under {} ({} is set) but no root address is given: {hint}",
                src.name, src.rank
            )));
        }
    };
    let mut port_num = parse_port("MASTER_PORT", &port)?;
    let agent_store = var("TORCHELASTIC_USE_AGENT_STORE")
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1");
    if src.name == "torchrun" && agent_store {
        // The elastic agent's own TCPStore is on MASTER_PORT; ours goes next to it.
        port_num = port_num.checked_add(1).ok_or_else(|| {
            Error::invalid_argument(
                "MASTER_PORT=65535 and torchrun's agent store uses it: oxccl needs MASTER_PORT+1; \
                 pick a lower MASTER_PORT or set OXCCL_ROOT=host:port",
            )
        })?;
    }
    resolve("MASTER_ADDR", &addr, port_num)
}

fn missing(var: &str, because: &str, what: &str) -> Error {
    Error::invalid_argument(format!("{because} but {var} is not: set {var} to {what}"))
}

fn parse_usize(var: &str, v: &str) -> Result<usize> {
    v.parse::<usize>().map_err(|_| {
        Error::invalid_argument(format!(
            "{var}={v:?} is not a non-negative integer; fix or unset {var}"
        ))
    })
}

fn parse_port(var: &str, v: &str) -> Result<u16> {
    match v.parse::<u16>() {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Error::invalid_argument(format!(
            "{var}={v:?} is not a TCP port (1-65535)"
        ))),
    }
}

/// `host:port`, `ip:port` or `[ipv6]:port`.
fn parse_host_port(var: &str, v: &str) -> Result<SocketAddr> {
    if let Ok(a) = v.parse::<SocketAddr>() {
        if a.port() == 0 {
            return Err(Error::invalid_argument(format!(
                "{var}={v:?}: port 0 cannot be dialled; give the root's real port"
            )));
        }
        return Ok(a);
    }
    let Some((host, port)) = v.rsplit_once(':') else {
        return Err(Error::invalid_argument(format!(
            "{var}={v:?} has no port: expected host:port (IPv6 as [addr]:port)"
        )));
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(':') {
        return Err(Error::invalid_argument(format!(
            "{var}={v:?} is not host:port (IPv6 addresses need brackets: [addr]:port)"
        )));
    }
    let port = parse_port(var, port)?;
    resolve(var, host, port)
}

/// Resolves `host` (a name or an IP), preferring IPv4.
fn resolve(var: &str, host: &str, port: u16) -> Result<SocketAddr> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = (bare, port)
        .to_socket_addrs()
        .map_err(|e| {
            Error::invalid_argument(format!(
                "{var}: cannot resolve host {bare:?}: {e}; use an IP address or a name this host resolves"
            ))
        })?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| {
            Error::invalid_argument(format!("{var}: host {bare:?} resolves to no address"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> Result<Option<EnvInfo>> {
        let map: std::collections::HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        discover_from(&move |k| map.get(k).cloned())
    }

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("X", "1.2.3.4:5").unwrap(),
            "1.2.3.4:5".parse().unwrap()
        );
        assert_eq!(
            parse_host_port("X", "[::1]:7").unwrap(),
            "[::1]:7".parse().unwrap()
        );
        assert_eq!(parse_host_port("X", "localhost:7").unwrap().port(), 7);
        assert!(parse_host_port("X", "::1").is_err());
        assert!(parse_host_port("X", "host").is_err());
        assert!(parse_host_port("X", "1.2.3.4:0").is_err());
        assert!(parse_host_port("X", ":80").is_err());
    }

    #[test]
    fn nothing_set_is_none() {
        assert_eq!(
            env(&[("HOME", "/root"), ("MASTER_ADDR", "x")]).unwrap(),
            None
        );
        assert_eq!(env(&[("OXCCL_RANK", "")]).unwrap(), None);
    }

    #[test]
    fn secret_from_a_file() {
        let dir = std::env::temp_dir().join(format!("oxccl-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "  0123456789abcdef0123456789ABCDEF\n").unwrap();
        let bad = dir.join("bad");
        std::fs::write(&bad, "not a secret").unwrap();
        let base = [
            ("OXCCL_RANK", "0"),
            ("OXCCL_WORLD_SIZE", "1"),
            ("OXCCL_ROOT", "127.0.0.1:1"),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            env(&v)
        };
        let good_s = good.to_str().unwrap();
        let e = with(&[("OXCCL_SECRET_FILE", good_s)]).unwrap().unwrap();
        assert_eq!(e.secret.unwrap()[0..2], [0x01, 0x23]);
        assert_eq!(e.secret.unwrap()[15], 0xef);
        // Errors name the file, never what it holds.
        let err = with(&[("OXCCL_SECRET_FILE", bad.to_str().unwrap())]).unwrap_err();
        assert!(err.to_string().contains("bad") && !err.to_string().contains("not a secret"));
        let err = with(&[("OXCCL_SECRET_FILE", "/nonexistent/oxccl")]).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
        let err = with(&[
            ("OXCCL_SECRET_FILE", good_s),
            ("OXCCL_SECRET", "0123456789abcdef0123456789abcdef"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("set one of them"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn debug_hides_secret() {
        let e = env(&[
            ("OXCCL_RANK", "0"),
            ("OXCCL_WORLD_SIZE", "1"),
            ("OXCCL_ROOT", "127.0.0.1:1"),
            ("OXCCL_SECRET", "abababababababababababababababab"),
        ])
        .unwrap()
        .unwrap();
        assert!(!format!("{e:?}").contains("abab"));
    }
}
