//! The few unsafe syscall wrappers oxccl needs. Everything above this module is safe code.

pub mod shm;

use std::io;

/// This machine's host name (empty string if the kernel will not say).
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the pointer and length describe `buf`, which outlives the call; gethostname writes
    // at most `len` bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Fills `buf` with random bytes from the kernel (getrandom(2)).
pub fn random_bytes(buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: the pointer and length describe `rest`, a live mutable slice.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        done += n as usize;
    }
    Ok(())
}

/// A random u64 from the kernel.
pub fn random_u64() -> u64 {
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
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Waits for events on `fds` for at most `timeout_ms` (-1: forever). Returns how many are ready.
/// EINTR counts as zero ready.
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
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
    // SAFETY: an all-zero cpu_set_t is a valid (empty) set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the size and pointer describe `set`, a live cpu_set_t.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CPU_ISSET reads the set within its fixed size (CPU_SETSIZE bits).
    Ok((0..libc::CPU_SETSIZE as usize)
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect())
}

/// Restricts process (thread group leader) `pid` to CPU `cpu` (sched_setaffinity(2)); threads
/// it starts afterwards inherit that.
pub fn bind_to_cpu(pid: i32, cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is beyond the CPU set"),
        ));
    }
    // SAFETY: an all-zero cpu_set_t is a valid (empty) set; cpu is within it (checked above).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the size and pointer describe `set`; the kernel checks the pid.
    if unsafe { libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Gives the CPU to another runnable thread (sched_yield(2)).
pub fn yield_now() {
    std::thread::yield_now();
}

/// A zeroed heap buffer aligned to 64 bytes (a cache line), used for link slots.
pub struct AlignedBuf {
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
    pub fn new(len: usize) -> AlignedBuf {
        let layout =
            std::alloc::Layout::from_size_align(len.max(1), Self::ALIGN).expect("valid layout");
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr =
            std::ptr::NonNull::new(p).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for len initialised (zeroed) bytes for self's lifetime.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
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

/// shutdown(2) on a raw descriptor; used to wake a thread blocked in accept() on a listener
/// that this process owns. Errors are ignored (the descriptor may already be shut).
pub fn shutdown_fd(fd: std::os::fd::RawFd) {
    // SAFETY: shutdown only changes socket state; an invalid or non-socket fd yields an error
    // that we ignore. The caller keeps the listener (and so the fd) open until after this call.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Deepens a listening socket's accept queue to `backlog` (the kernel caps it at
/// net.core.somaxconn). The standard library listens with 128: when a thousand ranks connect
/// at once the rest of their SYNs are dropped and retried a second or more later.
pub fn set_listen_backlog(listener: &std::net::TcpListener, backlog: i32) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: listen(2) on the descriptor of a listener we borrow (so it is open); calling it
    // again on a listening socket only changes the queue's length.
    if unsafe { libc::listen(listener.as_raw_fd(), backlog) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets TCP_USER_TIMEOUT: how long sent data may stay unacknowledged by the peer's kernel
/// before the connection fails with ETIMEDOUT (how a multi-path link notices a cut path).
pub fn set_tcp_user_timeout(
    fd: std::os::fd::RawFd,
    timeout: std::time::Duration,
) -> io::Result<()> {
    let ms = timeout.as_millis().clamp(1, u32::MAX as u128) as libc::c_uint;
    // SAFETY: `ms` is a live c_uint and the length passed is its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&ms as *const libc::c_uint).cast(),
            size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Writes to a stream socket (TCP or Unix) with `MSG_NOSIGNAL`: a peer that has gone away is
/// an `EPIPE` error, never a SIGPIPE in the host process. std's `TcpStream::write` already
/// passes that flag, but its `write_vectored` is a plain `writev(2)`, which raises SIGPIPE in a
/// host (a C program) that keeps the signal's default disposition. Every socket write of the
/// library goes through this type or std's flagged `write`.
#[derive(Debug, Clone, Copy)]
pub struct NoSigPipe<'a>(std::os::fd::BorrowedFd<'a>);

impl<'a> NoSigPipe<'a> {
    /// Wraps a connected stream socket.
    pub fn new(sock: &'a impl std::os::fd::AsFd) -> NoSigPipe<'a> {
        NoSigPipe(sock.as_fd())
    }
}

impl io::Write for NoSigPipe<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: the fd is borrowed from a live socket for 'a; the pointer and length describe
        // `buf`, which outlives the call.
        let n = unsafe {
            libc::send(
                self.0.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        use std::os::fd::AsRawFd;
        // SAFETY: an all-zero msghdr is valid (no name, no control data).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        // IoSlice is ABI-compatible with iovec on Unix (std guarantees it); sendmsg only reads.
        msg.msg_iov = bufs.as_ptr().cast_mut().cast();
        msg.msg_iovlen = bufs.len().min(1024) as _;
        // SAFETY: the fd is borrowed from a live socket; msg points at `bufs`, live slices that
        // outlive the call and that sendmsg only reads.
        let n = unsafe { libc::sendmsg(self.0.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
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
