//! One session's event log: a bounded queue of undelivered events plus a
//! replay buffer of delivered ones, numbered per session from 1.
//!
//! Events live in one ring ordered by sequence. The part not yet streamed to
//! any subscriber is the *queue* (bounded by `event_queue`, with the overflow
//! policy applied past that); the part already streamed is the *replay buffer*
//! (bounded by `replay_buffer`), which a reconnecting client replays with
//! `resume_after_sequence`. An event emitted before anyone subscribes waits in
//! the queue.
//!
//! Every event the ring keeps is charged to the session's memory budget
//! (a [`Reservation`] of [`MemoryKind::Events`]) and given back when it
//! leaves the ring. An event that does not fit first pushes out the replay
//! buffer, then is handled by the overflow policy as if the queue were
//! full: `drop-oldest` drops undelivered events (and, with nothing left to
//! drop, the new one), `fault` refuses it.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::config::OverflowPolicy;
pub use crate::memory_budget::EVENT_OVERHEAD;
use crate::memory_budget::{MemoryKind, OverBudget, Reservation};

/// What keeping `event` costs the memory budget.
fn event_cost(event: &Event) -> usize {
    EVENT_OVERHEAD + event.name.len() + event.payload.len()
}

/// One event as the worker emitted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Per session, from 1.
    pub sequence: u64,
    /// The event's name.
    pub name: String,
    /// The event's payload.
    pub payload: Vec<u8>,
    /// When the worker emitted it.
    pub emitted_at: SystemTime,
}

/// An event handed to a subscriber.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event.
    pub event: Arc<Event>,
    /// Events directly before this one that this subscriber will never see.
    pub dropped_before: u64,
}

/// The bounds of one log.
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    /// Undelivered events kept.
    pub queue: usize,
    /// Delivered events kept for resume.
    pub replay: usize,
    /// What to do when the queue is full.
    pub overflow: OverflowPolicy,
    /// Subscribers at once.
    pub max_subscribers: usize,
}

/// Why an event could not be appended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The queue was full and the policy is to fault the session.
    #[error("event queue overflow")]
    Overflow,
    /// The event did not fit the memory budget and the policy is to fault
    /// the session.
    #[error("the event does not fit the memory budget: {0}")]
    OverBudget(OverBudget),
    /// The log is closed.
    #[error("event log is closed")]
    Closed,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The subscriber limit is reached.
    #[error("the session already has {0} event subscriber(s)")]
    TooManySubscribers(usize),
    /// `resume_after_sequence` is past the last event.
    #[error("cannot resume after sequence {requested}: the last event is {last}")]
    ResumePastEnd {
        /// What the client asked for.
        requested: u64,
        /// The last sequence emitted.
        last: u64,
    },
}

/// Counters a log reports into (global metrics).
pub trait EventObserver: Send + Sync {
    /// `n` events were appended.
    fn emitted(&self, n: u64);
    /// `n` undelivered events were dropped.
    fn dropped(&self, n: u64);
}

/// An observer that counts nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl EventObserver for NoObserver {
    fn emitted(&self, _: u64) {}
    fn dropped(&self, _: u64) {}
}

/// A session's event log. Cheap to share: emitters and subscribers hold an
/// `Arc`.
pub struct EventLog {
    state: Mutex<State>,
    notify: Notify,
    /// Woken when a subscriber detaches.
    detached: Notify,
    limits: EventLimits,
    observer: Arc<dyn EventObserver>,
    has_subscriber: AtomicBool,
}

struct State {
    /// Contiguous sequences, oldest first.
    ring: VecDeque<Arc<Event>>,
    /// What the ring's events are charged to.
    reserved: Reservation,
    /// The sequence the next event gets.
    next: u64,
    /// The highest sequence streamed to any subscriber.
    delivered: u64,
    /// Undelivered events dropped by the overflow policy.
    dropped: u64,
    subscribers: usize,
    closed: bool,
}

impl State {
    fn first_seq(&self) -> u64 {
        self.ring.front().map_or(self.next, |e| e.sequence)
    }

    fn undelivered(&self) -> usize {
        let from = self.delivered.max(self.first_seq().saturating_sub(1));
        (self.next - 1 - from) as usize
    }

    /// Removes the oldest event, giving its bytes back.
    fn pop_front(&mut self) -> Option<Arc<Event>> {
        let old = self.ring.pop_front()?;
        self.reserved.shrink(event_cost(&old));
        Some(old)
    }

    /// Drops every event (the log is closed and nobody can read them).
    fn clear(&mut self) {
        self.ring.clear();
        let all = self.reserved.bytes();
        self.reserved.shrink(all);
    }

    fn retained_delivered(&self) -> usize {
        let first = self.first_seq();
        if self.delivered >= first {
            (self.delivered - first + 1) as usize
        } else {
            0
        }
    }
}

impl EventLog {
    /// Creates an empty log that charges no budget.
    pub fn new(limits: EventLimits, observer: Arc<dyn EventObserver>) -> Self {
        Self::budgeted(limits, observer, Reservation::unlimited(MemoryKind::Events))
    }

    /// Creates an empty log whose events are charged to `reserved`.
    pub fn budgeted(
        limits: EventLimits,
        observer: Arc<dyn EventObserver>,
        reserved: Reservation,
    ) -> Self {
        Self {
            state: Mutex::new(State {
                ring: VecDeque::new(),
                reserved,
                next: 1,
                delivered: 0,
                dropped: 0,
                subscribers: 0,
                closed: false,
            }),
            notify: Notify::new(),
            detached: Notify::new(),
            limits,
            observer,
            has_subscriber: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; recover rather than spread a
        // poison if something ever does.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an event and wakes the subscribers.
    pub fn emit(&self, name: String, payload: Vec<u8>) -> Result<u64, EmitError> {
        let mut st = self.lock();
        if st.closed {
            return Err(EmitError::Closed);
        }
        if st.undelivered() >= self.limits.queue && self.limits.overflow == OverflowPolicy::Fault {
            return Err(EmitError::Overflow);
        }
        let sequence = st.next;
        let event = Arc::new(Event {
            sequence,
            name,
            payload,
            emitted_at: SystemTime::now(),
        });
        let mut dropped = 0;
        let fits = self.make_room(&mut st, event_cost(&event), &mut dropped)?;
        st.next += 1;
        if fits {
            st.ring.push_back(event);
        } else {
            // Nothing left to push out: under drop-oldest the new event is
            // the one dropped. The ring is empty, so it stays gap-free and
            // the next subscriber sees the gap in `dropped_before`.
            dropped += 1;
        }
        while st.undelivered() > self.limits.queue {
            if let Some(old) = st.pop_front()
                && old.sequence > st.delivered
            {
                dropped += 1;
            }
        }
        st.dropped += dropped;
        drop(st);
        self.observer.emitted(1);
        if dropped > 0 {
            self.observer.dropped(dropped);
        }
        self.notify.notify_waiters();
        Ok(sequence)
    }

    /// Reserves `cost` bytes for a new event, pushing out the replay buffer
    /// and then, under drop-oldest, undelivered events (counted in
    /// `dropped`) until it fits. Returns whether it fits; under the `fault`
    /// policy an event that cannot fit is an error.
    fn make_room(&self, st: &mut State, cost: usize, dropped: &mut u64) -> Result<bool, EmitError> {
        loop {
            let refused = match st.reserved.try_grow(cost) {
                Ok(()) => return Ok(true),
                Err(refused) => refused,
            };
            if st.retained_delivered() > 0 {
                st.pop_front();
                continue;
            }
            if self.limits.overflow == OverflowPolicy::Fault {
                return Err(EmitError::OverBudget(refused));
            }
            if st.pop_front().is_none() {
                return Ok(false);
            }
            *dropped += 1;
        }
    }

    /// Starts a subscription. With `resume_after`, it replays the retained
    /// events after that sequence; without, it starts at the first event not
    /// yet streamed to anyone.
    pub fn subscribe(
        self: &Arc<Self>,
        resume_after: Option<u64>,
    ) -> Result<Subscription, SubscribeError> {
        let mut st = self.lock();
        if st.subscribers >= self.limits.max_subscribers {
            return Err(SubscribeError::TooManySubscribers(st.subscribers));
        }
        let last = st.next - 1;
        let cursor = match resume_after {
            Some(r) if r > last => {
                return Err(SubscribeError::ResumePastEnd { requested: r, last });
            }
            Some(r) => r,
            None => st.delivered,
        };
        st.subscribers += 1;
        self.has_subscriber.store(true, Ordering::Relaxed);
        Ok(Subscription {
            log: Arc::clone(self),
            cursor,
        })
    }

    /// Like [`subscribe`](Self::subscribe), but when every subscriber slot
    /// is taken, waits up to `grace` for one to detach. A client that cancels
    /// a stream and at once opens a new one races the server noticing the
    /// cancel; this absorbs that race instead of answering ALREADY_EXISTS.
    pub async fn subscribe_within(
        self: &Arc<Self>,
        resume_after: Option<u64>,
        grace: std::time::Duration,
    ) -> Result<Subscription, SubscribeError> {
        let until = tokio::time::Instant::now() + grace;
        loop {
            let mut detached = pin!(self.detached.notified());
            detached.as_mut().enable();
            match self.subscribe(resume_after) {
                Err(SubscribeError::TooManySubscribers(n)) => {
                    if tokio::time::timeout_at(until, detached).await.is_err() {
                        return Err(SubscribeError::TooManySubscribers(n));
                    }
                }
                other => return other,
            }
        }
    }

    /// Whether a stream is attached (an attached stream keeps the lease
    /// alive).
    pub fn has_subscriber(&self) -> bool {
        self.has_subscriber.load(Ordering::Relaxed)
    }

    /// Closes the log: emits fail, subscribers drain what is left and end.
    /// Without a subscriber the events are dropped at once: nobody can
    /// subscribe to a closed log, so they could only hold the budget.
    pub fn close(&self) {
        let mut st = self.lock();
        st.closed = true;
        if st.subscribers == 0 {
            st.clear();
        }
        drop(st);
        self.notify.notify_waiters();
    }

    /// Opens a closed log again, its sequence going on where it stopped
    /// (a faulted session restarted by hand).
    pub fn reopen(&self) {
        self.lock().closed = false;
    }

    /// Bytes the log's events hold against the memory budget.
    pub fn reserved_bytes(&self) -> usize {
        self.lock().reserved.bytes()
    }

    /// Events emitted so far and events dropped by the overflow policy.
    pub fn counts(&self) -> (u64, u64) {
        let st = self.lock();
        (st.next - 1, st.dropped)
    }

    fn next_after(&self, cursor: &mut u64) -> Option<Delivery> {
        let mut st = self.lock();
        let first = st.first_seq();
        let want = (*cursor + 1).max(first);
        if want >= st.next {
            return None;
        }
        let event = Arc::clone(&st.ring[(want - first) as usize]);
        let dropped_before = want - *cursor - 1;
        *cursor = want;
        if want > st.delivered {
            st.delivered = want;
            while st.retained_delivered() > self.limits.replay {
                st.pop_front();
            }
        }
        Some(Delivery {
            event,
            dropped_before,
        })
    }
}

/// One attached event stream. Dropping it detaches.
pub struct Subscription {
    log: Arc<EventLog>,
    cursor: u64,
}

impl Subscription {
    /// The next event, waiting for one if needed; `None` once the log is
    /// closed and drained.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            let mut notified = pin!(self.log.notify.notified());
            notified.as_mut().enable();
            if let Some(d) = self.log.next_after(&mut self.cursor) {
                return Some(d);
            }
            if self.log.lock().closed {
                return None;
            }
            notified.await;
        }
    }

    /// The sequence of the last event handed out.
    pub fn cursor(&self) -> u64 {
        self.cursor
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut st = self.log.lock();
        st.subscribers -= 1;
        if st.closed && st.subscribers == 0 {
            st.clear();
        }
        self.log
            .has_subscriber
            .store(st.subscribers > 0, Ordering::Relaxed);
        drop(st);
        self.log.detached.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory_budget::{BudgetGauges, MemoryBudget};

    fn log(queue: usize, replay: usize, overflow: OverflowPolicy) -> Arc<EventLog> {
        Arc::new(EventLog::new(
            EventLimits {
                queue,
                replay,
                overflow,
                max_subscribers: 1,
            },
            Arc::new(NoObserver),
        ))
    }

    fn emit(l: &EventLog, n: u64) {
        for i in 0..n {
            l.emit("e".into(), i.to_string().into_bytes()).unwrap();
        }
    }

    async fn take(s: &mut Subscription, n: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for _ in 0..n {
            let d = s.next().await.unwrap();
            out.push((d.event.sequence, d.dropped_before));
        }
        out
    }

    #[tokio::test]
    async fn events_wait_for_the_first_subscriber() {
        let l = log(10, 10, OverflowPolicy::DropOldest);
        emit(&l, 3);
        let mut s = l.subscribe(None).unwrap();
        assert_eq!(take(&mut s, 3).await, vec![(1, 0), (2, 0), (3, 0)]);
    }

    #[tokio::test]
    async fn resume_replays_from_the_buffer() {
        let l = log(10, 10, OverflowPolicy::DropOldest);
        emit(&l, 5);
        let mut s = l.subscribe(None).unwrap();
        take(&mut s, 5).await;
        drop(s);
        // A fresh subscriber without resume sees nothing old...
        emit(&l, 1);
        let mut s = l.subscribe(None).unwrap();
        assert_eq!(take(&mut s, 1).await, vec![(6, 0)]);
        drop(s);
        // ...while resume replays what the buffer holds.
        let mut s = l.subscribe(Some(2)).unwrap();
        assert_eq!(take(&mut s, 4).await, vec![(3, 0), (4, 0), (5, 0), (6, 0)]);
    }

    #[tokio::test]
    async fn resume_past_the_buffer_reports_the_gap() {
        let l = log(100, 3, OverflowPolicy::DropOldest);
        emit(&l, 10);
        let mut s = l.subscribe(None).unwrap();
        take(&mut s, 10).await;
        drop(s);
        let mut s = l.subscribe(Some(0)).unwrap();
        assert_eq!(take(&mut s, 3).await, vec![(8, 7), (9, 0), (10, 0)]);
        assert!(matches!(
            l.subscribe(Some(11)),
            Err(SubscribeError::TooManySubscribers(1))
        ));
        drop(s);
        assert!(matches!(
            l.subscribe(Some(11)),
            Err(SubscribeError::ResumePastEnd {
                requested: 11,
                last: 10
            })
        ));
    }

    #[tokio::test]
    async fn drop_oldest_keeps_a_gap_free_tail_and_counts() {
        let l = log(4, 4, OverflowPolicy::DropOldest);
        emit(&l, 10);
        assert_eq!(l.counts(), (10, 6));
        let mut s = l.subscribe(None).unwrap();
        assert_eq!(take(&mut s, 4).await, vec![(7, 6), (8, 0), (9, 0), (10, 0)]);
    }

    #[test]
    fn fault_policy_refuses_past_the_queue() {
        let l = log(3, 3, OverflowPolicy::Fault);
        emit(&l, 3);
        assert_eq!(l.emit("x".into(), vec![]), Err(EmitError::Overflow));
    }

    #[tokio::test]
    async fn memory_stays_bounded_while_streaming() {
        let l = log(8, 8, OverflowPolicy::DropOldest);
        let mut s = l.subscribe(None).unwrap();
        for i in 1..=1000 {
            l.emit("e".into(), vec![]).unwrap();
            assert_eq!(s.next().await.unwrap().event.sequence, i);
            assert!(l.lock().ring.len() <= 16);
        }
    }

    #[tokio::test]
    async fn one_subscriber_at_a_time_and_close_ends_streams() {
        let l = log(10, 10, OverflowPolicy::DropOldest);
        let mut s = l.subscribe(None).unwrap();
        assert!(l.has_subscriber());
        assert!(l.subscribe(None).is_err());
        emit(&l, 1);
        l.close();
        assert_eq!(take(&mut s, 1).await, vec![(1, 0)]);
        assert!(s.next().await.is_none());
        drop(s);
        assert!(!l.has_subscriber());
    }

    #[tokio::test]
    async fn a_new_subscriber_waits_briefly_for_the_old_one_to_detach() {
        let l = log(10, 10, OverflowPolicy::DropOldest);
        let first = l.subscribe(None).unwrap();
        let l2 = Arc::clone(&l);
        let waiter = tokio::spawn(async move {
            l2.subscribe_within(None, std::time::Duration::from_secs(5))
                .await
        });
        tokio::task::yield_now().await;
        drop(first);
        let _second = waiter.await.unwrap().expect("took over the freed slot");
        // Nobody leaves: refused once the grace is over.
        assert!(matches!(
            l.subscribe_within(None, std::time::Duration::from_millis(20))
                .await,
            Err(SubscribeError::TooManySubscribers(1))
        ));
    }

    fn budgeted(
        queue: usize,
        replay: usize,
        overflow: OverflowPolicy,
        budget: usize,
    ) -> (Arc<EventLog>, Arc<MemoryBudget>) {
        let b = MemoryBudget::new(budget, BudgetGauges::default());
        let account = b.account(b.tenant("t", None));
        let l = Arc::new(EventLog::budgeted(
            EventLimits {
                queue,
                replay,
                overflow,
                max_subscribers: 1,
            },
            Arc::new(NoObserver),
            account.reservation(MemoryKind::Events),
        ));
        (l, b)
    }

    /// The cost of one event named `e` with a 1000-byte payload.
    const K: usize = EVENT_OVERHEAD + 1 + 1000;

    fn emit_k(l: &EventLog, n: u64) {
        for _ in 0..n {
            l.emit("e".into(), vec![0; 1000]).unwrap();
        }
    }

    #[tokio::test]
    async fn over_budget_the_replay_buffer_goes_first_then_the_oldest() {
        // Room for three events, while the queue and replay allow ten each.
        let (l, b) = budgeted(10, 10, OverflowPolicy::DropOldest, 3 * K);
        emit_k(&l, 2);
        let mut s = l.subscribe(None).unwrap();
        assert_eq!(take(&mut s, 2).await, vec![(1, 0), (2, 0)]);
        // 1 and 2 are the replay buffer now; 3, 4 and 5 push them out, then
        // 6 pushes out the oldest undelivered, 3.
        emit_k(&l, 4);
        assert_eq!(b.reserved(), 3 * K);
        assert_eq!(l.counts(), (6, 1));
        assert_eq!(take(&mut s, 3).await, vec![(4, 1), (5, 0), (6, 0)]);
    }

    #[tokio::test]
    async fn an_event_larger_than_the_budget_is_dropped_under_drop_oldest() {
        let (l, b) = budgeted(10, 10, OverflowPolicy::DropOldest, K);
        l.emit("e".into(), vec![0; 5000]).unwrap();
        emit_k(&l, 1);
        assert_eq!(l.counts(), (2, 1));
        let mut s = l.subscribe(None).unwrap();
        assert_eq!(take(&mut s, 1).await, vec![(2, 1)]);
        assert_eq!(b.reserved(), K);
    }

    #[test]
    fn under_the_fault_policy_an_event_over_budget_is_refused() {
        let (l, b) = budgeted(10, 10, OverflowPolicy::Fault, 2 * K);
        emit_k(&l, 2);
        assert!(matches!(
            l.emit("e".into(), vec![0; 1000]),
            Err(EmitError::OverBudget(OverBudget::Gateway { .. }))
        ));
        assert_eq!(l.counts(), (2, 0), "a refused event takes no sequence");
        assert_eq!(b.reserved(), 2 * K);
    }

    #[tokio::test]
    async fn bytes_come_back_past_the_replay_buffer_and_at_close() {
        let (l, b) = budgeted(10, 1, OverflowPolicy::DropOldest, 100 * K);
        emit_k(&l, 5);
        assert_eq!(b.reserved(), 5 * K);
        let mut s = l.subscribe(None).unwrap();
        take(&mut s, 5).await;
        assert_eq!(b.reserved(), K, "only the replay buffer is kept");
        emit_k(&l, 3);
        l.close();
        // The attached stream drains what is left...
        assert_eq!(l.reserved_bytes(), 4 * K);
        take(&mut s, 3).await;
        assert!(s.next().await.is_none());
        // ...and once it goes, nothing is held.
        drop(s);
        assert_eq!(b.reserved(), 0);
        // Closed without a subscriber: dropped at once.
        let (l, b) = budgeted(10, 10, OverflowPolicy::DropOldest, 100 * K);
        emit_k(&l, 5);
        l.close();
        assert_eq!(b.reserved(), 0);
        drop(l);
    }

    #[tokio::test]
    async fn a_waiting_subscriber_wakes_on_emit() {
        let l = log(10, 10, OverflowPolicy::DropOldest);
        let mut s = l.subscribe(None).unwrap();
        let l2 = Arc::clone(&l);
        let waiter = tokio::spawn(async move { s.next().await.map(|d| d.event.sequence) });
        tokio::task::yield_now().await;
        emit(&l2, 1);
        assert_eq!(waiter.await.unwrap(), Some(1));
    }
}
