//! The few unsafe syscall wrappers oxccl needs. Everything above this module is safe code.

pub mod shm;

use std::io;

/// This machine's host name (empty string if the kernel will not say).
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Fills `buf` with random bytes from the kernel (getrandom(2)).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match rustix::rand::getrandom(&mut buf[done..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => done += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A random u64 from the kernel.
pub(crate) fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // getrandom only fails on ancient kernels; fall back to time and pid mixing then.
    if random_bytes(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        return t ^ ((std::process::id() as u64) << 32);
    }
    u64::from_le_bytes(b)
}

/// The kernel's boot id (distinguishes hosts that share a host name; containers on one host share it).
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Waits for events on `fds` for at most `timeout_ms` (-1: forever). Returns how many are ready.
/// EINTR counts as zero ready.
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: the pointer and length describe `fds`, a live mutable slice of pollfd structs.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}

/// The CPUs this process may run on (sched_getaffinity(2)), in increasing order.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    let set = rustix::thread::sched_getaffinity(None)?;
    Ok((0..rustix::thread::CpuSet::MAX_CPU)
        .filter(|&c| set.is_set(c))
        .collect())
}

/// Restricts process (thread group leader) `pid` to CPU `cpu` (sched_setaffinity(2)); threads
/// it starts afterwards inherit that.
pub fn bind_to_cpu(pid: i32, cpu: usize) -> io::Result<()> {
    if cpu >= rustix::thread::CpuSet::MAX_CPU {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is beyond the CPU set"),
        ));
    }
    let mut set = rustix::thread::CpuSet::new();
    set.set(cpu);
    // Pid 0 (None) is the calling process, as for sched_setaffinity(2).
    rustix::thread::sched_setaffinity(rustix::process::Pid::from_raw(pid), &set)?;
    Ok(())
}

/// Gives the CPU to another runnable thread (sched_yield(2)).
pub(crate) fn yield_now() {
    std::thread::yield_now();
}

/// A zeroed heap buffer aligned to 64 bytes (a cache line), used for link slots.
pub(crate) struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf owns its allocation exclusively, like a Box<[u8]>.
unsafe impl Send for AlignedBuf {}
// SAFETY: shared references only give out &[u8], like a Box<[u8]>.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    const ALIGN: usize = 64;

    /// Allocates `len` zeroed bytes (at least one, so the pointer is always valid).
    pub(crate) fn new(len: usize) -> AlignedBuf {
        let layout =
            std::alloc::Layout::from_size_align(len.max(1), Self::ALIGN).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    /// The bytes.
    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised (zeroed) bytes for self's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes, and &mut self makes this the only reference.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len.max(1), Self::ALIGN)
            .expect("valid layout");
        // SAFETY: allocated in new() with this same layout and not freed before.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

/// One IPv4 address of a local network interface, as getifaddrs(3) lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ipv4Interface {
    /// The interface name (`eth0`, `lo`...).
    pub name: String,
    /// Its IPv4 address.
    pub addr: std::net::Ipv4Addr,
    /// `IFF_UP`.
    pub up: bool,
    /// `IFF_LOOPBACK`.
    pub loopback: bool,
}

/// Every IPv4 address of every local interface, in the kernel's order (getifaddrs(3)).
pub(crate) fn ipv4_interfaces() -> io::Result<Vec<Ipv4Interface>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a pointer to a list it allocated into `head`, which is a valid
    // place for one pointer; on success we free that list below with freeifaddrs exactly once.
    let rc = unsafe { libc::getifaddrs(&mut head) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a non-null node of the list getifaddrs returned, which stays valid
        // until freeifaddrs; ifa_name is a NUL-terminated string and ifa_addr is either null or
        // points to a sockaddr whose family says its real type (sockaddr_in for AF_INET).
        unsafe {
            let ifa = &*cur;
            if !ifa.ifa_addr.is_null() && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let flags = ifa.ifa_flags;
                out.push(Ipv4Interface {
                    name: std::ffi::CStr::from_ptr(ifa.ifa_name)
                        .to_string_lossy()
                        .into_owned(),
                    addr: std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    up: flags & (libc::IFF_UP as u32) != 0,
                    loopback: flags & (libc::IFF_LOOPBACK as u32) != 0,
                });
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once; no reference into the
    // list outlives this point (names were copied into owned Strings).
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// The processors online on this host (sysconf `_SC_NPROCESSORS_ONLN`; at least 1): the same
/// for every process of the host whatever its affinity.
pub(crate) fn cpus_online() -> usize {
    // SAFETY: sysconf only reads a system parameter.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as usize } else { 1 }
}

static RANKS_HERE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// Records that `n` ranks (of some communicator) run on this host; with more of them than CPUs
/// an idle executor yields almost at once instead of spinning.
pub(crate) fn note_ranks_on_host(n: usize) {
    RANKS_HERE.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
}

/// The most ranks of one communicator seen on this host so far (0 before any link).
pub(crate) fn ranks_on_host() -> usize {
    RANKS_HERE.load(std::sync::atomic::Ordering::Relaxed)
}

/// shutdown(2) both ways; used to wake a thread blocked in accept() on a listener that this
/// process owns. Errors are ignored (the socket may already be shut).
pub(crate) fn shutdown_socket(sock: std::os::fd::BorrowedFd<'_>) {
    let _ = rustix::net::shutdown(sock, rustix::net::Shutdown::Both);
}

/// Deepens a listening socket's accept queue to `backlog` (the kernel caps it at
/// net.core.somaxconn). The standard library listens with 128: when a thousand ranks connect
/// at once the rest of their SYNs are dropped and retried a second or more later.
pub(crate) fn set_listen_backlog(listener: &std::net::TcpListener, backlog: i32) -> io::Result<()> {
    // Calling listen(2) again on a listening socket only changes the queue's length.
    Ok(rustix::net::listen(listener, backlog)?)
}

/// Sets TCP_USER_TIMEOUT: how long sent data may stay unacknowledged by the peer's kernel
/// before the connection fails with ETIMEDOUT (how a multi-path link notices a cut path).
pub(crate) fn set_tcp_user_timeout(
    sock: std::os::fd::BorrowedFd<'_>,
    timeout: std::time::Duration,
) -> io::Result<()> {
    let ms = timeout.as_millis().clamp(1, u32::MAX as u128) as u32;
    Ok(rustix::net::sockopt::set_tcp_user_timeout(sock, ms)?)
}

/// Writes to a stream socket (TCP or Unix) with `MSG_NOSIGNAL`: a peer that has gone away is
/// an `EPIPE` error, never a SIGPIPE in the host process. std's `TcpStream::write` already
/// passes that flag, but its `write_vectored` is a plain `writev(2)`, which raises SIGPIPE in a
/// host (a C program) that keeps the signal's default disposition. Every socket write of the
/// library goes through this type or std's flagged `write`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NoSigPipe<'a>(std::os::fd::BorrowedFd<'a>);

impl<'a> NoSigPipe<'a> {
    /// Wraps a connected stream socket.
    pub(crate) fn new(sock: &'a impl std::os::fd::AsFd) -> NoSigPipe<'a> {
        NoSigPipe(sock.as_fd())
    }
}

impl io::Write for NoSigPipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(rustix::net::send(
            self.0,
            buf,
            rustix::net::SendFlags::NOSIGNAL,
        )?)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let bufs = &bufs[..bufs.len().min(1024)];
        Ok(rustix::net::sendmsg(
            self.0,
            bufs,
            &mut rustix::net::SendAncillaryBuffer::default(),
            rustix::net::SendFlags::NOSIGNAL,
        )?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_bound_to_a_cpu_is_allowed_only_that_one() {
        let cpus = allowed_cpus().unwrap();
        let cpu = *cpus.last().unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let r = bind_to_cpu(child.id() as i32, cpu);
        let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()));
        child.kill().ok();
        child.wait().ok();
        r.unwrap();
        let allowed = status
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap();
        assert_eq!(allowed, cpu.to_string());
        assert!(bind_to_cpu(child.id() as i32, libc::CPU_SETSIZE as usize).is_err());
    }
}
