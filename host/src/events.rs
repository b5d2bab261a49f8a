//! One session's event log: a bounded queue of undelivered events plus a
//! replay buffer of delivered ones, numbered per session from 1.
//!
//! Events live in one ring ordered by sequence. The part not yet streamed to
//! any subscriber is the *queue* (bounded by `event_queue`, with the overflow
//! policy applied past that); the part already streamed is the *replay buffer*
//! (bounded by `replay_buffer`), which a reconnecting client replays with
//! `resume_after_sequence`. An event emitted before anyone subscribes waits in
//! the queue.

use std::collections::VecDeque;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::Notify;

use crate::config::OverflowPolicy;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EmitError {
    /// The queue was full and the policy is to fault the session.
    #[error("event queue overflow")]
    Overflow,
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

#[derive(Default)]
struct State {
    /// Contiguous sequences, oldest first.
    ring: VecDeque<Arc<Event>>,
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
    /// Creates an empty log.
    pub fn new(limits: EventLimits, observer: Arc<dyn EventObserver>) -> Self {
        Self {
            state: Mutex::new(State {
                next: 1,
                ..State::default()
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
        st.next += 1;
        st.ring.push_back(Arc::new(Event {
            sequence,
            name,
            payload,
            emitted_at: SystemTime::now(),
        }));
        let mut dropped = 0;
        while st.undelivered() > self.limits.queue {
            if let Some(old) = st.ring.pop_front()
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
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
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
                st.ring.pop_front();
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
