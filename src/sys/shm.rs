//! Syscall wrappers for the shared-memory transport: anonymous memory files (memfd), shared
//! mappings, process-shared futexes and descriptor passing over Unix sockets (SCM_RIGHTS).
//!
//! Nothing here touches the file system: a memfd lives only as long as some process holds a
//! descriptor or a mapping of it, so the kernel frees it when the last user exits, even after
//! `kill -9`.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};

/// The most descriptors one message passes (SCM_RIGHTS).
const MAX_FDS: usize = 4;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Creates an anonymous memory file of `len` zeroed bytes whose size is then sealed (it can
/// neither grow nor shrink, so a peer that maps it can never be hit by SIGBUS from a truncation).
pub fn memfd_sealed(name: &str, len: usize) -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let len = i64::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
    rustix::fs::ftruncate(&fd, len as u64)?;
    rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
    Ok(fd)
}

/// Checks that `fd` is a memory file whose size is sealed, and returns its size in bytes.
pub fn sealed_size(fd: BorrowedFd<'_>) -> io::Result<usize> {
    use rustix::fs::SealFlags;
    // An fd that is not a memfd yields an error.
    let seals = rustix::fs::fcntl_get_seals(fd)?;
    if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "memory file is not sealed against resizing",
        ));
    }
    let st = rustix::fs::fstat(fd)?;
    usize::try_from(st.st_size).map_err(|_| io::ErrorKind::InvalidData.into())
}

/// A shared, read-write mapping of a whole memory file; unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; all concurrent access to it goes
// through atomics or through the link protocols built on top, which order it.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` hands out only raw pointers.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of `fd` (MAP_SHARED, read-write). `len` must not exceed the file's size.
    pub fn new(fd: RawFd, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: a fresh mapping at an address the kernel chooses; it aliases no Rust object.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u8>()).ok_or(io::ErrorKind::Other)?;
        Ok(Mapping { ptr, len })
    }

    /// Maps all `len` bytes of `fd` read-only (MAP_SHARED): a peer's memory this process only
    /// reads.
    pub fn new_read_only(fd: RawFd, len: usize) -> io::Result<Mapping> {
        if len == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // SAFETY: a fresh mapping at an address the kernel chooses; it aliases no Rust object.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = std::ptr::NonNull::new(p.cast::<u8>()).ok_or(io::ErrorKind::Other)?;
        Ok(Mapping { ptr, len })
    }

    /// The first byte (page aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: `new` refuses zero).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping made by `new` and not unmapped before; nothing
        // borrows from it past the owner's lifetime.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// Sleeps while `*word == expected`, for at most `timeout`, on a futex that may live in memory
/// shared with other processes (no FUTEX_PRIVATE_FLAG). Spurious returns are possible.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    use rustix::thread::futex;
    let ts = futex::Timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as i64,
        tv_nsec: i64::from(timeout.subsec_nanos()),
    };
    // Errors (EAGAIN, EINTR, ETIMEDOUT) all mean "go and look". No PRIVATE flag: the word may
    // live in memory shared with other processes.
    let _ = futex::wait(word, futex::Flags::empty(), expected, Some(&ts));
}

/// Wakes every thread (in any process) sleeping in [`futex_wait`] on `word`.
pub fn futex_wake(word: &AtomicU32) {
    use rustix::thread::futex;
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

/// Sends `data` with the descriptors `fds` attached (SCM_RIGHTS) on a connected Unix socket.
/// Sends all of `data` in one message or fails.
pub fn send_with_fds(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    if fds.len() > MAX_FDS || data.is_empty() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    let iov = [io::IoSlice::new(data)];
    loop {
        match rustix::net::sendmsg(sock, &iov, &mut control, SendFlags::NOSIGNAL) {
            Ok(n) if n == data.len() => return Ok(()),
            Ok(_) => return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg")),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Receives one message into `buf` with up to `max_fds` descriptors (made close-on-exec).
/// Returns the bytes read (0 at EOF) and the descriptors that came with them. A message whose
/// descriptors did not all fit (MSG_CTRUNC, or more than `max_fds`) is an error, and the ones
/// that did arrive are closed.
pub fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
    let max_fds = max_fds.min(MAX_FDS);
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let len = rustix::cmsg_space!(ScmRights(max_fds));
    let mut control = RecvAncillaryBuffer::new(&mut space[..len]);
    let msg = loop {
        let mut iov = [io::IoSliceMut::new(buf)];
        match rustix::net::recvmsg(sock, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC) {
            Ok(m) => break m,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    // Every descriptor that arrived is owned (and closed on an error below).
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(got) = m {
            fds.extend(got);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) || fds.len() > max_fds {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "descriptors were dropped in transit (MSG_CTRUNC)",
        ));
    }
    Ok((msg.bytes, fds))
}

/// Whether the peer of a connected stream socket has closed it (a non-blocking peek reads
/// EOF or the connection is broken). Data waiting to be read counts as "not closed".
pub fn peer_closed(sock: BorrowedFd<'_>) -> bool {
    use rustix::net::RecvFlags;
    let mut b = [0u8; 1];
    // MSG_PEEK leaves the data in the socket.
    match rustix::net::recv(sock, &mut b[..], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((0, _)) => true,
        Ok(_) => false,
        Err(e) => !matches!(e, rustix::io::Errno::AGAIN | rustix::io::Errno::INTR),
    }
}

/// The pid (in this process's pid namespace) of the process at the other end of a connected
/// Unix socket, from SO_PEERCRED; `None` if the kernel will not say or the peer's pid is not
/// visible from here (0).
pub fn peer_pid(sock: BorrowedFd<'_>) -> Option<i32> {
    let cred = rustix::net::sockopt::socket_peercred(sock).ok()?;
    let pid = cred.pid.as_raw_nonzero().get();
    (pid > 0).then_some(pid)
}

/// Copies `len` bytes from this process's `src` to address `dst` of process `pid`
/// (process_vm_writev, "cross-memory attach"). Returns the bytes copied; fewer than `len`, or an
/// error, means the copy did not (fully) happen — the kernel checks `dst` against the target's
/// mappings, so a bad address is an error (EFAULT), never a write into this process.
///
/// # Safety
/// `src..src + len` must be readable memory of this process.
pub unsafe fn write_process(pid: i32, src: *const u8, dst: u64, len: usize) -> io::Result<usize> {
    // SAFETY: src..src+len is readable (the caller's contract); writing: only read here.
    unsafe { cross_copy(pid, src.cast_mut(), dst, len, true) }
}

/// Copies `len` bytes from address `src` in process `pid` to `dst` here (process_vm_readv);
/// returns how many bytes were read (the kernel checks `src` against the target's mappings).
///
/// # Safety
/// `dst..dst + len` must be writable memory of this process that nothing else accesses during
/// the call.
pub unsafe fn read_process(pid: i32, src: u64, dst: *mut u8, len: usize) -> io::Result<usize> {
    // SAFETY: dst..dst+len is writable and ours alone (the caller's contract).
    unsafe { cross_copy(pid, dst, src, len, false) }
}

/// process_vm_writev (`write`: local to remote) or process_vm_readv (remote to local).
///
/// # Safety
/// `local..local + len` must be readable (`write`) or writable and unshared (read).
unsafe fn cross_copy(
    pid: i32,
    local: *mut u8,
    remote: u64,
    len: usize,
    write: bool,
) -> io::Result<usize> {
    let local = libc::iovec {
        iov_base: local.cast(),
        iov_len: len,
    };
    let remote = libc::iovec {
        iov_base: remote as usize as *mut libc::c_void,
        iov_len: len,
    };
    // SAFETY: the local iovec describes memory as the caller's contract requires; the remote
    // one is only interpreted by the kernel in the target's address space.
    let n = unsafe {
        if write {
            libc::process_vm_writev(pid, &local, 1, &remote, 1, 0)
        } else {
            libc::process_vm_readv(pid, &local, 1, &remote, 1, 0)
        }
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// A descriptor that becomes readable when process `pid` exits (pidfd_open(2), Linux 5.3+).
/// Unlike the pid, it cannot come to name another process later.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = rustix::process::Pid::from_raw(pid).ok_or(io::ErrorKind::InvalidInput)?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

/// A duplicate, in this process, of descriptor `target` of the process behind `pidfd`
/// (pidfd_getfd(2), Linux 5.6+; needs the same permission as process_vm_readv).
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, target: RawFd) -> io::Result<OwnedFd> {
    Ok(rustix::process::pidfd_getfd(
        pidfd,
        target,
        rustix::process::PidfdGetfdFlags::empty(),
    )?)
}

/// Whether the process behind a pidfd has exited (its descriptor is readable).
pub fn pidfd_exited(fd: RawFd) -> bool {
    let mut p = [libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    crate::sys::poll(&mut p, 0).is_ok_and(|n| n > 0)
}

/// This process's network namespace, as `/proc/self/ns/net` names it (e.g. `net:[4026531840]`);
/// empty if unknown. Abstract Unix socket names are only visible within one namespace.
pub fn net_namespace() -> String {
    std::fs::read_link("/proc/self/ns/net")
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::Ordering;

    #[test]
    fn memfd_is_sealed_mapped_and_shared() {
        let fd = memfd_sealed("oxccl-test", 8192).unwrap();
        assert_eq!(sealed_size(fd.as_fd()).unwrap(), 8192);
        // SAFETY: ftruncate on our own descriptor; the seal must refuse it.
        let rc = unsafe { libc::ftruncate(fd.as_raw_fd(), 100) };
        assert_ne!(rc, 0, "a sealed memfd must not shrink");
        let a = Mapping::new(fd.as_raw_fd(), 8192).unwrap();
        let b = Mapping::new(fd.as_raw_fd(), 8192).unwrap();
        // SAFETY: both mappings are 8192 bytes long; byte 4000 is in bounds.
        unsafe {
            a.as_ptr().add(4000).write(42);
            assert_eq!(b.as_ptr().add(4000).read(), 42);
        }
        // A plain file is not a sealed memfd.
        let f = std::fs::File::open("/proc/self/stat").unwrap();
        assert!(sealed_size(f.as_fd()).is_err());
    }

    #[test]
    fn fds_pass_over_a_unix_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let fd = memfd_sealed("oxccl-test", 4096).unwrap();
        send_with_fds(a.as_fd(), b"hi", &[fd.as_fd()]).unwrap();
        let mut buf = [0u8; 8];
        let (n, fds) = recv_with_fds(b.as_fd(), &mut buf, 2).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(fds.len(), 1);
        assert_eq!(sealed_size(fds[0].as_fd()).unwrap(), 4096);
        // Two descriptors where only one is accepted: an error, nothing leaks.
        send_with_fds(a.as_fd(), b"x", &[fd.as_fd(), fd.as_fd()]).unwrap();
        assert!(recv_with_fds(b.as_fd(), &mut buf, 1).is_err());
        assert!(!peer_closed(b.as_fd()));
        drop(a);
        assert!(peer_closed(b.as_fd()));
    }

    #[test]
    fn futex_wakes_across_mappings() {
        let fd = memfd_sealed("oxccl-test", 4096).unwrap();
        let a = Mapping::new(fd.as_raw_fd(), 4096).unwrap();
        let b = Mapping::new(fd.as_raw_fd(), 4096).unwrap();
        // SAFETY: page-aligned mappings of at least 4 bytes; AtomicU32 has alignment 4.
        let (wa, wb) = unsafe {
            (
                &*a.as_ptr().cast::<AtomicU32>(),
                &*b.as_ptr().cast::<AtomicU32>(),
            )
        };
        std::thread::scope(|s| {
            let t = s.spawn(|| {
                let deadline = std::time::Instant::now() + Duration::from_secs(20);
                while wa.load(Ordering::Acquire) == 0 {
                    assert!(std::time::Instant::now() < deadline);
                    futex_wait(wa, 0, Duration::from_secs(1));
                }
            });
            wb.store(1, Ordering::Release);
            futex_wake(wb);
            t.join().unwrap();
        });
        // A wait on a value that differs returns at once.
        futex_wait(wa, 7, Duration::from_secs(10));
    }

    #[test]
    fn peer_pid_and_cross_memory_write() {
        let (a, _b) = UnixStream::pair().unwrap();
        assert_eq!(peer_pid(a.as_fd()), Some(std::process::id() as i32));
        let src = [7u8; 64];
        let mut dst = [0u8; 64];
        // SAFETY: `src` is readable; the target is this process and `dst` a live buffer in it.
        let n = unsafe {
            write_process(
                std::process::id() as i32,
                src.as_ptr(),
                dst.as_mut_ptr() as u64,
                64,
            )
        };
        // Cross-memory attach may be forbidden (seccomp, Yama); then it says so.
        match n {
            Ok(n) => {
                assert_eq!(n, 64);
                assert_eq!(std::hint::black_box(&dst), &src);
            }
            Err(e) => eprintln!("process_vm_writev unavailable here: {e}"),
        }
        // A bad address is an error, not a crash.
        // SAFETY: as above; the kernel checks the (unmapped) target address.
        let bad = unsafe { write_process(std::process::id() as i32, src.as_ptr(), 8, 64) };
        assert!(bad.is_err());
    }

    #[test]
    fn pidfd_tells_when_a_child_exits() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let Ok(fd) = pidfd_open(child.id() as i32) else {
            let _ = child.kill();
            let _ = child.wait();
            return; // kernel without pidfd_open: the socket alone tells
        };
        assert!(!pidfd_exited(fd.as_raw_fd()));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(pidfd_exited(fd.as_raw_fd()));
    }

    #[test]
    fn net_namespace_is_named() {
        assert!(net_namespace().starts_with("net:["), "{}", net_namespace());
    }
}
