//! An in-process emulated RDMA NIC (test infrastructure, also usable by anyone who wants to run
//! the RDMA protocol without hardware).
//!
//! A [`Fabric`] holds every queue pair, completion queue and memory registration of the devices
//! made from it. It obeys the reliable-connection rules listed in `super::nic`: a write is
//! executed in post order per queue pair, its bytes are copied into the target's registered
//! memory (keys, ranges and access checked as a NIC checks them) and only then does the
//! immediate's completion appear on the target's completion queue. Writes to a queue pair that
//! is gone, killed or not yet connected are lost and retried after a retry delay, up to the
//! retry count, then fail with `RETRY_EXC_ERR` and put the sender's queue pair in the error
//! state (later requests flush); a write with an immediate that finds no posted receive waits
//! (RNR, retried without limit, as `rnr_retry = 7` does). Completion channels are eventfds.
//!
//! Work is done by whichever thread posts, polls or posts a receive; a small engine thread runs
//! only while some write waits for a retry. Faults: [`Fabric::kill`] (a device's queue pairs
//! enter the error state, as when its port or process dies) and [`Fabric::lose_packets`].
//!
//! **Test-only hook for communicators**: a thread that holds [`Fabric::enter`]'s guard while it
//! calls `Communicator::init` gets this fabric as its RDMA device (label = its rank), so
//! threads-as-ranks in one process run real collectives over emulated RDMA links
//! (`Config.transport = Some(TransportKind::Rdma)` to use them for every peer).

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::nic::{
    Completion, CompletionKind, Mr, Nic, NicDevice, QpAddress, QpCaps, Remote, Sge, status,
};
use crate::error::Error;
use crate::error::Result;

const MAX_SGE: usize = 2;

/// An emulated network: devices, queue pairs, registrations. Cheap to clone (shared).
#[derive(Clone)]
pub struct Fabric {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Fabric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fabric").finish_non_exhaustive()
    }
}

struct Shared {
    st: Mutex<State>,
    cv: Condvar,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QpState {
    Init,
    Rts,
    Error,
}

#[derive(Clone, Copy)]
struct Wr {
    wr_id: u64,
    sge: [Sge; MAX_SGE],
    nsge: usize,
    remote: Remote,
    imm: Option<u32>,
}

struct Qp {
    label: usize,
    pd: u64,
    state: QpState,
    remote: u32,
    sq: VecDeque<Wr>,
    rq: VecDeque<u64>,
    cq: VecDeque<Completion>,
    armed: bool,
    efd: RawFd,
    retries: u32,
    not_before: Option<Instant>,
    rnr_blocked: bool,
    caps: QpCaps,
}

struct MrEntry {
    pd: u64,
    mr: Mr,
    remote_write: bool,
}

struct State {
    next_qpn: u32,
    next_key: u32,
    next_pd: u64,
    qps: HashMap<u32, Qp>,
    mrs: HashMap<u32, MrEntry>,
    /// Per device label: deliveries still to lose.
    lose: HashMap<usize, u32>,
    retry_cnt: u32,
    retry_delay: Duration,
    rnr_delay: Duration,
    engine: bool,
}

enum Fail {
    /// Not acknowledged: retry.
    Lost,
    /// No posted receive at the target: retry later.
    Rnr,
    /// A completion error.
    Status(u32),
}

thread_local! {
    static CURRENT: RefCell<Option<Fabric>> = const { RefCell::new(None) };
}

/// While alive, communicators initialised on this thread use the fabric (see [`Fabric::enter`]).
#[derive(Debug)]
pub struct EnterGuard {
    prev: Option<Fabric>,
}

impl Drop for EnterGuard {
    fn drop(&mut self) {
        let prev = self.prev.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

/// The fabric this thread entered, if any.
pub(crate) fn current() -> Option<Fabric> {
    CURRENT.with(|c| c.borrow().clone())
}

impl Default for Fabric {
    fn default() -> Self {
        Fabric::new()
    }
}

impl Fabric {
    /// A fabric with 7 transport retries, 2 ms apart.
    pub fn new() -> Fabric {
        Fabric::with_retries(7, Duration::from_millis(2))
    }

    /// A fabric whose lost writes are retried `retry_cnt` times, `delay` apart (the emulated
    /// acknowledgement timeout), before they fail.
    pub fn with_retries(retry_cnt: u32, delay: Duration) -> Fabric {
        Fabric {
            shared: Arc::new(Shared {
                st: Mutex::new(State {
                    next_qpn: 0x100,
                    next_key: 0x1000,
                    next_pd: 1,
                    qps: HashMap::new(),
                    mrs: HashMap::new(),
                    lose: HashMap::new(),
                    retry_cnt,
                    retry_delay: delay,
                    rnr_delay: Duration::from_micros(200),
                    engine: false,
                }),
                cv: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Opens device `label` (its own protection domain): `emu:<label>`.
    pub fn device(&self, label: usize) -> Arc<dyn NicDevice> {
        let pd = {
            let mut st = self.lock();
            st.next_pd += 1;
            st.next_pd
        };
        Arc::new(EmuDevice {
            fabric: self.clone(),
            label,
            pd,
        })
    }

    /// Until the guard drops, `Communicator::init` on this thread uses this fabric for RDMA
    /// (device label = the rank). Test-only: the emulated NIC moves bytes between threads of
    /// one process.
    pub fn enter(&self) -> EnterGuard {
        let prev = CURRENT.with(|c| c.borrow_mut().replace(self.clone()));
        EnterGuard { prev }
    }

    /// Every queue pair of device `label` enters the error state, as when its port or its
    /// process dies: its outstanding requests flush, and peers' writes to it go unanswered
    /// (retried, then `RETRY_EXC_ERR`).
    pub fn kill(&self, label: usize) {
        let mut st = self.lock();
        let qpns: Vec<u32> = st
            .qps
            .iter()
            .filter(|(_, q)| q.label == label)
            .map(|(&n, _)| n)
            .collect();
        for n in qpns {
            if let Some(q) = st.qps.get_mut(&n) {
                to_error(q, None);
            }
        }
    }

    /// The next `n` writes sent from device `label` are lost on the wire (each one is retried).
    pub fn lose_packets(&self, label: usize, n: u32) {
        *self.lock().lose.entry(label).or_insert(0) += n;
    }

    /// Queue pairs alive on the fabric (tests check that links clean up).
    pub fn queue_pairs(&self) -> usize {
        self.lock().qps.len()
    }

    /// Registrations alive on the fabric.
    pub fn registrations(&self) -> usize {
        self.lock().mrs.len()
    }

    fn kick_engine(&self, st: &mut State) {
        if st.engine {
            self.shared.cv.notify_one();
            return;
        }
        st.engine = true;
        let f = self.clone();
        let spawned = std::thread::Builder::new()
            .name("oxccl-emu-nic".into())
            .stack_size(64 << 10)
            .spawn(move || f.engine());
        if spawned.is_err() {
            st.engine = false;
        }
    }

    /// Retries deferred writes when they are due; exits when none is left.
    fn engine(&self) {
        let mut st = self.lock();
        loop {
            let due: Vec<u32> = st
                .qps
                .iter()
                .filter(|(_, q)| !q.sq.is_empty())
                .map(|(&n, _)| n)
                .collect();
            for n in due {
                pump(&mut st, n);
            }
            let next = st
                .qps
                .values()
                .filter(|q| !q.sq.is_empty())
                .filter_map(|q| q.not_before)
                .min();
            match next {
                None => {
                    st.engine = false;
                    return;
                }
                Some(t) => {
                    let left = t
                        .saturating_duration_since(Instant::now())
                        .max(Duration::from_micros(50));
                    st = self
                        .shared
                        .cv
                        .wait_timeout(st, left)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }
}

fn signal(efd: RawFd) {
    let one = 1u64;
    // SAFETY: writes 8 bytes from a live u64 to an eventfd this fabric's NIC owns; the Qp entry
    // holding `efd` is removed (under the fabric lock, which the caller holds) before the fd is
    // closed. A full counter (EAGAIN) only means it is already readable.
    let _ = unsafe { libc::write(efd, (&raw const one).cast(), 8) };
}

fn push(q: &mut Qp, c: Completion) {
    q.cq.push_back(c);
    if q.armed {
        q.armed = false;
        signal(q.efd);
    }
}

/// Puts `q` in the error state: `head` (if any) completes with its status, then every other
/// request, send and receive, is flushed.
fn to_error(q: &mut Qp, head: Option<(u64, u32)>) {
    q.state = QpState::Error;
    if let Some((wr_id, st)) = head {
        q.sq.pop_front();
        push(
            q,
            Completion {
                wr_id,
                status: st,
                ..Completion::default()
            },
        );
    }
    while let Some(w) = q.sq.pop_front() {
        push(
            q,
            Completion {
                wr_id: w.wr_id,
                status: status::WR_FLUSH_ERR,
                ..Completion::default()
            },
        );
    }
    while let Some(r) = q.rq.pop_front() {
        push(
            q,
            Completion {
                wr_id: r,
                status: status::WR_FLUSH_ERR,
                kind: CompletionKind::RecvImm,
                ..Completion::default()
            },
        );
    }
    q.not_before = None;
    q.rnr_blocked = false;
}

/// Copies `len` bytes between registered ranges; an aligned 8-byte write is single-copy atomic,
/// as a NIC's is (credit counters are read while the peer may be updating them).
///
/// # Safety
/// Both ranges must be valid (registered, so kept alive by their owners' contracts) and the
/// protocol must keep any other access to `dst` away during the copy (except atomic 8-byte reads).
unsafe fn copy(src: u64, dst: u64, len: usize) {
    let (s, d) = (src as usize as *const u8, dst as usize as *mut u8);
    if len == 8 && src % 8 == 0 && dst % 8 == 0 {
        // SAFETY: both are 8-byte aligned and valid for 8 bytes (contract); AtomicU64 has the
        // layout of u64.
        unsafe {
            let v = (*s.cast::<AtomicU64>()).load(Ordering::Acquire);
            (*d.cast::<AtomicU64>()).store(v, Ordering::Release);
        }
    } else if len > 0 {
        // SAFETY: valid ranges per the contract; `copy` tolerates overlap.
        unsafe { std::ptr::copy(s, d, len) };
    }
}

/// Executes `qpn`'s queued writes in order until one must wait or the queue is empty.
fn pump(st: &mut State, qpn: u32) {
    loop {
        let now = Instant::now();
        let Some(q) = st.qps.get_mut(&qpn) else {
            return;
        };
        if q.state == QpState::Error {
            to_error(q, None);
            return;
        }
        let Some(&wr) = q.sq.front() else {
            return;
        };
        if q.not_before.is_some_and(|t| now < t) {
            return;
        }
        let r = deliver(st, qpn, &wr);
        let retry_cnt = st.retry_cnt;
        let (retry_delay, rnr_delay) = (st.retry_delay, st.rnr_delay);
        let Some(q) = st.qps.get_mut(&qpn) else {
            return;
        };
        match r {
            Ok(()) => {
                q.sq.pop_front();
                q.retries = 0;
                q.not_before = None;
                q.rnr_blocked = false;
                push(
                    q,
                    Completion {
                        wr_id: wr.wr_id,
                        ..Completion::default()
                    },
                );
            }
            Err(Fail::Lost) => {
                q.retries += 1;
                if q.retries > retry_cnt {
                    to_error(q, Some((wr.wr_id, status::RETRY_EXC_ERR)));
                    return;
                }
                q.not_before = Some(now + retry_delay);
                return;
            }
            Err(Fail::Rnr) => {
                q.rnr_blocked = true;
                q.not_before = Some(now + rnr_delay);
                return;
            }
            Err(Fail::Status(s)) => {
                to_error(q, Some((wr.wr_id, s)));
                return;
            }
        }
    }
}

fn deliver(st: &mut State, qpn: u32, wr: &Wr) -> std::result::Result<(), Fail> {
    let (label, pd, remote) = {
        let q = &st.qps[&qpn];
        (q.label, q.pd, q.remote)
    };
    if let Some(n) = st.lose.get_mut(&label).filter(|n| **n > 0) {
        *n -= 1;
        return Err(Fail::Lost);
    }
    let target = match st.qps.get(&remote) {
        Some(t) if t.state == QpState::Rts && t.remote == qpn => t,
        _ => return Err(Fail::Lost),
    };
    let mut total = 0usize;
    for s in &wr.sge[..wr.nsge] {
        let ok = st
            .mrs
            .get(&s.lkey)
            .is_some_and(|m| m.pd == pd && m.mr.covers(s.addr, s.len as usize));
        if !ok {
            return Err(Fail::Status(status::LOC_PROT_ERR));
        }
        total += s.len as usize;
    }
    let ok = st
        .mrs
        .get(&wr.remote.rkey)
        .is_some_and(|m| m.pd == target.pd && m.remote_write && m.mr.covers(wr.remote.addr, total));
    if !ok {
        return Err(Fail::Status(status::REM_ACCESS_ERR));
    }
    if wr.imm.is_some() && target.rq.is_empty() {
        return Err(Fail::Rnr);
    }
    let mut dst = wr.remote.addr;
    for s in &wr.sge[..wr.nsge] {
        // SAFETY: both ranges were just checked to lie in live registrations (kept alive by
        // the registering side's contract, and deregistration takes the fabric lock we hold);
        // the protocol keeps the target range free of other accesses while it is written.
        unsafe { copy(s.addr, dst, s.len as usize) };
        dst += u64::from(s.len);
    }
    if let Some(imm) = wr.imm {
        let t = st.qps.get_mut(&remote).expect("checked above");
        let r = t.rq.pop_front().expect("checked above");
        push(
            t,
            Completion {
                wr_id: r,
                kind: CompletionKind::RecvImm,
                imm,
                ..Completion::default()
            },
        );
    }
    Ok(())
}

struct EmuDevice {
    fabric: Fabric,
    label: usize,
    pd: u64,
}

impl NicDevice for EmuDevice {
    fn name(&self) -> String {
        format!("emu:{}", self.label)
    }

    fn open(&self, caps: QpCaps) -> Result<Box<dyn Nic>> {
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::io(
                "eventfd for an emulated completion channel",
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let efd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut st = self.fabric.lock();
        st.next_qpn = (st.next_qpn + 1) & 0xff_ffff;
        let qpn = st.next_qpn;
        st.qps.insert(
            qpn,
            Qp {
                label: self.label,
                pd: self.pd,
                state: QpState::Init,
                remote: 0,
                sq: VecDeque::with_capacity(caps.send_depth as usize),
                rq: VecDeque::with_capacity(caps.recv_depth as usize),
                cq: VecDeque::with_capacity((caps.send_depth + caps.recv_depth) as usize),
                armed: false,
                efd: efd.as_raw_fd(),
                retries: 0,
                not_before: None,
                rnr_blocked: false,
                caps,
            },
        );
        Ok(Box::new(EmuNic {
            fabric: self.fabric.clone(),
            label: self.label,
            pd: self.pd,
            qpn,
            psn: (crate::sys::random_u64() & 0xff_ffff) as u32,
            efd,
            keys: Vec::new(),
        }))
    }
}

/// One emulated queue pair.
struct EmuNic {
    fabric: Fabric,
    label: usize,
    pd: u64,
    qpn: u32,
    psn: u32,
    efd: OwnedFd,
    keys: Vec<u32>,
}

impl Nic for EmuNic {
    unsafe fn register(&mut self, addr: *mut u8, len: usize, remote_write: bool) -> Result<Mr> {
        let mut st = self.fabric.lock();
        st.next_key = st.next_key.wrapping_add(1).max(0x1000);
        let key = st.next_key;
        let mr = Mr {
            addr: addr as u64,
            len,
            lkey: key,
            rkey: if remote_write { key } else { 0 },
            handle: u64::from(key),
        };
        st.mrs.insert(
            key,
            MrEntry {
                pd: self.pd,
                mr,
                remote_write,
            },
        );
        self.keys.push(key);
        Ok(mr)
    }

    fn deregister(&mut self, mr: &Mr) {
        let key = mr.handle as u32;
        self.fabric.lock().mrs.remove(&key);
        self.keys.retain(|&k| k != key);
    }

    fn address(&self) -> QpAddress {
        QpAddress {
            lid: self.label as u16,
            gid: [0; 16],
            qpn: self.qpn,
            psn: self.psn,
            mtu: 5,
            link_layer: 1,
        }
    }

    fn connect(&mut self, remote: &QpAddress) -> Result<()> {
        let mut st = self.fabric.lock();
        let q = st.qps.get_mut(&self.qpn).expect("own queue pair");
        if q.state != QpState::Init {
            return Err(Error::internal(format!(
                "emulated QP {:#x} connected twice",
                self.qpn
            )));
        }
        q.remote = remote.qpn;
        q.state = QpState::Rts;
        Ok(())
    }

    unsafe fn post_write(
        &mut self,
        wr_id: u64,
        local: &[Sge],
        remote: Remote,
        imm: Option<u32>,
    ) -> Result<()> {
        if local.len() > MAX_SGE {
            return Err(Error::internal(format!(
                "{} scatter/gather entries (at most {MAX_SGE})",
                local.len()
            )));
        }
        let mut sge = [Sge::default(); MAX_SGE];
        sge[..local.len()].copy_from_slice(local);
        let mut st = self.fabric.lock();
        let q = st.qps.get_mut(&self.qpn).expect("own queue pair");
        if q.sq.len() >= q.caps.send_depth as usize {
            return Err(Error::internal(format!(
                "emulated send queue full ({} requests)",
                q.caps.send_depth
            )));
        }
        q.sq.push_back(Wr {
            wr_id,
            sge,
            nsge: local.len(),
            remote,
            imm,
        });
        pump(&mut st, self.qpn);
        if st.qps[&self.qpn].not_before.is_some() {
            self.fabric.kick_engine(&mut st);
        }
        Ok(())
    }

    fn post_recv(&mut self, wr_id: u64) -> Result<()> {
        let mut st = self.fabric.lock();
        let q = st.qps.get_mut(&self.qpn).expect("own queue pair");
        if q.state == QpState::Error {
            push(
                q,
                Completion {
                    wr_id,
                    status: status::WR_FLUSH_ERR,
                    kind: CompletionKind::RecvImm,
                    ..Completion::default()
                },
            );
            return Ok(());
        }
        if q.rq.len() >= q.caps.recv_depth as usize {
            return Err(Error::internal(format!(
                "emulated receive queue full ({} receives)",
                q.caps.recv_depth
            )));
        }
        q.rq.push_back(wr_id);
        // A peer's write waiting for a receive (RNR) can go now.
        let peer = q.remote;
        if let Some(p) = st.qps.get_mut(&peer).filter(|p| p.rnr_blocked) {
            p.rnr_blocked = false;
            p.not_before = None;
            pump(&mut st, peer);
        }
        Ok(())
    }

    fn poll(&mut self, out: &mut [Completion]) -> Result<usize> {
        let mut st = self.fabric.lock();
        pump(&mut st, self.qpn);
        let q = st.qps.get_mut(&self.qpn).expect("own queue pair");
        let n = out.len().min(q.cq.len());
        for (o, c) in out.iter_mut().zip(q.cq.drain(..n)) {
            *o = c;
        }
        Ok(n)
    }

    fn arm(&mut self) -> Result<()> {
        let mut st = self.fabric.lock();
        let q = st.qps.get_mut(&self.qpn).expect("own queue pair");
        q.armed = true;
        Ok(())
    }

    fn drain_events(&mut self) {
        let mut v = 0u64;
        // SAFETY: reads at most 8 bytes into a live u64 from our own non-blocking eventfd.
        while unsafe { libc::read(self.efd.as_raw_fd(), (&raw mut v).cast(), 8) } == 8 {}
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.efd.as_raw_fd())
    }
}

impl Drop for EmuNic {
    fn drop(&mut self) {
        // Like ibv_destroy_qp + ibv_dereg_mr: after this nothing touches our memory (the lock
        // orders it after any copy in progress), and peers' writes to us go unanswered.
        let mut st = self.fabric.lock();
        st.qps.remove(&self.qpn);
        for k in self.keys.drain(..) {
            st.mrs.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caps() -> QpCaps {
        QpCaps {
            send_depth: 8,
            recv_depth: 8,
        }
    }

    fn pair(f: &Fabric) -> (Box<dyn Nic>, Box<dyn Nic>) {
        let mut a = f.device(0).open(caps()).unwrap();
        let mut b = f.device(1).open(caps()).unwrap();
        let (aa, ba) = (a.address(), b.address());
        a.connect(&ba).unwrap();
        b.connect(&aa).unwrap();
        (a, b)
    }

    fn wait_one(n: &mut dyn Nic) -> Completion {
        let d = Instant::now() + Duration::from_secs(10);
        let mut c = [Completion::default(); 1];
        loop {
            if n.poll(&mut c).unwrap() == 1 {
                return c[0];
            }
            assert!(Instant::now() < d, "no completion");
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    #[test]
    fn write_with_imm_lands_before_its_completion_and_needs_a_receive() {
        let f = Fabric::new();
        let (mut a, mut b) = pair(&f);
        let mut src = vec![7u8; 100];
        let mut dst = vec![0u8; 100];
        // SAFETY: both buffers outlive the NICs' use (the NICs are dropped first below).
        let (ms, md) = unsafe {
            (
                a.register(src.as_mut_ptr(), 100, false).unwrap(),
                b.register(dst.as_mut_ptr(), 100, true).unwrap(),
            )
        };
        let sge = Sge {
            addr: ms.addr,
            len: 100,
            lkey: ms.lkey,
        };
        let remote = Remote {
            addr: md.addr,
            rkey: md.rkey,
        };
        // No receive posted at b: the write waits (RNR) and completes once one is posted.
        // SAFETY: src stays alive and unmodified until the completion.
        unsafe { a.post_write(1, &[sge], remote, Some(42)).unwrap() };
        std::thread::sleep(Duration::from_millis(5));
        let mut c = [Completion::default(); 4];
        assert_eq!(b.poll(&mut c).unwrap(), 0);
        b.post_recv(9).unwrap();
        let got = wait_one(b.as_mut());
        assert_eq!(
            (got.wr_id, got.imm, got.kind),
            (9, 42, CompletionKind::RecvImm)
        );
        assert_eq!(dst, src);
        assert_eq!(wait_one(a.as_mut()).status, status::SUCCESS);
        // A bad rkey is a remote access error, and the queue pair then flushes.
        let bad = Remote {
            addr: md.addr,
            rkey: md.rkey + 1000,
        };
        // SAFETY: as above.
        unsafe {
            a.post_write(2, &[sge], bad, None).unwrap();
            a.post_write(3, &[sge], remote, None).unwrap();
        }
        assert_eq!(wait_one(a.as_mut()).status, status::REM_ACCESS_ERR);
        assert_eq!(wait_one(a.as_mut()).status, status::WR_FLUSH_ERR);
        drop((a, b));
        assert_eq!((f.queue_pairs(), f.registrations()), (0, 0));
    }

    #[test]
    fn lost_packets_are_retried_then_fail() {
        let f = Fabric::with_retries(3, Duration::from_millis(1));
        let (mut a, mut b) = pair(&f);
        let mut buf = vec![0u8; 64];
        // SAFETY: buf outlives the NICs.
        let m = unsafe { b.register(buf.as_mut_ptr(), 64, true).unwrap() };
        let remote = Remote {
            addr: m.addr,
            rkey: m.rkey,
        };
        f.lose_packets(0, 3);
        // SAFETY: a zero-length write names no local memory.
        unsafe { a.post_write(1, &[], remote, None).unwrap() };
        assert_eq!(
            wait_one(a.as_mut()).status,
            status::SUCCESS,
            "3 losses, 3 retries"
        );
        f.lose_packets(0, 4);
        // SAFETY: as above.
        unsafe { a.post_write(2, &[], remote, None).unwrap() };
        assert_eq!(wait_one(a.as_mut()).status, status::RETRY_EXC_ERR);
        // A killed peer never answers either.
        let (mut c, d) = pair(&f);
        f.kill(1);
        // SAFETY: as above.
        unsafe { c.post_write(3, &[], remote, None).unwrap() };
        assert_eq!(wait_one(c.as_mut()).status, status::RETRY_EXC_ERR);
        drop((a, b, c, d));
    }

    #[test]
    fn the_channel_fd_fires_after_arming() {
        let f = Fabric::new();
        let (mut a, mut b) = pair(&f);
        let fd = b.completion_fd().unwrap();
        let mut buf = vec![0u8; 8];
        // SAFETY: buf outlives the NICs.
        let m = unsafe { b.register(buf.as_mut_ptr(), 8, true).unwrap() };
        b.post_recv(1).unwrap();
        b.arm().unwrap();
        let mut p = [libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        }];
        assert_eq!(crate::sys::poll(&mut p, 0).unwrap(), 0);
        let remote = Remote {
            addr: m.addr,
            rkey: m.rkey,
        };
        // SAFETY: zero-length.
        unsafe { a.post_write(1, &[], remote, Some(5)).unwrap() };
        assert_eq!(crate::sys::poll(&mut p, 1000).unwrap(), 1);
        b.drain_events();
        p[0].revents = 0;
        assert_eq!(crate::sys::poll(&mut p, 0).unwrap(), 0);
        assert_eq!(wait_one(b.as_mut()).imm, 5);
    }
}
