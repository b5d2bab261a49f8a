//! Weighted fair turns on the wasm runtime's threads.
//!
//! A guest runs only while it holds a [`Turn`]; the runtime has as many
//! turns as it has threads. A guest takes one before each call into the
//! plugin and gives it back at every epoch tick (its slice), then queues
//! for the next. When guests wait, the next turn goes to the waiting tenant
//! that has had the least CPU for its weight (its virtual time: CPU-ns
//! divided by `cpu_weight`), and within a tenant to its longest waiting
//! guest. So a tenant with sixteen busy sessions gets one queue, not
//! sixteen, and another tenant's one session waits at most for a slice.
//!
//! [`FairQueue`] is the decision alone, with time passed in, so tests drive
//! it by hand and count turns; [`Turns`] wraps it for tasks.
//!
//! A guest blocked in a host call (a socket, say) keeps its turn without
//! reaching a slice boundary. A turn not given back within [`STALE`] no
//! longer counts against the threads, so such guests cannot starve the
//! runtime; it still counts against its tenant's `max_concurrent_commands`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

/// How long a turn may go without a slice boundary before it is taken to
/// be blocked (in a host call) rather than computing: ten epoch ticks of the
/// default 10 ms.
pub const STALE: Duration = Duration::from_millis(100);

/// How far behind the others' virtual time a tenant that starts waiting
/// again may start: a few slices of credit, so one whose guests were only
/// between commands (a round trip to the client) keeps its place, while
/// one that was idle for long does not bank the time.
const IDLE_CREDIT_NS: f64 = 50_000_000.0;

/// One tenant's queue of waiting guests and its account of turns.
#[derive(Debug)]
struct Lane {
    weight: u32,
    cap: usize,
    /// CPU-ns used divided by the weight.
    vtime: f64,
    held: usize,
    waiting: VecDeque<u64>,
}

/// Who gets the next turn. Time is passed in; nothing here sleeps.
#[derive(Debug)]
pub struct FairQueue {
    slots: usize,
    lanes: HashMap<Arc<str>, Lane>,
    /// The virtual time of the last grant: a tenant that starts waiting
    /// again starts no further behind it than [`IDLE_CREDIT_NS`], so time
    /// it spent idle is not credit.
    clock: f64,
    /// Turns out now: their tenant and when they were granted.
    holders: BTreeMap<u64, (Arc<str>, Instant)>,
    next_id: u64,
}

/// A turn granted to a waiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The waiter it went to.
    pub waiter: u64,
    /// The turn's id, to give it back with.
    pub turn: u64,
}

impl FairQueue {
    /// A queue with `slots` turns (the runtime's threads), at least one.
    pub fn new(slots: usize) -> Self {
        Self {
            slots: slots.max(1),
            lanes: HashMap::new(),
            clock: 0.0,
            holders: BTreeMap::new(),
            next_id: 1,
        }
    }

    /// Sets a tenant's weight and cap (`None`: no cap of its own).
    pub fn configure(&mut self, tenant: &Arc<str>, weight: u32, cap: Option<usize>) {
        let lane = self.lane(tenant);
        lane.weight = weight.max(1);
        lane.cap = cap.unwrap_or(usize::MAX).max(1);
    }

    fn lane(&mut self, tenant: &Arc<str>) -> &mut Lane {
        self.lanes.entry(Arc::clone(tenant)).or_insert(Lane {
            weight: 1,
            cap: usize::MAX,
            vtime: 0.0,
            held: 0,
            waiting: VecDeque::new(),
        })
    }

    /// A new waiter of `tenant`, at the back of its lane; returns its id.
    pub fn enqueue(&mut self, tenant: &Arc<str>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let clock = self.clock;
        let lane = self.lane(tenant);
        if lane.waiting.is_empty() && lane.held == 0 {
            lane.vtime = lane.vtime.max(clock - IDLE_CREDIT_NS);
        }
        lane.waiting.push_back(id);
        id
    }

    /// Takes a waiter out of its lane; false if it is not there (granted).
    pub fn cancel(&mut self, tenant: &Arc<str>, waiter: u64) -> bool {
        let Some(lane) = self.lanes.get_mut(tenant) else {
            return false;
        };
        match lane.waiting.iter().position(|w| *w == waiter) {
            Some(i) => {
                lane.waiting.remove(i);
                true
            }
            None => false,
        }
    }

    /// Gives a turn back, charging its tenant `cost` of CPU.
    pub fn release(&mut self, turn: u64, cost: Duration) {
        let Some((tenant, _)) = self.holders.remove(&turn) else {
            return;
        };
        if let Some(lane) = self.lanes.get_mut(&tenant) {
            lane.held = lane.held.saturating_sub(1);
            lane.vtime += cost.as_nanos() as f64 / f64::from(lane.weight);
        }
    }

    /// Turns out that are not stale at `now`.
    fn busy(&self, now: Instant) -> usize {
        self.holders
            .values()
            .filter(|(_, at)| now.saturating_duration_since(*at) < STALE)
            .count()
    }

    /// The next grant, if a turn is free and someone waits: the waiting
    /// tenant under its cap with the least virtual time (ties by name),
    /// its longest waiting guest.
    pub fn next_grant(&mut self, now: Instant) -> Option<Grant> {
        if self.busy(now) >= self.slots {
            return None;
        }
        let (tenant, lane) = self
            .lanes
            .iter_mut()
            .filter(|(_, l)| !l.waiting.is_empty() && l.held < l.cap)
            .min_by(|(an, a), (bn, b)| a.vtime.total_cmp(&b.vtime).then_with(|| an.cmp(bn)))?;
        let waiter = lane.waiting.pop_front()?;
        lane.held += 1;
        self.clock = self.clock.max(lane.vtime);
        let turn = self.next_id;
        self.next_id += 1;
        self.holders.insert(turn, (Arc::clone(tenant), now));
        Some(Grant { waiter, turn })
    }

    /// Turns `tenant` holds now.
    pub fn held(&self, tenant: &str) -> usize {
        self.lanes.get(tenant).map_or(0, |l| l.held)
    }

    /// Guests of `tenant` waiting now.
    pub fn waiting(&self, tenant: &str) -> usize {
        self.lanes.get(tenant).map_or(0, |l| l.waiting.len())
    }
}

/// The queue shared by every session's task.
#[derive(Debug)]
pub struct Turns {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    queue: FairQueue,
    /// Where each waiter hears of its grant.
    waiters: HashMap<u64, oneshot::Sender<u64>>,
}

impl Turns {
    /// `slots` turns: the runtime's threads.
    pub fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(State {
                queue: FairQueue::new(slots),
                waiters: HashMap::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets a tenant's weight and cap.
    pub fn configure(&self, tenant: &Arc<str>, weight: u32, cap: Option<usize>) {
        self.lock().queue.configure(tenant, weight, cap);
    }

    /// Hands out every turn that is free to the waiters next in line.
    fn dispatch(state: &mut State, now: Instant) {
        while let Some(grant) = state.queue.next_grant(now) {
            let sent = state
                .waiters
                .remove(&grant.waiter)
                .map(|tx| tx.send(grant.turn).is_ok());
            if sent != Some(true) {
                // The waiter went away between its cancel and here.
                state.queue.release(grant.turn, Duration::ZERO);
            }
        }
    }

    /// Queues for a turn of `tenant` now; the returned [`Pending`] waits
    /// for it. Queueing before any await keeps the guest's place in line
    /// while its task waits to be polled.
    pub fn request(self: &Arc<Self>, tenant: &Arc<str>) -> Pending {
        let mut state = self.lock();
        self.enqueue(&mut state, tenant)
    }

    fn enqueue(self: &Arc<Self>, state: &mut State, tenant: &Arc<str>) -> Pending {
        let (tx, rx) = oneshot::channel();
        let waiter = state.queue.enqueue(tenant);
        state.waiters.insert(waiter, tx);
        Self::dispatch(state, Instant::now());
        Pending {
            turns: Arc::clone(self),
            tenant: Arc::clone(tenant),
            waiter,
            rx: Some(rx),
        }
    }

    /// Waits for a turn of `tenant`.
    pub async fn acquire(self: &Arc<Self>, tenant: &Arc<str>) -> Turn {
        self.request(tenant).wait().await
    }
}

/// A guest in line for a turn. Cancel-safe: dropped in line, it leaves
/// the line, and a turn already granted to it goes back.
#[derive(Debug)]
pub struct Pending {
    turns: Arc<Turns>,
    tenant: Arc<str>,
    waiter: u64,
    rx: Option<oneshot::Receiver<u64>>,
}

impl Pending {
    /// Waits for the turn.
    pub async fn wait(mut self) -> Turn {
        // Granted in the same step as queued (a turn was free): no timer.
        if let Some(rx) = self.rx.as_mut()
            && let Ok(id) = rx.try_recv()
        {
            self.rx = None;
            return Turn {
                turns: Arc::clone(&self.turns),
                tenant: Arc::clone(&self.tenant),
                id,
            };
        }
        loop {
            let Some(rx) = self.rx.as_mut() else {
                unreachable!("taken only on return");
            };
            tokio::select! {
                granted = rx => {
                    self.rx = None;
                    return Turn {
                        turns: Arc::clone(&self.turns),
                        tenant: Arc::clone(&self.tenant),
                        // The sender is dropped unsent only with the queue's
                        // state, which this holds: never. Run without a turn
                        // (id 0) rather than hang.
                        id: granted.unwrap_or(0),
                    };
                }
                // A holder may have gone stale (blocked in a host call).
                _ = tokio::time::sleep(STALE) => {
                    Turns::dispatch(&mut self.turns.lock(), Instant::now());
                }
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut state = self.turns.lock();
        state.waiters.remove(&self.waiter);
        if !state.queue.cancel(&self.tenant, self.waiter)
            && let Ok(turn) = rx.try_recv()
        {
            state.queue.release(turn, Duration::ZERO);
            Turns::dispatch(&mut state, Instant::now());
        }
    }
}

/// A turn on the runtime's threads; given back when dropped.
#[derive(Debug)]
pub struct Turn {
    turns: Arc<Turns>,
    tenant: Arc<str>,
    id: u64,
}

impl Turn {
    /// Gives the turn back, charging its tenant `cost` of CPU.
    pub fn finish(mut self, cost: Duration) {
        self.give_back(cost);
    }

    /// Gives the turn back, charging `cost`, and queues for the next in
    /// the same step: a guest at a slice boundary stays in line while its
    /// task yields.
    pub fn renew(mut self, cost: Duration) -> Pending {
        let id = std::mem::take(&mut self.id);
        let turns = Arc::clone(&self.turns);
        let mut state = turns.lock();
        state.queue.release(id, cost);
        turns.enqueue(&mut state, &self.tenant)
    }

    fn give_back(&mut self, cost: Duration) {
        let id = std::mem::take(&mut self.id);
        if id == 0 {
            return;
        }
        let mut state = self.turns.lock();
        state.queue.release(id, cost);
        Turns::dispatch(&mut state, Instant::now());
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.give_back(Duration::ZERO);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLICE: Duration = Duration::from_millis(10);

    fn name(s: &str) -> Arc<str> {
        s.into()
    }

    /// Runs `turns` grants one at a time (one thread), each guest
    /// computing a whole slice and queueing again at once; counts turns.
    fn run(
        q: &mut FairQueue,
        waiting: &[(&Arc<str>, usize)],
        turns: usize,
    ) -> HashMap<String, usize> {
        let now = Instant::now();
        let mut owner = HashMap::new();
        for (tenant, n) in waiting {
            for _ in 0..*n {
                owner.insert(q.enqueue(tenant), Arc::clone(tenant));
            }
        }
        let mut counts = HashMap::new();
        for _ in 0..turns {
            let g = q.next_grant(now).expect("someone waits");
            let tenant = owner.remove(&g.waiter).unwrap();
            *counts.entry(tenant.to_string()).or_insert(0) += 1;
            q.release(g.turn, SLICE);
            owner.insert(q.enqueue(&tenant), tenant);
        }
        counts
    }

    #[test]
    fn weights_three_to_one_get_three_turns_to_one() {
        let (a, b) = (name("a"), name("b"));
        let mut q = FairQueue::new(1);
        q.configure(&a, 3, None);
        q.configure(&b, 1, None);
        let counts = run(&mut q, &[(&a, 4), (&b, 4)], 400);
        assert_eq!((counts["a"], counts["b"]), (300, 100), "{counts:?}");
    }

    #[test]
    fn many_busy_sessions_do_not_starve_one() {
        let (a, b) = (name("a"), name("b"));
        let mut q = FairQueue::new(2);
        let counts = run(&mut q, &[(&a, 16), (&b, 1)], 200);
        // Equal weights: one queue each, whatever their sessions.
        assert_eq!((counts["a"], counts["b"]), (100, 100), "{counts:?}");
    }

    #[test]
    fn a_waiting_tenant_is_next_after_a_slice() {
        let (a, b) = (name("a"), name("b"));
        let now = Instant::now();
        let mut q = FairQueue::new(1);
        for _ in 0..16 {
            q.enqueue(&a);
        }
        let first = q.next_grant(now).unwrap();
        // a's first guest runs; b's one command arrives.
        let b_waiter = q.enqueue(&b);
        assert_eq!(q.next_grant(now), None, "one thread, taken");
        q.release(first.turn, SLICE);
        assert_eq!(q.next_grant(now).unwrap().waiter, b_waiter);
    }

    #[test]
    fn an_idle_tenant_does_not_bank_its_idle_time() {
        let (a, b) = (name("a"), name("b"));
        let now = Instant::now();
        let mut q = FairQueue::new(1);
        // a computes alone for a long while.
        for _ in 0..1000 {
            q.enqueue(&a);
            let g = q.next_grant(now).unwrap();
            q.release(g.turn, SLICE);
        }
        // b arrives: it starts a few slices of credit behind a and then
        // they share, rather than b taking 1000 turns in a row.
        let counts = run(&mut q, &[(&a, 1), (&b, 1)], 100);
        assert!(counts["a"] >= 40 && counts["b"] <= 60, "{counts:?}");
    }

    #[test]
    fn the_cap_bounds_a_tenants_turns_at_once() {
        let (a, b) = (name("a"), name("b"));
        let now = Instant::now();
        let mut q = FairQueue::new(4);
        q.configure(&a, 1, Some(1));
        for _ in 0..3 {
            q.enqueue(&a);
        }
        q.enqueue(&b);
        let grants: Vec<_> = std::iter::from_fn(|| q.next_grant(now)).collect();
        assert_eq!(grants.len(), 2, "a once (its cap), b once");
        assert_eq!((q.held("a"), q.held("b")), (1, 1));
        assert_eq!(q.waiting("a"), 2);
    }

    #[test]
    fn a_turn_held_past_stale_frees_its_thread_but_not_its_cap() {
        let (a, b) = (name("a"), name("b"));
        let now = Instant::now();
        let mut q = FairQueue::new(1);
        q.configure(&a, 1, Some(1));
        q.enqueue(&a);
        q.enqueue(&a);
        let blocked = q.next_grant(now).unwrap();
        let bw = q.enqueue(&b);
        assert_eq!(q.next_grant(now + STALE / 2), None);
        let later = now + STALE;
        assert_eq!(q.next_grant(later).unwrap().waiter, bw);
        // a's second guest still waits for a's cap.
        assert_eq!(q.next_grant(later + STALE), None);
        q.release(blocked.turn, Duration::ZERO);
        assert!(q.next_grant(later + STALE).is_some());
    }

    #[test]
    fn a_cancelled_waiter_leaves_the_line() {
        let a = name("a");
        let now = Instant::now();
        let mut q = FairQueue::new(1);
        let w1 = q.enqueue(&a);
        let w2 = q.enqueue(&a);
        assert!(q.cancel(&a, w1));
        assert_eq!(q.next_grant(now).unwrap().waiter, w2);
        assert!(!q.cancel(&a, w2), "granted, not in line");
    }

    #[tokio::test]
    async fn turns_are_handed_over_in_fair_order() {
        let turns = Turns::new(1);
        let (a, b) = (name("a"), name("b"));
        let held = turns.acquire(&a).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for t in [&a, &a, &b] {
            let (turns, t, order) = (Arc::clone(&turns), Arc::clone(t), Arc::clone(&order));
            tasks.push(tokio::spawn(async move {
                let turn = turns.acquire(&t).await;
                order.lock().unwrap().push(t.to_string());
                turn.finish(SLICE);
            }));
            tokio::task::yield_now().await;
        }
        // a holds the only turn and has used a slice: b goes before a's
        // second and third guests.
        held.finish(SLICE);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(order.lock().unwrap()[0], "b");
    }

    #[tokio::test]
    async fn a_dropped_waiter_gives_its_turn_back() {
        let turns = Turns::new(1);
        let a = name("a");
        let held = turns.acquire(&a).await;
        let waiter = tokio::time::timeout(Duration::from_millis(1), turns.acquire(&a)).await;
        assert!(waiter.is_err(), "no turn free");
        drop(held);
        // The abandoned waiter neither holds a turn nor stands in line.
        let again = tokio::time::timeout(Duration::from_secs(5), turns.acquire(&a)).await;
        assert!(again.is_ok());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn weighted_turns_hold_on_a_real_runtime() {
        let turns = Turns::new(2);
        let (a, b) = (name("a"), name("b"));
        turns.configure(&a, 3, None);
        let counts = Arc::new(Mutex::new(HashMap::<String, u32>::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for t in [&a, &b] {
            for _ in 0..4 {
                let (turns, t, counts, stop) = (
                    Arc::clone(&turns),
                    Arc::clone(t),
                    Arc::clone(&counts),
                    Arc::clone(&stop),
                );
                // As a guest: slices, renewing its turn at each boundary.
                tasks.push(tokio::spawn(async move {
                    let mut turn = turns.acquire(&t).await;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let began = Instant::now();
                        while began.elapsed() < Duration::from_micros(500) {
                            std::hint::spin_loop();
                        }
                        *counts.lock().unwrap().entry(t.to_string()).or_default() += 1;
                        let next = turn.renew(began.elapsed());
                        tokio::task::yield_now().await;
                        turn = next.wait().await;
                    }
                }));
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        let counts = counts.lock().unwrap();
        let ratio = f64::from(counts["a"]) / f64::from(counts["b"]);
        assert!((2.0..=4.5).contains(&ratio), "{counts:?}");
    }
}
