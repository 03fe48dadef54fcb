//! The event-driven replay: ports, CPUs, credits and in-order queues, as described in the
//! parent module.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use super::{Class, ELEM, Group, Network};
use crate::algo::{Op, Program};

const SEND: u8 = 0;
const RECV: u8 = 1;
const RECV_REDUCE: u8 = 2;
const COPY: u8 = 3;
const REDUCE: u8 = 4;
const FINISH: u8 = 5;

/// A step finished.
const DONE: u8 = 0;
/// A message reached the receiver's slot.
const ARRIVE: u8 = 1;
/// A credit came back to the sender.
const CREDIT: u8 = 2;
/// The head of a message reached the receiver's port (which takes messages in this order).
const HEAD: u8 = 3;

/// A message between its start and its arrival.
struct Msg {
    bytes: f64,
    start: f64,
    /// When its last byte can arrive as far as the sender (and the core) are concerned.
    tail: f64,
    class: Class,
    to: (u32, u32),
}

/// How many receives ahead of the next one the executor offers destinations for
/// (`exec::POST_AHEAD`).
const POST_AHEAD: usize = 16;

/// One peer's queues on one rank: sends and receives in program order.
struct Queue {
    class: Class,
    sends: Vec<u32>,
    next_send: usize,
    inflight: usize,
    recvs: Vec<u32>,
    next_recv: usize,
    arrived: usize,
    /// Per message in flight to this queue, whether it lands in a posted buffer (in order).
    placed: std::collections::VecDeque<bool>,
    /// The representative at the other end and its queue for this link.
    partner: (u32, u32),
    /// When this queue's last send leaves the sender's port.
    send_until: f64,
}

/// One replayed rank.
struct Rank {
    kind: Vec<u8>,
    queue: Vec<u32>,
    bytes: Vec<f64>,
    remaining: Vec<u32>,
    dep_start: Vec<u32>,
    dependents: Vec<u32>,
    queues: Vec<Queue>,
    peers: Vec<usize>,
    cpu_free: f64,
    tx_free: [f64; 2],
    rx_free: [f64; 2],
    host: usize,
    /// Index of its inter-host port in `Sim::ports`.
    port: usize,
    done: usize,
    end: f64,
}

impl Rank {
    fn compile(p: &Program, net: &Network) -> Rank {
        let n = p.steps.len();
        let me = p.shape.rank;
        let mut qidx: HashMap<usize, u32> = HashMap::new();
        let mut queues: Vec<Queue> = Vec::new();
        let mut peers = Vec::new();
        let mut kind = Vec::with_capacity(n);
        let mut queue = Vec::with_capacity(n);
        let mut bytes = Vec::with_capacity(n);
        let mut count = vec![0u32; n + 1];
        for (i, s) in p.steps.iter().enumerate() {
            let (k, len) = match s.op {
                Op::Send { src, .. } => (SEND, src.len),
                Op::Recv { dst, .. } => (RECV, dst.len),
                Op::RecvReduce { dst, .. } => (RECV_REDUCE, dst.len),
                Op::Copy { src, .. } => (COPY, src.len),
                Op::Reduce { src, .. } => (REDUCE, src.len),
                Op::Finish { dst } => (FINISH, dst.len),
            };
            kind.push(k);
            bytes.push((len * ELEM) as f64);
            let qi = match s.op.peer() {
                Some(peer) => {
                    let qi = *qidx.entry(peer).or_insert_with(|| {
                        queues.push(Queue {
                            class: net.class(me, peer),
                            sends: Vec::new(),
                            next_send: 0,
                            inflight: 0,
                            recvs: Vec::new(),
                            next_recv: 0,
                            arrived: 0,
                            placed: Default::default(),
                            partner: (0, 0),
                            send_until: 0.0,
                        });
                        peers.push(peer);
                        (queues.len() - 1) as u32
                    });
                    let q = &mut queues[qi as usize];
                    if k == SEND {
                        q.sends.push(i as u32);
                    } else {
                        q.recvs.push(i as u32);
                    }
                    qi
                }
                None => u32::MAX,
            };
            queue.push(qi);
            for &d in &s.deps {
                count[d as usize + 1] += 1;
            }
        }
        for i in 0..n {
            count[i + 1] += count[i];
        }
        let dep_start = count.clone();
        let mut dependents = vec![0u32; count[n] as usize];
        let mut fill = count;
        let mut remaining = Vec::with_capacity(n);
        for (i, s) in p.steps.iter().enumerate() {
            remaining.push(s.deps.len() as u32);
            for &d in &s.deps {
                dependents[fill[d as usize] as usize] = i as u32;
                fill[d as usize] += 1;
            }
        }
        Rank {
            kind,
            queue,
            bytes,
            remaining,
            dep_start,
            dependents,
            queues,
            peers,
            cpu_free: 0.0,
            tx_free: [0.0; 2],
            rx_free: [0.0; 2],
            host: net.host(me),
            port: 0,
            done: 0,
            end: 0.0,
        }
    }
}

/// A pending event, ordered earliest first (then in the order it was scheduled).
struct Ev {
    t: f64,
    seq: u64,
    what: u8,
    rank: u32,
    idx: u32,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Ev) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Ev) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    fn cmp(&self, o: &Ev) -> Ordering {
        // Reversed: BinaryHeap is a max-heap.
        o.t.total_cmp(&self.t).then(o.seq.cmp(&self.seq))
    }
}

struct Sim<'a> {
    net: &'a Network,
    ranks: Vec<Rank>,
    /// Inter-host ports: (send free, receive free).
    ports: Vec<[f64; 2]>,
    heap: BinaryHeap<Ev>,
    seq: u64,
    /// Per host: when each of its cores is free (empty: a core per rank).
    cores: HashMap<usize, Vec<f64>>,
    core_free: f64,
    /// Core seconds per byte of one representative's inter-host message (0: no core limit).
    core_per_byte: f64,
    dirty: Vec<u32>,
    stack: Vec<u32>,
    msgs: Vec<Msg>,
    /// Free slots of `msgs`.
    spare: Vec<u32>,
}

/// Replays the representatives' Programs; returns when the last rank finishes.
pub(super) fn run(
    programs: &[Program],
    group: Group,
    n: usize,
    net: &Network,
) -> Result<f64, String> {
    let mut ranks: Vec<Rank> = programs.iter().map(|p| Rank::compile(p, net)).collect();
    // Pair each queue with the representative's queue at the other end of the link.
    for r in 0..ranks.len() {
        for qi in 0..ranks[r].queues.len() {
            let peer = ranks[r].peers[qi];
            let b = group.rep(peer);
            let me = group.carry(n, peer, programs[r].shape.rank);
            let Some(pos) = ranks
                .get(b)
                .and_then(|rb| rb.peers.iter().position(|&x| x == me))
            else {
                return Err(format!(
                    "rank {} talks to rank {peer}, which never talks back",
                    programs[r].shape.rank
                ));
            };
            ranks[r].queues[qi].partner = (b as u32, pos as u32);
        }
    }
    let mut cores = HashMap::new();
    if net.cores_per_host > 0 {
        for r in &ranks {
            cores
                .entry(r.host)
                .or_insert_with(|| vec![0.0; net.cores_per_host]);
        }
    }
    // Inter-host ports: one per rank, or the NICs of each host its ranks share.
    let mut port_ids: HashMap<(usize, usize), usize> = HashMap::new();
    for (r, p) in programs.iter().enumerate() {
        let next = port_ids.len();
        ranks[r].port = *port_ids.entry(net.port(p.shape.rank)).or_insert(next);
    }
    let ports = vec![[0.0f64; 2]; port_ids.len()];
    let core_per_byte = if net.oversub > 1.0 {
        net.oversub / (ports.len() as f64 * net.inter.bw)
    } else {
        0.0
    };
    let mut sim = Sim {
        net,
        ranks,
        ports,
        heap: BinaryHeap::new(),
        seq: 0,
        cores,
        core_free: 0.0,
        core_per_byte,
        dirty: Vec::new(),
        stack: Vec::new(),
        msgs: Vec::new(),
        spare: Vec::new(),
    };
    for r in 0..sim.ranks.len() {
        let ready: Vec<u32> = (0..sim.ranks[r].kind.len() as u32)
            .filter(|&s| sim.ranks[r].remaining[s as usize] == 0)
            .collect();
        for s in ready {
            sim.ready(r, s, 0.0);
        }
        sim.settle(r, 0.0);
    }
    while let Some(ev) = sim.heap.pop() {
        let (r, i, t) = (ev.rank as usize, ev.idx, ev.t);
        match ev.what {
            DONE => sim.complete(r, i, t),
            ARRIVE => {
                sim.ranks[r].queues[i as usize].arrived += 1;
                sim.try_recv(r, i as usize, t);
            }
            HEAD => sim.head(i, t),
            _ => {
                sim.ranks[r].queues[i as usize].inflight -= 1;
                sim.try_send(r, i as usize, t);
            }
        }
    }
    let mut end: f64 = 0.0;
    for (r, st) in sim.ranks.iter().enumerate() {
        if st.done < st.kind.len() {
            return Err(format!(
                "the replay deadlocked: rank {} finished {} of {} steps",
                programs[r].shape.rank,
                st.done,
                st.kind.len()
            ));
        }
        end = end.max(st.end);
    }
    Ok(end)
}

impl Sim<'_> {
    fn push(&mut self, t: f64, what: u8, rank: usize, idx: u32) {
        self.seq += 1;
        self.heap.push(Ev {
            t,
            seq: self.seq,
            what,
            rank: rank as u32,
            idx,
        });
    }

    /// Books `cost` seconds of rank `r`'s CPU starting no earlier than `at`; returns the start.
    fn cpu(&mut self, r: usize, at: f64, cost: f64) -> f64 {
        let st = &mut self.ranks[r];
        let mut start = at.max(st.cpu_free);
        if let Some(cores) = self.cores.get_mut(&st.host) {
            let (k, free) = cores
                .iter()
                .copied()
                .enumerate()
                .min_by(|a, b| a.1.total_cmp(&b.1))
                .expect("at least one core");
            start = start.max(free);
            cores[k] = start + cost;
        }
        st.cpu_free = start + cost;
        start
    }

    /// Step `s` of rank `r` has no dependencies left at time `t`.
    fn ready(&mut self, r: usize, s: u32, t: f64) {
        let st = &self.ranks[r];
        let bytes = st.bytes[s as usize];
        let cost = match st.kind[s as usize] {
            SEND | RECV | RECV_REDUCE => {
                self.dirty.push(st.queue[s as usize]);
                return;
            }
            COPY => bytes / self.net.copy_bw,
            REDUCE => bytes / self.net.reduce_bw,
            FINISH => 0.0,
            _ => unreachable!("six kinds of step"),
        };
        if cost > 0.0 {
            let start = self.cpu(r, t, cost);
            self.push(start + cost, DONE, r, s);
        } else {
            self.stack.push(s);
        }
    }

    /// Step `s` of rank `r` finished at `t`.
    fn complete(&mut self, r: usize, s: u32, t: f64) {
        self.stack.push(s);
        self.settle(r, t);
    }

    /// Completes the steps on the stack (and the free steps they make ready), then starts what
    /// became possible on the queues.
    fn settle(&mut self, r: usize, t: f64) {
        while let Some(s) = self.stack.pop() {
            let st = &mut self.ranks[r];
            st.done += 1;
            st.end = st.end.max(t);
            let (a, b) = (
                st.dep_start[s as usize] as usize,
                st.dep_start[s as usize + 1] as usize,
            );
            for k in a..b {
                let d = self.ranks[r].dependents[k];
                let rem = &mut self.ranks[r].remaining[d as usize];
                *rem -= 1;
                if *rem == 0 {
                    self.ready(r, d, t);
                }
            }
        }
        self.drain(r, t);
    }

    /// Tries the queues that steps became ready on.
    fn drain(&mut self, r: usize, t: f64) {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        for &q in &dirty {
            self.try_send(r, q as usize, t);
            self.try_recv(r, q as usize, t);
        }
        dirty.clear();
        self.dirty = dirty;
    }

    /// Starts the sends of queue `q` that may go: in order, dependencies done, credit left.
    fn try_send(&mut self, r: usize, q: usize, t: f64) {
        loop {
            let st = &self.ranks[r];
            let qq = &st.queues[q];
            if qq.next_send >= qq.sends.len() || qq.inflight >= self.net.credits {
                return;
            }
            let s = qq.sends[qq.next_send];
            if st.remaining[s as usize] > 0 {
                return;
            }
            let (class, (b, qb)) = (qq.class, qq.partner);
            let link = self.net.link(class);
            let bytes = st.bytes[s as usize];
            let port = st.port;
            let free = match class {
                Class::Inter => self.ports[port][0],
                Class::Intra => st.tx_free[0],
            };
            let mut start = t.max(free);
            // A peer sending back on this connection, or about to (its next send is ready),
            // slows this send (Network::duplex). Under symmetry the partner queue may be this
            // one: the peer then does what this rank does, so it is sending too.
            let crossing = class == Class::Inter && self.net.duplex > 1.0 && {
                let rb = &self.ranks[b as usize];
                let pq = &rb.queues[qb as usize];
                pq.send_until > start
                    || pq.sends.get(pq.next_send).is_some_and(|&ps| {
                        rb.remaining[ps as usize] == 0 && pq.inflight < self.net.credits
                    })
            };
            let wire = bytes / link.bw * if crossing { self.net.duplex } else { 1.0 };
            let busy = link.overhead + wire;
            if self.net.host_driven {
                start = self.cpu(r, start, busy);
            }
            let end = start + busy;
            match class {
                Class::Inter => self.ports[port][0] = end,
                Class::Intra => self.ranks[r].tx_free[0] = end,
            }
            let st = &mut self.ranks[r];
            st.queues[q].next_send += 1;
            st.queues[q].inflight += 1;
            st.queues[q].send_until = end;
            let m = Msg {
                bytes,
                start,
                tail: end + link.lat,
                class,
                to: (b, qb),
            };
            let id = match self.spare.pop() {
                Some(id) => {
                    self.msgs[id as usize] = m;
                    id
                }
                None => {
                    self.msgs.push(m);
                    (self.msgs.len() - 1) as u32
                }
            };
            self.push(end, DONE, r, s);
            self.push(start + link.lat, HEAD, 0, id);
        }
    }

    /// Message `id`'s head reaches the receiver at `t`: it crosses the core (inter-host, when
    /// oversubscribed) and takes the receiver's port after the messages that came before it.
    fn head(&mut self, id: u32, t: f64) {
        let m = &self.msgs[id as usize];
        let (bytes, class, (b, qb)) = (m.bytes, m.class, m.to);
        let link = self.net.link(class);
        let mut tail = m.tail;
        if class == Class::Inter && self.core_per_byte > 0.0 {
            let cs = m.start.max(self.core_free);
            self.core_free = cs + bytes * self.core_per_byte;
            tail = tail.max(self.core_free + link.lat);
        }
        self.spare.push(id);
        // A plain receive whose destination is free by now (and within the executor's window)
        // has been posted: the message lands in place, and the receiver copies nothing.
        let rb = &mut self.ranks[b as usize];
        let q = &rb.queues[qb as usize];
        let k = q.next_recv + q.placed.len();
        let placed = self.net.posted_recv
            && k < q.next_recv + POST_AHEAD
            && q.recvs
                .get(k)
                .is_some_and(|&s| rb.kind[s as usize] == RECV && rb.remaining[s as usize] == 0);
        rb.queues[qb as usize].placed.push_back(placed);
        let rx = match class {
            Class::Inter => &mut self.ports[rb.port][1],
            Class::Intra => &mut rb.rx_free[0],
        };
        let arrival = tail.max(t.max(*rx) + bytes / link.bw);
        *rx = arrival;
        self.push(arrival, ARRIVE, b as usize, qb);
    }

    /// Consumes the receives of queue `q` whose message is there and whose destination is free.
    fn try_recv(&mut self, r: usize, q: usize, t: f64) {
        loop {
            let st = &self.ranks[r];
            let qq = &st.queues[q];
            if qq.next_recv >= qq.recvs.len() || qq.arrived <= qq.next_recv {
                return;
            }
            let s = qq.recvs[qq.next_recv];
            if st.remaining[s as usize] > 0 {
                return;
            }
            let (class, (b, qb)) = (qq.class, qq.partner);
            let link = self.net.link(class);
            let placed = qq.placed.front().copied().unwrap_or(false);
            let bytes = st.bytes[s as usize];
            let work = match st.kind[s as usize] {
                RECV_REDUCE => bytes / self.net.reduce_bw,
                _ if placed => 0.0,
                _ => bytes / self.net.copy_bw,
            };
            let cost = link.overhead + work;
            let qm = &mut self.ranks[r].queues[q];
            qm.placed.pop_front();
            qm.next_recv += 1;
            let start = self.cpu(r, t, cost);
            self.push(start + cost, DONE, r, s);
            self.push(start + cost + link.lat, CREDIT, b as usize, qb);
        }
    }
}
