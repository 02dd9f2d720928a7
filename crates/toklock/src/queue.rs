//! The thin async layer over [`Scheduler`]: what the forwarder uses.
//!
//! ```text
//! let ticket = queue.admit(agent, budget_key, body.len())?;   // Err -> answer 503
//! let mut slot = ticket.await?;                               // waits its turn; Err -> 503
//! loop {
//!     let response = send_upstream(&request).await;
//!     match response.status() {
//!         429 if classify_429(..) == Retryable => slot = slot.rate_limited(headers).await?,
//!         529 | 503 => match slot.overloaded(headers) {
//!             Ok(ticket) => slot = ticket.await?,
//!             Err(kept) => { slot = kept; break }              // retries used up: pass through
//!         },
//!         _ => { slot.observe(status, headers); break }
//!     }
//! }
//! // `x-toklock-queue-ms`: slot.queue_wait(). Move `slot` into the response body wrapper:
//! // dropping it (body ended or client gone) frees the slot and wakes the next request.
//! // Meanwhile the wrapper reports the usage it reads: slot.charge(weighted_tokens).
//! ```
//!
//! Dropping a [`Ticket`] before it resolves (the client went away) removes the request from
//! its queue, so no tokens are spent for nobody.
//!
//! Dispatch is event-driven: every call dispatches what it can right away, and one background
//! task sleeps until [`Scheduler::next_wakeup`] (a pause ending), woken early by a `Notify`
//! whenever something changes. The `std` mutex is never held across an `.await`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, StatusCode};
use tokio::sync::{oneshot, Notify};

use crate::agent::AgentKey;
use crate::ratelimit::{Now, Observation};
pub use crate::scheduler::OverCapacity;
use crate::scheduler::{
    BudgetKey, OverloadOutcome, RequestId, Scheduler, SchedulerConfig, Snapshot,
};

/// The queue stopped tracking this request (it cannot happen while the queue is alive, but
/// callers get an error rather than a hang or a panic). Answer 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueClosed;

impl std::fmt::Display for QueueClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request queue dropped this request")
    }
}

impl std::error::Error for QueueClosed {}

/// Both clocks now. The monotonic one comes from tokio so that `tokio::time::pause()` in
/// tests moves the scheduler's clock too (it is the plain std clock otherwise).
fn now_pair() -> Now {
    Now {
        system: SystemTime::now(),
        instant: tokio::time::Instant::now().into_std(),
    }
}

struct State {
    scheduler: Scheduler,
    /// Tickets waiting for their request to be dispatched.
    waiting: HashMap<RequestId, oneshot::Sender<()>>,
}

impl State {
    /// Sends everything the budgets allow and wakes the tickets concerned.
    fn dispatch(&mut self, now: Instant) {
        for id in self.scheduler.next_dispatches(now) {
            let delivered = self
                .waiting
                .remove(&id)
                .is_some_and(|ticket| ticket.send(()).is_ok());
            if !delivered {
                // Nobody waits for it any more: give the slot straight back.
                self.scheduler.cancel(id);
            }
        }
    }

    /// Registers a waiter for a queued request and dispatches at once if it can go.
    fn wait_for(&mut self, id: RequestId, now: Instant) -> oneshot::Receiver<()> {
        let (sender, receiver) = oneshot::channel();
        self.waiting.insert(id, sender);
        self.dispatch(now);
        receiver
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the driver task to recompute its sleep.
    wake_driver: Arc<Notify>,
    /// Times the driver ran, for tests that check it sleeps rather than polls.
    driver_rounds: AtomicU64,
    /// The lanes' policy wants usage charged ([`Slot::charges_usage`]).
    charges_usage: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not wedge every request: the state is still consistent
        // enough to keep serving.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `change` under the lock, dispatches what became possible, and lets the driver
    /// recompute its wakeup.
    fn change<T>(&self, change: impl FnOnce(&mut State, Now) -> T) -> T {
        let now = now_pair();
        let result = {
            let mut state = self.lock();
            let result = change(&mut state, now);
            state.dispatch(now.instant);
            result
        };
        self.wake_driver.notify_one();
        result
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Lets the driver notice that every handle is gone and exit.
        self.wake_driver.notify_one();
    }
}

/// Handle to the request queue. Cheap to clone; all clones share one scheduler.
#[derive(Clone)]
pub struct Queue {
    shared: Arc<Shared>,
}

impl Queue {
    /// Starts the queue and its wakeup task on the current tokio runtime.
    ///
    /// # Panics
    /// Outside a tokio runtime (a programming error, like `tokio::spawn`).
    pub fn new(config: SchedulerConfig) -> Queue {
        Queue::with_scheduler(Scheduler::new(config))
    }

    /// As [`Queue::new`], with a scheduler built by the caller (e.g. fixed jitter in tests).
    pub fn with_scheduler(scheduler: Scheduler) -> Queue {
        let wake_driver = Arc::new(Notify::new());
        let charges_usage = scheduler.config().policy.charges_usage();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                scheduler,
                waiting: HashMap::new(),
            }),
            wake_driver: wake_driver.clone(),
            driver_rounds: AtomicU64::new(0),
            charges_usage,
        });
        tokio::spawn(drive(Arc::downgrade(&shared), wake_driver));
        Queue { shared }
    }

    /// Queues an inference request of `body_len` bytes for `agent` on the lane of `key`.
    /// Refused when the bytes held in queue and in flight would exceed `max_queued_bytes`
    /// (answer 503). The ticket resolves when the request may go upstream.
    pub fn admit(
        &self,
        agent: AgentKey,
        key: BudgetKey,
        body_len: usize,
    ) -> Result<Ticket, OverCapacity> {
        let bytes = u64::try_from(body_len).unwrap_or(u64::MAX);
        let (id, receiver) = self.shared.change(|state, now| {
            let id = state.scheduler.enqueue(agent, key, bytes, now.instant)?;
            Ok((id, state.wait_for(id, now.instant)))
        })?;
        Ok(Ticket::new(
            self.shared.clone(),
            id,
            receiver,
            Duration::ZERO,
        ))
    }

    /// Every lane's state, for `/toklock/status`.
    pub fn snapshot(&self) -> Snapshot {
        let now = now_pair();
        self.shared.lock().scheduler.snapshot(now.instant)
    }

    pub fn config(&self) -> SchedulerConfig {
        *self.shared.lock().scheduler.config()
    }

    #[cfg(test)]
    fn driver_rounds(&self) -> u64 {
        self.shared.driver_rounds.load(Ordering::Relaxed)
    }
}

/// The wakeup task: dispatches when a pause ends. Holds only a weak reference so it ends
/// once every `Queue`, `Ticket` and `Slot` is gone.
async fn drive(shared: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let wakeup = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.driver_rounds.fetch_add(1, Ordering::Relaxed);
            let now = now_pair().instant;
            let mut state = shared.lock();
            state.dispatch(now);
            // Never spin, even if a lane claimed it could go now and then did not.
            state
                .scheduler
                .next_wakeup(now)
                .map(|at| at.max(now + Duration::from_millis(1)))
        };
        match wakeup {
            Some(at) => {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

/// A queued request. Resolves to a [`Slot`] when it may go upstream; dropping it before then
/// takes the request out of its queue.
pub struct Ticket {
    shared: Arc<Shared>,
    id: RequestId,
    receiver: oneshot::Receiver<()>,
    /// Queue time of earlier rounds (before a 429/529 requeue).
    waited_before: Duration,
    queued_at: tokio::time::Instant,
    /// Resolved: the slot (or nobody) owns the request now.
    finished: bool,
}

impl Ticket {
    fn new(
        shared: Arc<Shared>,
        id: RequestId,
        receiver: oneshot::Receiver<()>,
        waited_before: Duration,
    ) -> Ticket {
        Ticket {
            shared,
            id,
            receiver,
            waited_before,
            queued_at: tokio::time::Instant::now(),
            finished: false,
        }
    }

    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Total time queued so far, including earlier rounds before a requeue.
    pub fn waited(&self) -> Duration {
        self.waited_before + self.queued_at.elapsed()
    }
}

impl Future for Ticket {
    type Output = Result<Slot, QueueClosed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.finished {
            return Poll::Ready(Err(QueueClosed));
        }
        let outcome = match Pin::new(&mut self.receiver).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(outcome) => outcome,
        };
        self.finished = true;
        Poll::Ready(match outcome {
            Ok(()) => Ok(Slot {
                shared: self.shared.clone(),
                id: self.id,
                queue_wait: self.waited(),
                handed_back: false,
            }),
            Err(_) => Err(QueueClosed),
        })
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Queued: leave the queue. Dispatched but never polled: free the slot.
        self.shared.change(|state, _| {
            state.waiting.remove(&self.id);
            state.scheduler.cancel(self.id);
        });
    }
}

/// Permission for one request to be upstream. Hold it until the response body has ended or
/// the client has gone: dropping it frees the slot and lets the next request go.
pub struct Slot {
    shared: Arc<Shared>,
    id: RequestId,
    queue_wait: Duration,
    /// The request went back to the queue (429/529): dropping this slot must not complete it.
    handed_back: bool,
}

impl Slot {
    pub fn id(&self) -> RequestId {
        self.id
    }

    /// Total time spent queued, all rounds included: the value for `x-toklock-queue-ms`.
    pub fn queue_wait(&self) -> Duration {
        self.queue_wait
    }

    /// Feeds the response headers to the budget. Call once the headers arrive, for every
    /// response that is not requeued with [`Slot::rate_limited`] / [`Slot::overloaded`] (a
    /// 429 passed through to the caller included). A 2xx also resets the lane's backoff.
    pub fn observe(&self, status: StatusCode, headers: &HeaderMap) {
        self.shared.change(|state, now| {
            let obs = Observation::from_headers(headers, now);
            state
                .scheduler
                .on_response(self.id, &obs, status.is_success(), now.instant);
        });
    }

    /// Whether the scheduling policy uses [`Slot::charge`]; if not, the response body need not
    /// be scanned for usage.
    pub fn charges_usage(&self) -> bool {
        self.shared.charges_usage
    }

    /// Charges this request's agent `tokens` (weighted real usage, as the upstream reported
    /// it) in the fairness policy. Call as usage becomes known; parts add up. Dispatches
    /// nothing by itself: it only changes who goes next.
    pub fn charge(&self, tokens: u64) {
        if tokens > 0 {
            self.shared.lock().scheduler.charge(self.id, tokens);
        }
    }

    /// A retryable 429: the request goes back to the front of its lane, the lane pauses, and
    /// the returned ticket resolves when it may be sent again.
    pub fn rate_limited(mut self, headers: &HeaderMap) -> Ticket {
        let id = self.id;
        let receiver = self.shared.change(|state, now| {
            let obs = Observation::from_headers(headers, now);
            match state.scheduler.on_rate_limited(id, &obs, now.instant) {
                Some(_) => state.wait_for(id, now.instant),
                // Not in flight (cannot happen while this slot exists): resolve as closed.
                None => oneshot::channel().1,
            }
        });
        self.handed_back = true;
        Ticket::new(self.shared.clone(), id, receiver, self.queue_wait)
    }

    /// A 529 or 503: requeue at the front after a jittered backoff, or, once this request's
    /// `overload_retries` are used up, `Err(self)`: pass the response through and keep the
    /// slot until its body ends.
    pub fn overloaded(mut self, headers: &HeaderMap) -> Result<Ticket, Slot> {
        let id = self.id;
        let receiver = self.shared.change(|state, now| {
            let obs = Observation::from_headers(headers, now);
            match state.scheduler.on_overloaded(id, &obs, now.instant) {
                Some(OverloadOutcome::Requeued { .. }) => Some(state.wait_for(id, now.instant)),
                Some(OverloadOutcome::Exhausted) | None => None,
            }
        });
        match receiver {
            Some(receiver) => {
                self.handed_back = true;
                Ok(Ticket::new(
                    self.shared.clone(),
                    id,
                    receiver,
                    self.queue_wait,
                ))
            }
            None => Err(self),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if !self.handed_back {
            self.shared.change(|state, _| {
                state.scheduler.on_complete(self.id);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Fingerprint;
    use crate::scheduler::FixedJitter;
    use tokio::time::{sleep, timeout};

    fn key(model: &str) -> BudgetKey {
        BudgetKey::new(Fingerprint::of_bytes(b"sk-test"), model)
    }

    fn agent(name: &str) -> AgentKey {
        AgentKey::new(name)
    }

    fn queue_with(config: SchedulerConfig) -> Queue {
        Queue::with_scheduler(Scheduler::with_jitter(config, Box::new(FixedJitter(1.0))))
    }

    fn queue(max_inflight: usize) -> Queue {
        queue_with(SchedulerConfig {
            max_inflight,
            ..SchedulerConfig::default()
        })
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, http::HeaderValue::from_static(value));
        }
        map
    }

    /// The ticket's slot if it resolves within `within` (virtual time), else `None`.
    async fn within(ticket: &mut Ticket, within: Duration) -> Option<Slot> {
        timeout(within, ticket).await.ok()?.ok()
    }

    const NOW: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn ticket_resolves_and_slot_drop_wakes_the_next() {
        let q = queue(1);
        let first = q.admit(agent("a"), key("opus"), 10).unwrap().await.unwrap();
        assert_eq!(first.queue_wait(), Duration::ZERO);

        let mut second = q.admit(agent("b"), key("opus"), 10).unwrap();
        assert!(within(&mut second, Duration::from_secs(2)).await.is_none());
        assert!(second.waited() >= Duration::from_secs(2));
        drop(first);
        let second = within(&mut second, NOW)
            .await
            .expect("freed slot goes to the next");
        assert_eq!(second.queue_wait(), Duration::from_secs(2));
        assert_eq!(q.snapshot().in_flight, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_a_ticket_leaves_the_queue() {
        let q = queue(1);
        let running = q.admit(agent("a"), key("opus"), 10).unwrap().await.unwrap();
        let gone = q.admit(agent("b"), key("opus"), 20).unwrap();
        let mut kept = q.admit(agent("c"), key("opus"), 30).unwrap();
        assert_eq!(q.snapshot().queued, 2);
        assert_eq!(q.snapshot().held_bytes, 60);

        drop(gone);
        let snapshot = q.snapshot();
        assert_eq!(snapshot.queued, 1);
        assert_eq!(snapshot.held_bytes, 40);
        assert!(!snapshot.lanes[0].queued_per_agent.contains_key("b"));

        drop(running);
        let kept = within(&mut kept, NOW).await.expect("c is next once b left");
        drop(kept);
        assert_eq!(q.snapshot().held_bytes, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn dispatched_but_never_polled_ticket_frees_its_slot() {
        let q = queue(1);
        let unpolled = q.admit(agent("a"), key("opus"), 1).unwrap();
        // Already dispatched (there was room), but its client went away before polling.
        assert_eq!(q.snapshot().in_flight, 1);
        drop(unpolled);
        assert_eq!(q.snapshot().in_flight, 0);
        let mut next = q.admit(agent("b"), key("opus"), 1).unwrap();
        assert!(within(&mut next, NOW).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limit_pause_wakes_on_time_without_polling() {
        let q = queue(3);
        let slot = q.admit(agent("a"), key("opus"), 1).unwrap().await.unwrap();
        sleep(Duration::from_secs(1)).await;

        let start = tokio::time::Instant::now();
        let requeued = slot.rate_limited(&headers(&[("retry-after", "5")]));
        let mut behind = q.admit(agent("b"), key("opus"), 1).unwrap();
        let rounds_before = q.driver_rounds();

        let slot = requeued.await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        // Woken for the pause's end, not every few milliseconds.
        assert!(
            q.driver_rounds() - rounds_before <= 3,
            "{}",
            q.driver_rounds()
        );
        // Queue time counts both rounds, for x-toklock-queue-ms.
        assert_eq!(slot.queue_wait(), Duration::from_secs(5));

        // Restarting at 1 in flight: the request behind waits for this one to finish.
        assert!(within(&mut behind, Duration::from_secs(10)).await.is_none());
        drop(slot);
        assert!(within(&mut behind, NOW).await.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn observed_headers_pause_the_lane_until_partial_refill() {
        let q = queue(3);
        let slot = q.admit(agent("a"), key("opus"), 1).unwrap().await.unwrap();
        // 60k tokens/min, none left, reset unknown: refill 1 000/s, 3 000 needed: 3 s.
        slot.observe(
            StatusCode::OK,
            &headers(&[
                ("anthropic-ratelimit-tokens-limit", "60000"),
                ("anthropic-ratelimit-tokens-remaining", "0"),
            ]),
        );
        drop(slot);
        let start = tokio::time::Instant::now();
        let mut other_lane = q.admit(agent("a"), key("haiku"), 1).unwrap();
        assert!(within(&mut other_lane, NOW).await.is_some());
        let next = q.admit(agent("b"), key("opus"), 1).unwrap().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(3));
        assert_eq!(next.queue_wait(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn overloaded_retries_then_passes_through_holding_the_slot() {
        let q = queue_with(SchedulerConfig {
            overload_retries: 1,
            ..SchedulerConfig::default()
        });
        let slot = q.admit(agent("a"), key("opus"), 1).unwrap().await.unwrap();
        let start = tokio::time::Instant::now();
        let ticket = match slot.overloaded(&HeaderMap::new()) {
            Ok(ticket) => ticket,
            Err(_) => panic!("first 529 is retried"),
        };
        let slot = ticket.await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        let kept = match slot.overloaded(&HeaderMap::new()) {
            Ok(_) => panic!("retries are used up"),
            Err(kept) => kept,
        };
        assert_eq!(q.snapshot().in_flight, 1);
        drop(kept);
        assert_eq!(q.snapshot().in_flight, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn admission_is_bounded_by_bytes() {
        let q = queue_with(SchedulerConfig {
            max_queued_bytes: 100,
            ..SchedulerConfig::default()
        });
        let first = q.admit(agent("a"), key("opus"), 60).unwrap();
        let refused = q.admit(agent("b"), key("opus"), 50).err();
        assert_eq!(refused.map(|e| e.held_bytes), Some(60));
        drop(first);
        assert!(q.admit(agent("b"), key("opus"), 100).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn everything_is_freed_when_the_last_handle_goes() {
        let q = queue(1);
        let weak = Arc::downgrade(&q.shared);
        let slot = q.admit(agent("a"), key("opus"), 1).unwrap().await.unwrap();
        drop(q);
        // The slot keeps the queue alive until the response ends.
        assert!(weak.upgrade().is_some());
        drop(slot);
        tokio::task::yield_now().await;
        assert!(weak.upgrade().is_none());
    }
}
