//! Four hosts as network namespaces, TCP between them (`OXCCL_TRANSPORT=tcp`).
//!
//! Topology (all inside namespaces this test creates and deletes; addresses 10.77.0.0/24 exist
//! only there): hosts `h0..h3`, each with `eth0` = 10.77.0.(i+1), joined by veth pairs to a
//! switch namespace. The switch is a kernel bridge (`br0`, 10.77.0.254, where the rendezvous
//! store listens — the launcher's host), or, for the impairment test, the same ports forwarded
//! by a user-space switch (see below). Each rank is a process of this test binary started with
//! `ip netns exec h<i>`; the parent serves the store from a thread that entered the switch
//! namespace.
//!
//! - `netns_impaired_links_give_correct_results`: every one-way path delayed 5 ms and 1% of
//!   frames dropped. With `tc qdisc ... netem delay 5ms loss 1%` on every host's `eth0` when the
//!   kernel has netem; otherwise (this sandbox's kernel has no `sch_netem`) a user-space switch
//!   does exactly that: it forwards the frames between the ports through AF_PACKET sockets,
//!   holding each for 5 ms and dropping 1% at random. Mixed collectives of 4 B to 4 MiB must all
//!   be correct.
//! - `netns_link_cut_gives_prompt_named_errors`: ranks loop 1 MiB all-reduces; host 2's `eth0`
//!   is set down mid-loop. Every rank must fail within `OXCCL_TIMEOUT_MS` + 2 s with `Timeout`
//!   or `PeerLost` naming a rank other than itself (whom it waited for, or the rank whose abort
//!   reached it first); with the direct algorithm (everyone waits on the victim directly) every
//!   survivor must have waited for rank 2 (name it, or list it among whom it waited for).
//!   Times to detection are printed.
//! - `netns_two_rails_both_nics_carry_traffic`: 2 hosts x 2 ranks with 2 NICs each (one bridge
//!   per rail), `OXCCL_SOCKET_BIND=rail`: results are right and both NICs of both hosts carry
//!   the all-reduce (interface counters). `benches/multihost.sh` builds the same at any size.
//!
//! Needs root (it creates namespaces); where `ip netns add` is not permitted, or `ip` is
//! missing, each test prints why and passes without running.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use oxccl::internals::bootstrap::{StoreServer, UniqueId, secret_hex};
use oxccl::{Communicator, ReduceOp};

const HOSTS: usize = 4;
const CHILD_MARKER: &str = "OXCCL_NETNS_CHILD";
const SWITCH_IP: &str = "10.77.0.254";

fn host_ip(i: usize) -> String {
    format!("10.77.0.{}", i + 1)
}

/// Tests in this binary share the address plan: one topology at a time.
static SERIAL: Mutex<()> = Mutex::new(());

// ---------------------------------------------------------------------------------------------
// Topology.

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd} {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// The namespaces of one test; deleted (with every interface in them) on drop, also when the
/// test fails.
struct Topology {
    hosts: Vec<String>,
    switch: String,
}

impl Drop for Topology {
    fn drop(&mut self) {
        let switch = (!self.switch.is_empty()).then_some(&self.switch);
        for ns in self.hosts.iter().chain(switch) {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum SwitchKind {
    /// A kernel bridge with an address for the store.
    Bridge,
    /// Bare ports; a user-space switch forwards between them (the store is on host 0's side).
    Ports,
}

impl Topology {
    /// Creates the namespaces, or `Err(why)` when this environment does not allow it.
    fn create(tag: &str, kind: SwitchKind) -> Result<Topology, String> {
        let pid = std::process::id();
        let switch = format!("oxsw-{pid}-{tag}");
        ip(&["netns", "add", &switch])?;
        let mut t = Topology {
            hosts: Vec::new(),
            switch,
        };
        let sw = t.switch.clone();
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        if kind == SwitchKind::Bridge {
            ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
            ip(&[
                "-n",
                &sw,
                "addr",
                "add",
                &format!("{SWITCH_IP}/24"),
                "dev",
                "br0",
            ])?;
            ip(&["-n", &sw, "link", "set", "br0", "up"])?;
        }
        for i in 0..HOSTS {
            let h = format!("oxh{i}-{pid}-{tag}");
            ip(&["netns", "add", &h])?;
            t.hosts.push(h.clone());
            let port = format!("port{i}");
            ip(&[
                "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
                &h,
            ])?;
            if kind == SwitchKind::Bridge {
                ip(&["-n", &sw, "link", "set", &port, "master", "br0"])?;
            }
            ip(&["-n", &sw, "link", "set", &port, "up"])?;
            ip(&[
                "-n",
                &h,
                "addr",
                "add",
                &format!("{}/24", host_ip(i)),
                "dev",
                "eth0",
            ])?;
            // One MTU-sized segment per packet, so a user-space switch forwards real frames.
            ip(&[
                "-n",
                &h,
                "link",
                "set",
                "eth0",
                "gso_max_segs",
                "1",
                "gso_max_size",
                "1500",
            ])?;
            ip(&["-n", &h, "link", "set", "eth0", "up"])?;
            ip(&["-n", &h, "link", "set", "lo", "up"])?;
        }
        Ok(t)
    }
}

impl Topology {
    /// Two hosts joined directly by two veth pairs: `eth0` 10.77.1.0/24 and `eth1`
    /// 10.77.2.0/24 (host i is .i+1 on both). No switch.
    fn create_two_paths(tag: &str) -> Result<Topology, String> {
        let pid = std::process::id();
        let mut t = Topology {
            hosts: Vec::new(),
            switch: String::new(),
        };
        for i in 0..2 {
            let h = format!("oxmp{i}-{pid}-{tag}");
            ip(&["netns", "add", &h])?;
            t.hosts.push(h.clone());
            ip(&["-n", &h, "link", "set", "lo", "up"])?;
        }
        let (a, b) = (t.hosts[0].clone(), t.hosts[1].clone());
        for path in 0..2 {
            let dev = format!("eth{path}");
            ip(&[
                "-n", &a, "link", "add", &dev, "type", "veth", "peer", "name", &dev, "netns", &b,
            ])?;
            for (i, h) in [&a, &b].into_iter().enumerate() {
                let addr = format!("10.77.{}.{}/24", path + 1, i + 1);
                ip(&["-n", h, "addr", "add", &addr, "dev", &dev])?;
                ip(&["-n", h, "link", "set", &dev, "up"])?;
            }
        }
        Ok(t)
    }
}

impl Topology {
    /// `hosts` hosts with `rails` NICs each: host i's `eth<j>` is 10.77.(j+1).(i+1)/24, plugged
    /// into bridge `br<j>` of the switch namespace (one bridge per rail; the switch side of
    /// rail 0 is 10.77.1.254, where the store listens). Every host reaches rail j of every
    /// other host directly over its own `eth<j>`.
    fn create_rails(tag: &str, hosts: usize, rails: usize) -> Result<Topology, String> {
        let pid = std::process::id();
        let switch = format!("oxsw-{pid}-{tag}");
        ip(&["netns", "add", &switch])?;
        let mut t = Topology {
            hosts: Vec::new(),
            switch,
        };
        let sw = t.switch.clone();
        ip(&["-n", &sw, "link", "set", "lo", "up"])?;
        for j in 0..rails {
            let br = format!("br{j}");
            ip(&["-n", &sw, "link", "add", &br, "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", &br, "up"])?;
        }
        ip(&["-n", &sw, "addr", "add", "10.77.1.254/24", "dev", "br0"])?;
        for i in 0..hosts {
            let h = format!("oxr{i}-{pid}-{tag}");
            ip(&["netns", "add", &h])?;
            t.hosts.push(h.clone());
            ip(&["-n", &h, "link", "set", "lo", "up"])?;
            for j in 0..rails {
                let (port, dev) = (format!("p{i}r{j}"), format!("eth{j}"));
                ip(&[
                    "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", &dev, "netns",
                    &h,
                ])?;
                ip(&["-n", &sw, "link", "set", &port, "master", &format!("br{j}")])?;
                ip(&["-n", &sw, "link", "set", &port, "up"])?;
                let addr = format!("10.77.{}.{}/24", j + 1, i + 1);
                ip(&["-n", &h, "addr", "add", &addr, "dev", &dev])?;
                ip(&["-n", &h, "link", "set", &dev, "up"])?;
            }
        }
        Ok(t)
    }
}

/// Bytes interface `dev` of namespace `ns` has carried, sent plus received (kernel counters).
fn carried_bytes(ns: &str, dev: &str) -> u64 {
    ["tx_bytes", "rx_bytes"]
        .iter()
        .map(|c| {
            let out = Command::new("ip")
                .args(["netns", "exec", ns, "cat"])
                .arg(format!("/sys/class/net/{dev}/statistics/{c}"))
                .stdin(Stdio::null())
                .output()
                .expect("ip netns exec cat");
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<u64>()
                .unwrap_or_else(|_| panic!("{c} of {dev} in {ns}: {out:?}"))
        })
        .sum()
}

/// Skips (printing why) unless namespaces can be made here.
fn can_run() -> bool {
    if Command::new("ip").arg("-V").output().is_err() {
        println!("skipped: `ip` (iproute2) is not installed; .ci/run installs it");
        return false;
    }
    static PROBES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = PROBES.fetch_add(1, Ordering::SeqCst);
    let probe = format!("oxprobe-{}-{k}", std::process::id());
    match ip(&["netns", "add", &probe]) {
        Ok(()) => {
            let _ = ip(&["netns", "del", &probe]);
            true
        }
        Err(e) => {
            println!("skipped: cannot create network namespaces here (needs root): {e}");
            false
        }
    }
}

/// Runs `f` on a fresh thread that has entered network namespace `ns` (sockets it creates live
/// there for good; the rest of the process is unaffected: setns changes only that thread).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
    std::thread::spawn(move || {
        // SAFETY: setns on a descriptor we hold open; it switches this thread only.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns {path}: {}", std::io::Error::last_os_error()));
        }
        Ok(f())
    })
    .join()
    .map_err(|_| "the namespace thread panicked".to_string())?
}

// ---------------------------------------------------------------------------------------------
// A user-space impairing switch: netem's delay and loss, for kernels without sch_netem.

/// Reads frames from every port (AF_PACKET), learns which MAC is behind which port, and
/// forwards each frame `delay` later to its port (or floods it), dropping `loss` of them.
/// TCP checksums are recomputed, since frames from a veth may carry only a partial one.
struct Impair {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<ImpairStats, String>>>,
}

#[derive(Debug, Default, Clone, Copy)]
struct ImpairStats {
    forwarded: u64,
    dropped: u64,
    oversized: u64,
}

fn packet_socket(ifname: &str) -> Result<OwnedFd, String> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto)) };
    if fd < 0 {
        return Err(format!(
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: a valid NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if index == 0 {
        return Err(format!("no interface {ifname}"));
    }
    // SAFETY: an all-zero sockaddr_ll is valid; we fill the fields bind needs.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = index as i32;
    // SAFETY: `sll` is a live sockaddr_ll of the size we pass.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc != 0 {
        return Err(format!(
            "bind to {ifname}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

/// Recomputes the TCP checksum of an IPv4/TCP Ethernet frame in place.
fn fix_tcp_checksum(f: &mut [u8]) {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] || f[23] != 6 {
        return;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let frag = u16::from_be_bytes([f[20], f[21]]) & 0x3fff;
    let (start, end) = (14 + ihl, 14 + total);
    if frag != 0 || ihl < 20 || end > f.len() || end < start + 20 {
        return;
    }
    let seg_len = end - start;
    f[start + 16] = 0;
    f[start + 17] = 0;
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&f[26..34]);
    add(&[0, 6]);
    add(&(seg_len as u16).to_be_bytes());
    add(&f[start..end]);
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    f[start + 16..start + 18].copy_from_slice(&c.to_be_bytes());
}

impl Impair {
    fn start(switch_ns: &str, ports: usize, delay: Duration, loss: f64) -> Result<Impair, String> {
        let socks: Vec<OwnedFd> = in_netns(switch_ns, move || {
            (0..ports)
                .map(|i| packet_socket(&format!("port{i}")))
                .collect::<Result<Vec<_>, _>>()
        })??;
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::spawn(move || forward(&socks, delay, loss, &s2));
        Ok(Impair {
            stop,
            thread: Some(thread),
        })
    }

    fn stop(mut self) -> Result<ImpairStats, String> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Impair {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn forward(
    socks: &[OwnedFd],
    delay: Duration,
    loss: f64,
    stop: &AtomicBool,
) -> Result<ImpairStats, String> {
    let mut stats = ImpairStats::default();
    let mut queue: VecDeque<(Instant, usize, Vec<u8>)> = VecDeque::new();
    let mut macs: HashMap<[u8; 6], usize> = HashMap::new();
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    let mut buf = vec![0u8; 1 << 16];
    let drop_below = (loss * u64::MAX as f64) as u64;
    while !stop.load(Ordering::SeqCst) {
        // Wait for a frame, or until the next one is due (at most 10 ms, to notice `stop`).
        let wait = queue
            .front()
            .map_or(Duration::from_millis(10), |(due, ..)| {
                due.saturating_duration_since(Instant::now())
                    .min(Duration::from_millis(10))
            });
        let mut fds: Vec<libc::pollfd> = socks
            .iter()
            .map(|s| libc::pollfd {
                fd: s.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let ms = wait.as_micros().div_ceil(1000) as i32;
        // SAFETY: `fds` is a live array of that many pollfds.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        for (port, s) in socks.iter().enumerate() {
            loop {
                // SAFETY: all-zero is a valid sockaddr_ll for recvfrom to fill.
                let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut flen = size_of::<libc::sockaddr_ll>() as u32;
                // SAFETY: `buf` and `from` are live and as long as we say.
                let n = unsafe {
                    libc::recvfrom(
                        s.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                        (&raw mut from).cast(),
                        &mut flen,
                    )
                };
                if n <= 0 {
                    break;
                }
                // Our own transmissions come back as PACKET_OUTGOING: not new frames.
                if from.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                let n = n as usize;
                if n < 14 {
                    continue;
                }
                if n > 1514 {
                    stats.oversized += 1;
                }
                let mut src = [0u8; 6];
                src.copy_from_slice(&buf[6..12]);
                macs.insert(src, port);
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                if rng < drop_below {
                    stats.dropped += 1;
                    continue;
                }
                let mut frame = buf[..n].to_vec();
                fix_tcp_checksum(&mut frame);
                queue.push_back((Instant::now() + delay, port, frame));
            }
        }
        let now = Instant::now();
        while queue.front().is_some_and(|(due, ..)| *due <= now) {
            let (_, from, frame) = queue.pop_front().unwrap();
            let mut dst = [0u8; 6];
            dst.copy_from_slice(&frame[..6]);
            let targets: Vec<usize> = match macs.get(&dst) {
                Some(&p) if dst[0] & 1 == 0 => vec![p],
                _ => (0..socks.len()).filter(|&p| p != from).collect(),
            };
            for p in targets {
                // SAFETY: `frame` is live for the call; the socket is bound to its port.
                unsafe { libc::send(socks[p].as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            }
            stats.forwarded += 1;
        }
    }
    Ok(stats)
}

// ---------------------------------------------------------------------------------------------
// Rank processes.

/// Children: rank `i` in namespace `h<i>`, the rest as `ProcGroup` in tests/common does (killed
/// and reaped on drop).
struct Ranks {
    children: Vec<Option<Child>>,
    /// Stdout lines of every child: (rank, line, when).
    lines: mpsc::Receiver<(usize, String, Instant)>,
    /// Stderr lines of every child, likewise.
    errs: mpsc::Receiver<(usize, String, Instant)>,
    stderr: Vec<Arc<Mutex<String>>>,
}

impl Ranks {
    fn spawn(
        t: &Topology,
        store: SocketAddr,
        secret: &[u8; 16],
        env: &[(&str, &str)],
        mode: &str,
    ) -> Ranks {
        let one_per_host: Vec<usize> = (0..t.hosts.len()).collect();
        Ranks::spawn_placed(t, &one_per_host, store, secret, env, mode)
    }

    /// Rank `i` runs on host `host_of[i]` (several ranks per host: a placement).
    fn spawn_placed(
        t: &Topology,
        host_of: &[usize],
        store: SocketAddr,
        secret: &[u8; 16],
        env: &[(&str, &str)],
        mode: &str,
    ) -> Ranks {
        let exe = std::env::current_exe().unwrap();
        let (tx, lines) = mpsc::channel();
        let (etx, errs) = mpsc::channel();
        let mut r = Ranks {
            children: Vec::new(),
            lines,
            errs,
            stderr: Vec::new(),
        };
        for (i, &h) in host_of.iter().enumerate() {
            let ns = &t.hosts[h];
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", ns])
                .arg(&exe)
                .args([
                    "--exact",
                    "netns_child",
                    "--include-ignored",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_MARKER, mode)
                .env("OXCCL_RANK", i.to_string())
                .env("OXCCL_WORLD_SIZE", host_of.len().to_string())
                .env("OXCCL_ROOT", store.to_string())
                .env("OXCCL_ROOT_EXTERNAL", "1")
                .env("OXCCL_SECRET", secret_hex(secret))
                .env("OXCCL_TRANSPORT", "tcp")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            for v in [
                "RANK",
                "WORLD_SIZE",
                "SLURM_PROCID",
                "OMPI_COMM_WORLD_RANK",
                "PMI_RANK",
            ] {
                cmd.env_remove(v);
            }
            for (k, v) in env {
                cmd.env(k, v);
            }
            let mut child = cmd.spawn().expect("spawn a rank with ip netns exec");
            let out = child.stdout.take().unwrap();
            let err = child.stderr.take().unwrap();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send((i, line, Instant::now()));
                }
            });
            let cap = Arc::new(Mutex::new(String::new()));
            let (c2, etx) = (cap.clone(), etx.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(err).lines() {
                    let Ok(line) = line else { break };
                    let mut c = c2.lock().unwrap();
                    c.push_str(&line);
                    c.push('\n');
                    drop(c);
                    let _ = etx.send((i, line, Instant::now()));
                }
            });
            r.children.push(Some(child));
            r.stderr.push(cap);
        }
        r
    }

    /// Waits for every child to exit by `deadline`; true if all exited with status 0.
    fn wait(&mut self, deadline: Instant) -> Vec<Option<i32>> {
        let mut codes = vec![None; self.children.len()];
        loop {
            let mut running = false;
            for (i, c) in self.children.iter_mut().enumerate() {
                if let Some(ch) = c {
                    match ch.try_wait().unwrap() {
                        Some(st) => {
                            codes[i] = st.code();
                            *c = None;
                        }
                        None => running = true,
                    }
                }
            }
            if !running || Instant::now() >= deadline {
                return codes;
            }
            // A child's exit has no other portable notification; 10 ms bounds how late we see it.
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .iter()
            .enumerate()
            .map(|(i, s)| format!("--- rank {i} stderr:\n{}", s.lock().unwrap()))
            .collect()
    }
}

impl Drop for Ranks {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Serves the store on the switch side (the launcher's host) from a thread in that namespace.
fn serve_store(ns: &str, ip: &str) -> (StoreServer, SocketAddr, [u8; 16]) {
    let addr: SocketAddr = format!("{ip}:0").parse().unwrap();
    let listener = in_netns(ns, move || TcpListener::bind(addr))
        .unwrap()
        .expect("bind the store in the namespace");
    let id = UniqueId::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    drop(id.take_listener());
    let server = StoreServer::start(listener, id.secret).unwrap();
    let addr = server.addr();
    (server, addr, id.secret)
}

// ---------------------------------------------------------------------------------------------
// The child (one rank).

#[test]
#[ignore = "a child process of this file's tests (they run it with --include-ignored)"]
fn netns_child() {
    let Ok(mode) = std::env::var(CHILD_MARKER) else {
        return;
    };
    let r = match mode.as_str() {
        "impair" => child_impair(),
        "cut" => child_cut(),
        "mpath" => child_mpath(),
        "rails" => child_rails(),
        m => Err(format!("unknown mode {m}")),
    };
    if let Err(e) = r {
        eprintln!("CHILD FAILED: {e}");
        std::process::exit(1);
    }
}

fn child_impair() -> Result<(), String> {
    let comm = Communicator::from_env().map_err(|e| format!("init: {e}"))?;
    let (n, r) = (comm.size(), comm.rank());
    let t0 = Instant::now();
    for (k, &len) in [1usize, 1000, 100_000, 1 << 20, 7, 300_000]
        .iter()
        .enumerate()
    {
        let t = Instant::now();
        let mut v: Vec<f32> = (0..len).map(|j| ((j + r) % 17) as f32).collect();
        comm.all_reduce(&mut v, ReduceOp::Sum)
            .map_err(|e| format!("all-reduce of {len}: {e}"))?;
        for (j, x) in v.iter().enumerate() {
            let want: usize = (0..n).map(|q| (j + q) % 17).sum();
            if *x != want as f32 {
                return Err(format!("all-reduce of {len}: [{j}] = {x}, want {want}"));
            }
        }
        let root = k % n;
        let mut b = vec![if r == root { k as u64 + 1 } else { 0 }; len.min(50_000)];
        comm.broadcast(&mut b, root)
            .map_err(|e| format!("broadcast: {e}"))?;
        if b.iter().any(|&x| x != k as u64 + 1) {
            return Err(format!("broadcast of {} from {root}: wrong data", b.len()));
        }
        let mut g = vec![0u32; n * 1000];
        comm.all_gather(&vec![r as u32; 1000], &mut g)
            .map_err(|e| format!("all-gather: {e}"))?;
        if (0..n).any(|q| g[q * 1000..(q + 1) * 1000].iter().any(|&x| x != q as u32)) {
            return Err("all-gather: wrong data".into());
        }
        println!("OK {} floats {:.1?}", len, t.elapsed());
    }
    comm.barrier().map_err(|e| format!("barrier: {e}"))?;
    println!("DONE {:.1?}", t0.elapsed());
    Ok(())
}

fn child_cut() -> Result<(), String> {
    let comm = Communicator::from_env().map_err(|e| format!("init: {e}"))?;
    let r = comm.rank();
    for iter in 0u64.. {
        let mut v = vec![(r + 1) as f32; 1 << 18];
        let t = Instant::now();
        match comm.all_reduce(&mut v, ReduceOp::Sum) {
            Ok(()) => println!("ITER {iter} {:.1?}", t.elapsed()),
            Err(e) => {
                let kind = match e.kind() {
                    oxccl::ErrorKind::Timeout => "Timeout",
                    oxccl::ErrorKind::PeerLost => "PeerLost",
                    _ => "other",
                };
                println!(
                    "ERROR kind={kind} peer={} call_ms={} msg={e}",
                    e.peer().map_or("none".into(), |p| p.to_string()),
                    t.elapsed().as_millis()
                );
                // A later call fails at once (revoked), never hangs.
                let t2 = Instant::now();
                let again = comm.all_reduce(&mut v, ReduceOp::Sum);
                println!("AGAIN ok={} ms={}", again.is_ok(), t2.elapsed().as_millis());
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Loops checked 4 MiB all-reduces until one fails (then says how, and exits 0); a wrong
/// result exits 1.
fn child_mpath() -> Result<(), String> {
    let comm = Communicator::from_env().map_err(|e| format!("init: {e}"))?;
    let (n, r) = (comm.size(), comm.rank());
    for iter in 0u64.. {
        let mut v: Vec<f32> = (0..1 << 20)
            .map(|j| ((j as u64 + iter + r as u64) % 13) as f32)
            .collect();
        let t = Instant::now();
        if let Err(e) = comm.all_reduce(&mut v, ReduceOp::Sum) {
            println!(
                "ERROR peer={} call_ms={} msg={e}",
                e.peer().map_or("none".into(), |p| p.to_string()),
                t.elapsed().as_millis()
            );
            return Ok(());
        }
        for (j, x) in v.iter().enumerate() {
            let want: u64 = (0..n as u64).map(|q| (j as u64 + iter + q) % 13).sum();
            if *x != want as f32 {
                return Err(format!("iteration {iter}: [{j}] = {x}, want {want}"));
            }
        }
        println!("ITER {iter} {}", t.elapsed().as_millis());
    }
    Ok(())
}

/// Checked all-reduces of 4 MiB, all-gathers and a broadcast; prints `DONE`.
fn child_rails() -> Result<(), String> {
    let comm = Communicator::from_env().map_err(|e| format!("init: {e}"))?;
    let (n, r) = (comm.size(), comm.rank());
    for iter in 0..4usize {
        let mut v: Vec<f32> = (0..1 << 20).map(|j| ((j + iter + r) % 13) as f32).collect();
        comm.all_reduce(&mut v, ReduceOp::Sum)
            .map_err(|e| format!("all-reduce: {e}"))?;
        for (j, x) in v.iter().enumerate() {
            let want: usize = (0..n).map(|q| (j + iter + q) % 13).sum();
            if *x != want as f32 {
                return Err(format!("all-reduce {iter}: [{j}] = {x}, want {want}"));
            }
        }
        let mut g = vec![0u32; n * 100_000];
        comm.all_gather(&vec![(r + iter) as u32; 100_000], &mut g)
            .map_err(|e| format!("all-gather: {e}"))?;
        if (0..n).any(|q| {
            g[q * 100_000..(q + 1) * 100_000]
                .iter()
                .any(|&x| x != (q + iter) as u32)
        }) {
            return Err("all-gather: wrong data".into());
        }
        let root = iter % n;
        let mut b = vec![if r == root { iter as u64 + 7 } else { 0 }; 100_000];
        comm.broadcast(&mut b, root)
            .map_err(|e| format!("broadcast: {e}"))?;
        if b.iter().any(|&x| x != iter as u64 + 7) {
            return Err(format!("broadcast from {root}: wrong data"));
        }
    }
    println!("DONE");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The tests.

/// Rails: 2 hosts x 2 ranks, 2 NICs per host (one bridge per rail), `OXCCL_SOCKET_IFNAME=eth0,eth1`
/// with `OXCCL_SOCKET_BIND=rail`: local rank r is reached on `eth<r>`. Block placement, ring
/// all-reduce: the inter-host links are 1-2 (to rank 2, local rank 0: rail 0) and 0-3 (to rank
/// 3, local rank 1: rail 1), so both NICs of both hosts must carry traffic (interface
/// counters, sent plus received: a ring sends one way on each link), and every result must be
/// right. (`benches/multihost.sh` is the full-size bench.)
#[test]
fn netns_two_rails_both_nics_carry_traffic() {
    if std::env::var(CHILD_MARKER).is_ok() || !can_run() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let t_start = Instant::now();
    let topo = Topology::create_rails("rails", 2, 2).expect("topology");
    let (_store, addr, secret) = serve_store(&topo.switch, "10.77.1.254");
    let before: Vec<[u64; 2]> = topo
        .hosts
        .iter()
        .map(|h| [carried_bytes(h, "eth0"), carried_bytes(h, "eth1")])
        .collect();
    let mut ranks = Ranks::spawn_placed(
        &topo,
        &[0, 0, 1, 1],
        addr,
        &secret,
        &[
            ("OXCCL_TRANSPORT", "auto"),
            ("OXCCL_SOCKET_IFNAME", "eth0,eth1"),
            ("OXCCL_SOCKET_BIND", "rail"),
            ("OXCCL_SOCKET_SPEED", "1gbit"),
            (
                "OXCCL_ALGO",
                "allreduce:ring,allgather:ring,broadcast:chain",
            ),
            ("OXCCL_TIMEOUT_MS", "20000"),
            ("OXCCL_DEBUG", "INFO"),
        ],
        "rails",
    );
    let codes = ranks.wait(Instant::now() + Duration::from_secs(120));
    let err = ranks.stderr();
    assert!(
        codes.iter().all(|c| *c == Some(0)),
        "exit codes {codes:?}\n{err}"
    );
    // The children have exited; their reader threads end at EOF, so this ends.
    let mut done = 0;
    let mut out = String::new();
    while let Ok((r, l, _)) = ranks.lines.recv_timeout(Duration::from_secs(10)) {
        done += usize::from(l.ends_with("DONE"));
        out.push_str(&format!("{r}: {l}\n"));
    }
    assert_eq!(done, 4, "every rank reports DONE\n{out}\n{err}");
    for (r, rail) in [(0, 0), (1, 1), (2, 0), (3, 1)] {
        let want = format!("local rank {} takes interface {rail} ", r % 2);
        assert!(
            err.lines()
                .any(|l| l.contains(&want) && l.contains(&format!(":{r} "))),
            "rank {r} should take interface {rail}\n{err}"
        );
    }
    // Every rank's card carried its 2 rails and their speed, and the ranks learnt them (what
    // the tuner lays hierarchical schedules on; each host's first rank prints the line).
    let learnt = err
        .lines()
        .filter(|l| l.contains("every host: 2 rails of 1000 Mbit/s"))
        .count();
    assert_eq!(learnt, 2, "each host should see 2 rails of 1 Gbit/s\n{err}");
    // The inter-host links run on the higher rank's rail.
    for (r, p, rail) in [(0, 3, 1), (1, 2, 0)] {
        let want = format!(":{r} oxccl INFO link to rank {p} ");
        assert!(
            err.lines()
                .any(|l| l.contains(&want) && l.ends_with(&format!("on rail {rail}"))),
            "rank {r}'s link to rank {p} should be on rail {rail}\n{err}"
        );
    }
    for (h, ns) in topo.hosts.iter().enumerate() {
        for (dev, b) in before[h].iter().enumerate() {
            let moved = carried_bytes(ns, &format!("eth{dev}")) - b;
            println!("host {h} eth{dev}: {moved} bytes sent and received");
            // Four 4 MiB ring all-reduces move 4 x 2 x 3/4 x 4 MiB over each inter-host link.
            assert!(
                moved > 16 << 20,
                "host {h} eth{dev} carried only {moved} bytes: the rail carried no traffic"
            );
        }
    }
    println!("rails test took {:.1?}", t_start.elapsed());
}

#[test]
fn netns_impaired_links_give_correct_results() {
    if std::env::var(CHILD_MARKER).is_ok() || !can_run() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let t_start = Instant::now();
    // netem where the kernel has it (on every host's eth0, a bridge between them).
    let probe = Topology::create("probe", SwitchKind::Bridge).expect("topology");
    let netem = run(
        "ip",
        &[
            "netns",
            "exec",
            &probe.hosts[0],
            "tc",
            "qdisc",
            "add",
            "dev",
            "eth0",
            "root",
            "netem",
            "delay",
            "5ms",
            "loss",
            "1%",
        ],
    );
    drop(probe);
    let (topo, impair, how) = match netem {
        Ok(()) => {
            let t = Topology::create("imp", SwitchKind::Bridge).expect("topology");
            for h in &t.hosts {
                run(
                    "ip",
                    &[
                        "netns", "exec", h, "tc", "qdisc", "add", "dev", "eth0", "root", "netem",
                        "delay", "5ms", "loss", "1%",
                    ],
                )
                .expect("netem");
            }
            (
                t,
                None,
                "tc netem delay 5ms loss 1% on every host's eth0".to_string(),
            )
        }
        Err(e) => {
            let t = Topology::create("imp", SwitchKind::Ports).expect("topology");
            let imp = Impair::start(&t.switch, HOSTS, Duration::from_millis(5), 0.01)
                .expect("user-space switch");
            (
                t,
                Some(imp),
                format!(
                    "user-space switch: 5 ms delay and 1% loss per frame (netem unavailable: {e})"
                ),
            )
        }
    };
    println!("impairment: {how}");
    // Without a bridge the switch namespace has no address: serve the store from host 0's side.
    let (store_ns, store_ip) = if impair.is_some() {
        (topo.hosts[0].clone(), host_ip(0))
    } else {
        (topo.switch.clone(), SWITCH_IP.to_string())
    };
    let (_store, addr, secret) = serve_store(&store_ns, &store_ip);
    let mut ranks = Ranks::spawn(
        &topo,
        addr,
        &secret,
        &[("OXCCL_TIMEOUT_MS", "60000")],
        "impair",
    );
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut done = vec![None; HOSTS];
    while done.iter().any(Option::is_none) {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok((r, line, _)) = ranks.lines.recv_timeout(left) else {
            panic!("ranks did not finish within 120 s\n{}", ranks.stderr());
        };
        // (The harness may print its "test ... " prefix on a child's first line.)
        if let Some(i) = line.find("OK ").filter(|_| r == 0) {
            println!("  rank 0: {}", &line[i..]);
        }
        if let Some(i) = line.find("DONE ") {
            done[r] = Some(line[i + 5..].to_string());
        }
    }
    let codes = ranks.wait(Instant::now() + Duration::from_secs(20));
    let stats = impair.map(|i| i.stop().expect("switch"));
    println!(
        "all {HOSTS} ranks correct under impairment; per rank {done:?}; switch {stats:?}; test took {:.1?}",
        t_start.elapsed()
    );
    assert!(
        codes.iter().all(|c| *c == Some(0)),
        "exit codes {codes:?}\n{}",
        ranks.stderr()
    );
    if let Some(s) = stats {
        assert!(s.dropped > 0, "the switch dropped nothing: {s:?}");
        assert_eq!(s.oversized, 0, "frames above the MTU reached the switch");
    }
}

fn link_cut(algo: &str, victim: usize) {
    let timeout = Duration::from_millis(3000);
    let topo = Topology::create(&format!("cut{victim}"), SwitchKind::Bridge).expect("topology");
    let (_store, addr, secret) = serve_store(&topo.switch, SWITCH_IP);
    let ms = timeout.as_millis().to_string();
    let mut ranks = Ranks::spawn(
        &topo,
        addr,
        &secret,
        &[("OXCCL_TIMEOUT_MS", &ms), ("OXCCL_ALGO", algo)],
        "cut",
    );
    let limit = Instant::now() + Duration::from_secs(60);
    let mut iters = [0usize; HOSTS];
    while iters.iter().any(|&i| i < 3) {
        let left = limit.saturating_duration_since(Instant::now());
        let Ok((r, line, _)) = ranks.lines.recv_timeout(left) else {
            panic!("no progress before the cut\n{}", ranks.stderr());
        };
        if line.contains("ITER ") {
            iters[r] += 1;
        }
    }
    ip(&["-n", &topo.hosts[victim], "link", "set", "eth0", "down"]).expect("cut the link");
    let cut = Instant::now();
    let mut errors: Vec<Option<(Duration, String)>> = vec![None; HOSTS];
    let mut again: Vec<Option<String>> = vec![None; HOSTS];
    let bound = timeout + Duration::from_secs(2);
    while errors.iter().any(Option::is_none) || again.iter().any(Option::is_none) {
        let left = (cut + bound + Duration::from_secs(1)).saturating_duration_since(Instant::now());
        let Ok((r, line, at)) = ranks.lines.recv_timeout(left) else {
            panic!(
                "not every rank reported an error within {bound:?} of the cut: {errors:?}\n{}",
                ranks.stderr()
            );
        };
        if line.contains("ERROR ") {
            errors[r] = Some((at - cut, line));
        } else if line.contains("AGAIN ") {
            again[r] = Some(line);
        }
    }
    let codes = ranks.wait(Instant::now() + Duration::from_secs(20));
    println!("\nlink cut: host {victim}'s eth0 down, OXCCL_ALGO={algo:?}, timeout {timeout:?}");
    println!("| rank | time to detection | error | later call |");
    println!("|---|---|---|---|");
    for r in 0..HOSTS {
        let (t, e) = errors[r].clone().unwrap();
        println!(
            "| {r}{} | {t:.3?} | {} | {} |",
            if r == victim { " (cut)" } else { "" },
            e.chars().take(220).collect::<String>(),
            again[r].clone().unwrap()
        );
    }
    assert!(
        codes.iter().all(|c| *c == Some(0)),
        "exit codes {codes:?}\n{}",
        ranks.stderr()
    );
    let mut waited_for_victim = 0;
    for r in 0..HOSTS {
        let (t, e) = errors[r].as_ref().unwrap();
        assert!(*t <= bound, "rank {r} detected the cut after {t:?}");
        assert!(
            e.contains("kind=Timeout") || e.contains("kind=PeerLost"),
            "rank {r}: {e}"
        );
        assert!(
            !e.contains("peer=none"),
            "rank {r}'s error names no rank: {e}"
        );
        assert!(
            !e.contains(&format!("peer={r} ")),
            "rank {r}'s error names itself: {e}"
        );
        // It waited for the victim (a Timeout listing it), or heartbeats found the victim
        // silent first (PeerLost naming it).
        if r != victim
            && (e.contains(&format!("from rank {victim}"))
                || (e.contains("kind=PeerLost") && e.contains(&format!("peer={victim} "))))
        {
            waited_for_victim += 1;
        }
        let a = again[r].as_ref().unwrap();
        assert!(
            a.contains("ok=false"),
            "rank {r}: a call after the failure: {a}"
        );
    }
    if algo.contains("direct") {
        // Everyone waits on the victim directly: it is among whom each survivor waited for
        // (first, unless the survivor was also waiting on a rank still one call behind).
        assert_eq!(
            waited_for_victim,
            HOSTS - 1,
            "every survivor must have waited for rank {victim}"
        );
    }
    // Other schedules (ring, tree, halving-doubling) make some ranks wait on the victim only
    // through others: each names whom it waited for, or the rank whose abort reached it first.
}

#[test]
fn netns_link_cut_gives_prompt_named_errors() {
    if std::env::var(CHILD_MARKER).is_ok() || !can_run() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let t0 = Instant::now();
    link_cut("", 2);
    link_cut("allreduce:direct", 2);
    println!("link-cut tests took {:.1?}", t0.elapsed());
}

/// Multi-path TCP: two hosts joined by two links, OXCCL_SOCKET_IFNAME=eth0,eth1. One link is
/// cut (`ip link set eth1 down`) while the ranks loop 4 MiB all-reduces: the collectives carry
/// on over the other link, correct, with a WARN naming the dead path, not an error. Then the
/// second link is cut too: now both ranks fail promptly with an error naming the other.
#[test]
fn netns_multipath_survives_a_cut_path() {
    if std::env::var(CHILD_MARKER).is_ok() || !can_run() {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let t_start = Instant::now();
    let timeout = Duration::from_millis(6000);
    let topo = Topology::create_two_paths("mp").expect("topology");
    let (_store, addr, secret) = serve_store(&topo.hosts[0], "10.77.1.1");
    let ms = timeout.as_millis().to_string();
    let mut ranks = Ranks::spawn(
        &topo,
        addr,
        &secret,
        &[
            ("OXCCL_TIMEOUT_MS", &ms),
            ("OXCCL_SOCKET_IFNAME", "eth0,eth1"),
            ("OXCCL_DEBUG", "INFO"),
        ],
        "mpath",
    );
    let n = topo.hosts.len();
    let next = |ranks: &Ranks, until: Instant, what: &str| -> (usize, String, Instant) {
        let left = until.saturating_duration_since(Instant::now());
        ranks
            .lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("{what}: nothing within the deadline\n{}", ranks.stderr()))
    };
    // Warm up, then cut path 1.
    let mut iters = vec![0usize; n];
    let limit = Instant::now() + Duration::from_secs(60);
    while iters.iter().any(|&i| i < 5) {
        let (r, line, _) = next(&ranks, limit, "before the first cut");
        assert!(
            !line.contains("ERROR "),
            "rank {r} failed before the cut: {line}"
        );
        if line.contains("ITER ") {
            iters[r] += 1;
        }
    }
    let multi = ranks.stderr().contains("multi-path tcp over 2 paths");
    assert!(multi, "the link is not multi-path:\n{}", ranks.stderr());
    ip(&["-n", &topo.hosts[1], "link", "set", "eth1", "down"]).expect("cut eth1");
    let cut1 = Instant::now();
    // Keep going: at least 10 more correct iterations on each rank after the WARN.
    let mut warned: Option<Duration> = None;
    let mut after = vec![0usize; n];
    let mut slowest = Duration::ZERO;
    let limit = cut1 + timeout * 3;
    while warned.is_none() || after.iter().any(|&a| a < 10) {
        while let Ok((r, l, at)) = ranks.errs.try_recv() {
            if warned.is_none() && l.contains("WARN") && l.contains("failed") && l.contains("path")
            {
                warned = Some(at - cut1);
                println!("rank {r}: {l}");
            }
        }
        let (r, line, _) = next(&ranks, limit, "after cutting eth1");
        assert!(
            !line.contains("ERROR "),
            "rank {r} failed after one path was cut: {line}"
        );
        if let Some(ms) = line.split(' ').nth(2).and_then(|m| m.parse::<u64>().ok()) {
            slowest = slowest.max(Duration::from_millis(ms));
        }
        if line.contains("ITER ") && warned.is_some() {
            after[r] += 1;
        }
    }
    let warned = warned.unwrap();
    // Now the last path.
    ip(&["-n", &topo.hosts[1], "link", "set", "eth0", "down"]).expect("cut eth0");
    let cut2 = Instant::now();
    let mut errors: Vec<Option<(Duration, String)>> = vec![None; n];
    let bound = timeout + Duration::from_secs(2);
    while errors.iter().any(Option::is_none) {
        let (r, line, at) = next(&ranks, cut2 + bound, "after cutting both paths");
        if line.contains("ERROR ") {
            errors[r] = Some((at - cut2, line));
        }
    }
    let codes = ranks.wait(Instant::now() + Duration::from_secs(20));
    println!(
        "\nmulti-path: eth1 cut -> WARN after {warned:.3?}, collectives went on (slowest iteration {slowest:?}, \
         >= 10 more per rank, all correct); then eth0 cut:"
    );
    for (r, e) in errors.iter().enumerate() {
        let (t, l) = e.as_ref().unwrap();
        println!(
            "  rank {r}: error after {t:.3?}: {}",
            l.chars().take(200).collect::<String>()
        );
        assert!(*t <= bound, "rank {r} took {t:?} to fail");
        assert!(l.contains(&format!("peer={}", 1 - r)), "rank {r}: {l}");
    }
    assert!(
        codes.iter().all(|c| *c == Some(0)),
        "exit codes {codes:?}\n{}",
        ranks.stderr()
    );
    assert!(
        warned <= timeout,
        "the dead path was noticed only after {warned:?}"
    );
    println!("multi-path test took {:.1?}", t_start.elapsed());
}
