//! Syscall wrappers for the shared-memory transport: anonymous memory files (memfd), shared
//! mappings, process-shared futexes and descriptor passing over Unix sockets (SCM_RIGHTS).
//!
//! Nothing here touches the file system: a memfd lives only as long as some process holds a
//! descriptor or a mapping of it, so the kernel frees it when the last user exits, even after
//! `kill -9`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

/// Creates an anonymous memory file of `len` zeroed bytes whose size is then sealed (it can
/// neither grow nor shrink, so a peer that maps it can never be hit by SIGBUS from a truncation).
pub fn memfd_sealed(name: &str, len: usize) -> io::Result<OwnedFd> {
    let cname = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `cname` is a valid NUL-terminated string that outlives the call.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len_off = libc::off_t::try_from(len).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: ftruncate on a descriptor we own; no memory is passed.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), len_off) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl(F_ADD_SEALS) on a descriptor we own takes an int argument.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// Checks that `fd` is a memory file whose size is sealed, and returns its size in bytes.
pub fn sealed_size(fd: RawFd) -> io::Result<usize> {
    // SAFETY: fcntl(F_GET_SEALS) takes no pointer; an fd that is not a memfd yields an error.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::last_os_error());
    }
    let need = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
    if seals & need != need {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "memory file is not sealed against resizing",
        ));
    }
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a live, writable stat struct for fstat to fill.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
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
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a live, 4-byte aligned atomic for the whole call; the kernel only reads
    // it. `ts` is a live timespec. Errors (EAGAIN, EINTR, ETIMEDOUT) all mean "go and look".
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes every thread (in any process) sleeping in [`futex_wait`] on `word`.
pub fn futex_wake(word: &AtomicU32) {
    // SAFETY: `word` is a live aligned atomic; FUTEX_WAKE does not write user memory.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

/// Sends `data` with the descriptors `fds` attached (SCM_RIGHTS) on a connected Unix socket.
/// Sends all of `data` in one message or fails.
pub fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> io::Result<()> {
    const MAX_FDS: usize = 4;
    if fds.len() > MAX_FDS || data.is_empty() {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // Control buffer, 8-byte aligned as cmsghdr requires.
    let mut cbuf = [0u64; 8];
    let fd_bytes = size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    debug_assert!(space <= size_of_val(&cbuf));
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: msg_control points at `cbuf`, which holds `space` bytes, so the first header
        // and its data (CMSG_LEN of the fds) are inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(c), fd_bytes);
        }
    }
    loop {
        // SAFETY: msg points at live iovec and control buffers for the duration of the call;
        // sendmsg only reads them.
        let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n as usize != data.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg"));
        }
        return Ok(());
    }
}

/// Receives one message into `buf` with up to `max_fds` descriptors (made close-on-exec).
/// Returns the bytes read (0 at EOF) and the descriptors that came with them. A message whose
/// descriptors did not all fit (MSG_CTRUNC, or more than `max_fds`) is an error, and the ones
/// that did arrive are closed.
pub fn recv_with_fds(
    sock: RawFd,
    buf: &mut [u8],
    max_fds: usize,
) -> io::Result<(usize, Vec<OwnedFd>)> {
    const MAX_FDS: usize = 4;
    let max_fds = max_fds.min(MAX_FDS);
    let mut cbuf = [0u64; 8];
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE((max_fds * size_of::<RawFd>()) as u32) } as usize;
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is valid (null pointers, zero lengths).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = loop {
        // SAFETY: msg points at the live, writable `buf` and `cbuf` for the duration of the call.
        let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        break n as usize;
    };
    let mut fds = Vec::new();
    // SAFETY: the kernel filled msg_control with well-formed headers up to msg_controllen;
    // CMSG_FIRSTHDR/NXTHDR stay within it, and each SCM_RIGHTS payload holds whole ints that
    // are descriptors now owned by this process.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c);
                let bytes = (*c).cmsg_len as usize - (data as usize - c as usize);
                for i in 0..bytes / size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > max_fds {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "descriptors were dropped in transit (MSG_CTRUNC)",
        ));
    }
    Ok((n, fds))
}

/// Whether the peer of a connected stream socket has closed it (a non-blocking peek reads
/// EOF or the connection is broken). Data waiting to be read counts as "not closed".
pub fn peer_closed(sock: RawFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: `b` is a live one-byte buffer; MSG_PEEK leaves the data in the socket.
    let n = unsafe {
        libc::recv(
            sock,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return true;
    }
    if n < 0 {
        let e = io::Error::last_os_error();
        return !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        );
    }
    false
}

/// The pid (in this process's pid namespace) of the process at the other end of a connected
/// Unix socket, from SO_PEERCRED; `None` if the kernel will not say or the peer's pid is not
/// visible from here (0).
pub fn peer_pid(sock: RawFd) -> Option<i32> {
    // SAFETY: an all-zero ucred is a valid value of this plain C struct.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live and describe a writable ucred-sized buffer.
    let rc = unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    (rc == 0 && cred.pid > 0).then_some(cred.pid)
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
    // SAFETY: pidfd_open takes a pid and flags, and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
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
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::Ordering;

    #[test]
    fn memfd_is_sealed_mapped_and_shared() {
        let fd = memfd_sealed("oxccl-test", 8192).unwrap();
        assert_eq!(sealed_size(fd.as_raw_fd()).unwrap(), 8192);
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
        assert!(sealed_size(f.as_raw_fd()).is_err());
    }

    #[test]
    fn fds_pass_over_a_unix_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let fd = memfd_sealed("oxccl-test", 4096).unwrap();
        send_with_fds(a.as_raw_fd(), b"hi", &[fd.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 8];
        let (n, fds) = recv_with_fds(b.as_raw_fd(), &mut buf, 2).unwrap();
        assert_eq!(&buf[..n], b"hi");
        assert_eq!(fds.len(), 1);
        assert_eq!(sealed_size(fds[0].as_raw_fd()).unwrap(), 4096);
        // Two descriptors where only one is accepted: an error, nothing leaks.
        send_with_fds(a.as_raw_fd(), b"x", &[fd.as_raw_fd(), fd.as_raw_fd()]).unwrap();
        assert!(recv_with_fds(b.as_raw_fd(), &mut buf, 1).is_err());
        assert!(!peer_closed(b.as_raw_fd()));
        drop(a);
        assert!(peer_closed(b.as_raw_fd()));
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
        assert_eq!(peer_pid(a.as_raw_fd()), Some(std::process::id() as i32));
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
