//! Which queued request goes upstream next: a pure state machine over budget lanes.
//!
//! * A **lane** per [`BudgetKey`] (credential fingerprint x model family). Lanes are independent:
//!   each has its own [`Budget`], agent queues and fairness policy, so a drained Opus budget
//!   never delays Haiku requests or another key's requests.
//! * Inside a lane, one FIFO per agent; a [`Policy`] picks which agent's head goes next:
//!   round-robin (one request per agent per turn, the default: [`TokenFair::per_request`]) or
//!   [`TokenFair`] (by the real tokens each agent's requests consumed, charged through
//!   [`Scheduler::charge`]).
//! * A request sent back by a 429/529 waits at the lane's front: it is the next one dispatched
//!   on that lane, before anything the policy would pick.
//! * Memory is bounded by body bytes (queued + in flight) against `max_queued_bytes`; empty agent
//!   queues are removed at once, and idle lanes whose buckets are full again are forgotten.
//!
//! No I/O, no tokio, no clock reads: every method takes `now`. [`crate::queue`] drives it.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::agent::AgentKey;
use crate::budget::{millis, Backoff, BucketSnapshot, Budget, LaneState};
use crate::credential::Fingerprint;
use crate::ratelimit::Observation;
pub use crate::token_fair::TokenFair;

/// Tuning for the scheduler and its budgets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// In flight per lane while its buckets have plenty left.
    pub max_inflight: usize,
    /// A token bucket below this (capped at a third of its limit) narrows the lane to 1.
    pub slow_below: u64,
    /// A token bucket below this (capped at a tenth of its limit) pauses the lane.
    pub pause_below: u64,
    /// How many times one request is requeued after a 529/503 before the caller gets it.
    pub overload_retries: u32,
    /// Body bytes queued or in flight, across all lanes, before new requests are refused.
    pub max_queued_bytes: u64,
    /// 429 without `retry-after` or a usable reset header.
    pub rate_limit_backoff: Backoff,
    /// 529/503 without `retry-after`; jittered.
    pub overload_backoff: Backoff,
    pub policy: PolicyKind,
    /// A new lane sends one request until a response comes back, instead of `max_inflight`
    /// into a budget it knows nothing about (which may be empty: one 429, not three).
    pub probe_new_lanes: bool,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            max_inflight: 3,
            slow_below: 10_000,
            pause_below: 3_000,
            overload_retries: 5,
            max_queued_bytes: 512 * 1024 * 1024,
            rate_limit_backoff: Backoff {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(60),
            },
            overload_backoff: Backoff {
                base: Duration::from_secs(1),
                cap: Duration::from_secs(30),
            },
            policy: PolicyKind::RoundRobin,
            probe_new_lanes: true,
        }
    }
}

/// A model family: Anthropic pools rate limits per family, so each gets its own budget.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModelFamily {
    Opus,
    Sonnet,
    Haiku,
    /// Any other model, by its name.
    Other(Arc<str>),
}

impl ModelFamily {
    pub fn as_str(&self) -> &str {
        match self {
            ModelFamily::Opus => "opus",
            ModelFamily::Sonnet => "sonnet",
            ModelFamily::Haiku => "haiku",
            ModelFamily::Other(name) => name,
        }
    }
}

impl fmt::Display for ModelFamily {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The family a model id belongs to: `claude-opus-4-1-20250805` and `claude-3-opus-latest` are
/// both Opus. Unknown models are each their own family.
pub fn family_of(model: &str) -> ModelFamily {
    let lower = model.to_ascii_lowercase();
    if lower.contains("opus") {
        ModelFamily::Opus
    } else if lower.contains("sonnet") {
        ModelFamily::Sonnet
    } else if lower.contains("haiku") {
        ModelFamily::Haiku
    } else {
        ModelFamily::Other(Arc::from(model))
    }
}

/// One budget: one organisation's limits (by credential fingerprint) for one model family.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BudgetKey {
    pub credential: Fingerprint,
    pub family: ModelFamily,
}

impl BudgetKey {
    pub fn new(credential: Fingerprint, model: &str) -> BudgetKey {
        BudgetKey {
            credential,
            family: family_of(model),
        }
    }
}

impl fmt::Display for BudgetKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.credential, self.family)
    }
}

/// A request known to the scheduler, from enqueue until complete or cancel. Stays the same
/// across requeues after a 429/529.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// Chooses which backlogged agent of a lane is served next. The scheduler tells it when an
/// agent gains its first queued request (`activate`) and loses its last (`deactivate`), so a
/// policy only ever tracks agents with work.
///
/// Every request the policy picked gets one `dispatched`, then any number of `charge`s as
/// its usage is reported, then exactly one `finished` (body ended, client gone, or cancelled
/// while requeued after a 429/529). A request requeued at the lane's front and sent again is
/// not picked again, so it is not dispatched twice.
pub trait Policy: Send {
    fn activate(&mut self, agent: &AgentKey);
    fn deactivate(&mut self, agent: &AgentKey);
    /// The agent whose oldest request goes next; `None` when no agent is active.
    fn pick(&mut self) -> Option<AgentKey>;
    /// The picked agent's request was sent; `body_bytes` is its size.
    fn dispatched(&mut self, _agent: &AgentKey, _body_bytes: u64) {}
    /// Tokens (weighted, see [`crate::usage::Usage::cost`]) that one of the agent's
    /// dispatched requests consumed, as the upstream reported them; may come in parts.
    fn charge(&mut self, _agent: &AgentKey, _tokens: u64) {}
    /// A dispatched request of the agent is over: no more charges will come for it.
    fn finished(&mut self, _agent: &AgentKey) {}
    /// Each remembered agent's fair-share counter, for the status endpoint.
    fn counters(&self) -> Vec<(AgentKey, u64)> {
        Vec::new()
    }
}

/// Which [`Policy`] each lane uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PolicyKind {
    #[default]
    RoundRobin,
    /// [`TokenFair`]: needs the responses' usage, see [`PolicyKind::charges_usage`].
    TokenFair,
}

impl PolicyKind {
    pub fn build(self) -> Box<dyn Policy> {
        match self {
            PolicyKind::RoundRobin => Box::new(TokenFair::per_request()),
            PolicyKind::TokenFair => Box::new(TokenFair::new()),
        }
    }

    /// Whether the policy uses real usage, so response bodies are worth scanning for it.
    pub fn charges_usage(self) -> bool {
        matches!(self, PolicyKind::TokenFair)
    }
}

/// Source of randomness for overload backoff jitter; injectable so tests are deterministic.
pub trait Jitter: Send {
    /// A number in `[0, 1)`.
    fn unit(&mut self) -> f64;
}

/// xorshift64*: plenty for spreading retries apart, no dependency.
#[derive(Debug)]
pub struct XorShiftJitter {
    state: u64,
}

impl XorShiftJitter {
    pub fn new(seed: u64) -> XorShiftJitter {
        // Zero is a fixed point of xorshift.
        XorShiftJitter { state: seed.max(1) }
    }

    /// Seeded from the wall clock, so separate proxies do not retry in lockstep.
    pub fn from_clock() -> XorShiftJitter {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|since| since.as_nanos() as u64)
            .unwrap_or(0x9E37_79B9_7F4A_7C15);
        XorShiftJitter::new(nanos ^ u64::from(std::process::id()).rotate_left(32))
    }
}

impl Jitter for XorShiftJitter {
    fn unit(&mut self) -> f64 {
        let mut x = self.state;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.state = x;
        let mixed = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (mixed >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Always the same jitter; for tests.
#[derive(Debug, Clone, Copy)]
pub struct FixedJitter(pub f64);

impl Jitter for FixedJitter {
    fn unit(&mut self) -> f64 {
        self.0
    }
}

/// New work refused: the bytes held in queue and in flight would pass `max_queued_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OverCapacity {
    pub held_bytes: u64,
    pub requested_bytes: u64,
    pub max_queued_bytes: u64,
}

impl fmt::Display for OverCapacity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "queue full: {} bytes held, {} more asked, at most {}",
            self.held_bytes, self.requested_bytes, self.max_queued_bytes
        )
    }
}

impl std::error::Error for OverCapacity {}

/// What happened to a request that got a 529/503.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OverloadOutcome {
    /// Back at the front of its lane; the lane pauses for `pause`.
    Requeued { pause: Duration },
    /// Retries used up: the caller passes the response through. The request keeps its slot
    /// until that response ends (`on_complete`).
    Exhausted,
}

#[derive(Debug)]
enum Phase {
    Queued { since: Instant },
    InFlight,
}

#[derive(Debug)]
struct Request {
    lane: BudgetKey,
    agent: AgentKey,
    bytes: u64,
    phase: Phase,
    /// Time spent queued in earlier rounds (before a requeue).
    waited: Duration,
    overload_attempts: u32,
    /// Picked by the lane's policy and dispatched: the policy is owed a `finished`.
    picked: bool,
}

struct Lane {
    budget: Budget,
    /// Requeued after a 429/529: served before anything else on this lane, oldest first.
    front: VecDeque<RequestId>,
    agents: HashMap<AgentKey, VecDeque<RequestId>>,
    policy: Box<dyn Policy>,
}

impl Lane {
    fn new(config: &SchedulerConfig) -> Lane {
        Lane {
            budget: Budget::new(config),
            front: VecDeque::new(),
            agents: HashMap::new(),
            policy: config.policy.build(),
        }
    }

    fn has_queued(&self) -> bool {
        !self.front.is_empty() || !self.agents.is_empty()
    }

    /// The next request to send: the requeued front first, then the policy's pick.
    fn take_next(&mut self) -> Option<(RequestId, Option<AgentKey>)> {
        if let Some(id) = self.front.pop_front() {
            return Some((id, None));
        }
        // Each round either returns or deactivates a stale agent, so this ends.
        for _ in 0..=self.agents.len() {
            let agent = self.policy.pick()?;
            let Some(queue) = self.agents.get_mut(&agent) else {
                self.policy.deactivate(&agent);
                continue;
            };
            let Some(id) = queue.pop_front() else {
                self.agents.remove(&agent);
                self.policy.deactivate(&agent);
                continue;
            };
            if queue.is_empty() {
                self.agents.remove(&agent);
                self.policy.deactivate(&agent);
            }
            return Some((id, Some(agent)));
        }
        None
    }

    /// Removes a queued request from wherever it waits.
    fn remove_queued(&mut self, id: RequestId, agent: &AgentKey) {
        if let Some(at) = self.front.iter().position(|&queued| queued == id) {
            self.front.remove(at);
            return;
        }
        if let Some(queue) = self.agents.get_mut(agent) {
            queue.retain(|&queued| queued != id);
            if queue.is_empty() {
                self.agents.remove(agent);
                self.policy.deactivate(agent);
            }
        }
    }
}

/// The status of every lane, for the admin endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct Snapshot {
    pub held_bytes: u64,
    pub max_queued_bytes: u64,
    pub queued: usize,
    pub in_flight: usize,
    pub lanes: Vec<LaneSnapshot>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LaneSnapshot {
    /// Credential fingerprint (never the credential).
    pub credential: String,
    pub family: String,
    pub state: LaneState,
    pub allowed_in_flight: usize,
    pub in_flight: usize,
    /// Requeued after a 429/529, waiting at the front.
    pub requeued: usize,
    pub queued_per_agent: BTreeMap<String, usize>,
    /// Fair-share counters (weighted tokens) of the agents the policy remembers; only
    /// token-fair keeps them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub fair_share_tokens: BTreeMap<String, u64>,
    /// How much longer the lane is paused, if it is.
    pub paused_for_ms: Option<u64>,
    pub buckets: BTreeMap<&'static str, BucketSnapshot>,
}

/// All lanes and requests. See the module docs.
pub struct Scheduler {
    config: SchedulerConfig,
    lanes: HashMap<BudgetKey, Lane>,
    requests: HashMap<RequestId, Request>,
    next_id: u64,
    held_bytes: u64,
    jitter: Box<dyn Jitter>,
}

impl Scheduler {
    pub fn new(config: SchedulerConfig) -> Scheduler {
        Scheduler::with_jitter(config, Box::new(XorShiftJitter::from_clock()))
    }

    pub fn with_jitter(config: SchedulerConfig, jitter: Box<dyn Jitter>) -> Scheduler {
        Scheduler {
            config,
            lanes: HashMap::new(),
            requests: HashMap::new(),
            next_id: 0,
            held_bytes: 0,
            jitter,
        }
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Body bytes of requests queued or in flight.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes
    }

    /// Whether a new request of `bytes` would fit under `max_queued_bytes`.
    pub fn try_admit(&self, bytes: u64) -> bool {
        self.held_bytes
            .checked_add(bytes)
            .is_some_and(|total| total <= self.config.max_queued_bytes)
    }

    /// Queues a request at the back of its agent's FIFO on its budget's lane.
    pub fn enqueue(
        &mut self,
        agent: AgentKey,
        key: BudgetKey,
        bytes: u64,
        now: Instant,
    ) -> Result<RequestId, OverCapacity> {
        if !self.try_admit(bytes) {
            return Err(OverCapacity {
                held_bytes: self.held_bytes,
                requested_bytes: bytes,
                max_queued_bytes: self.config.max_queued_bytes,
            });
        }
        let id = RequestId(self.next_id);
        self.next_id += 1;
        self.held_bytes += bytes;

        let config = &self.config;
        let lane = self
            .lanes
            .entry(key.clone())
            .or_insert_with(|| Lane::new(config));
        let queue = lane.agents.entry(agent.clone()).or_default();
        if queue.is_empty() {
            lane.policy.activate(&agent);
        }
        queue.push_back(id);

        self.requests.insert(
            id,
            Request {
                lane: key,
                agent,
                bytes,
                phase: Phase::Queued { since: now },
                waited: Duration::ZERO,
                overload_attempts: 0,
                picked: false,
            },
        );
        Ok(id)
    }

    /// Takes every request that may go upstream now and marks it in flight. Call after any
    /// change and when [`Scheduler::next_wakeup`] comes.
    pub fn next_dispatches(&mut self, now: Instant) -> Vec<RequestId> {
        let mut sent = Vec::new();
        for lane in self.lanes.values_mut() {
            while lane.has_queued() && lane.budget.has_room(now) {
                let Some((id, agent)) = lane.take_next() else {
                    break;
                };
                let Some(request) = self.requests.get_mut(&id) else {
                    continue;
                };
                if let Phase::Queued { since } = request.phase {
                    request.waited += now.saturating_duration_since(since);
                }
                request.phase = Phase::InFlight;
                if let Some(agent) = agent {
                    lane.policy.dispatched(&agent, request.bytes);
                    request.picked = true;
                }
                lane.budget.dispatched(now);
                sent.push(id);
            }
        }
        self.lanes
            .retain(|_, lane| lane.has_queued() || !lane.budget.is_settled(now));
        sent
    }

    /// The earliest time a paused lane with queued work may dispatch again; `now` if one can
    /// dispatch already. `None`: nothing will change until an event (enqueue, response,
    /// completion) arrives.
    pub fn next_wakeup(&self, now: Instant) -> Option<Instant> {
        self.lanes
            .values()
            .filter(|lane| lane.has_queued())
            .filter_map(|lane| match lane.budget.pause_until(now) {
                Some(until) => Some(until),
                None if lane.budget.has_room(now) => Some(now),
                None => lane.budget.widens_at(now),
            })
            .min()
    }

    /// Total time the request has spent queued (all rounds), up to `now`.
    pub fn waited(&self, id: RequestId, now: Instant) -> Option<Duration> {
        let request = self.requests.get(&id)?;
        Some(match request.phase {
            Phase::Queued { since } => request.waited + now.saturating_duration_since(since),
            Phase::InFlight => request.waited,
        })
    }

    pub fn is_in_flight(&self, id: RequestId) -> bool {
        self.requests
            .get(&id)
            .is_some_and(|request| matches!(request.phase, Phase::InFlight))
    }

    /// Forgets a request: a queued one leaves its queue (its client went away), an in-flight
    /// one frees its slot. Returns whether it was known.
    pub fn cancel(&mut self, id: RequestId) -> bool {
        let Some(request) = self.requests.remove(&id) else {
            return false;
        };
        self.held_bytes = self.held_bytes.saturating_sub(request.bytes);
        if let Some(lane) = self.lanes.get_mut(&request.lane) {
            match request.phase {
                Phase::Queued { .. } => lane.remove_queued(id, &request.agent),
                Phase::InFlight => lane.budget.completed(),
            }
            if request.picked {
                lane.policy.finished(&request.agent);
            }
        }
        true
    }

    /// Charges the request's agent with `tokens` (weighted, as reported by the upstream) in
    /// its lane's policy. Returns whether the request was dispatched and is still known.
    pub fn charge(&mut self, id: RequestId, tokens: u64) -> bool {
        let Some(request) = self.requests.get(&id) else {
            return false;
        };
        if !request.picked {
            return false;
        }
        let Some(lane) = self.lanes.get_mut(&request.lane) else {
            return false;
        };
        lane.policy.charge(&request.agent, tokens);
        true
    }

    /// The response body ended (or its client went away): the slot is free.
    pub fn on_complete(&mut self, id: RequestId) -> bool {
        self.cancel(id)
    }

    /// Response headers arrived for an in-flight request (not a retried 429/529). `success`
    /// means a 2xx, which resets the lane's backoff.
    pub fn on_response(&mut self, id: RequestId, obs: &Observation, success: bool, now: Instant) {
        if let Some(lane) = self.lane_of_in_flight(id) {
            lane.budget.observe(obs, success, now);
        }
    }

    /// A retryable 429: the request goes back to the front of its lane and the lane pauses.
    /// Returns the pause, or `None` if the request was not in flight.
    pub fn on_rate_limited(
        &mut self,
        id: RequestId,
        obs: &Observation,
        now: Instant,
    ) -> Option<Duration> {
        let lane = self.lane_of_in_flight(id)?;
        let pause = lane.budget.on_rate_limited(obs, now);
        lane.budget.completed();
        lane.front.push_back(id);
        self.requeue(id, now);
        Some(pause)
    }

    /// A 529/503: requeue at the front and pause with jittered backoff, unless this request
    /// has used up `overload_retries`. `None` if the request was not in flight.
    pub fn on_overloaded(
        &mut self,
        id: RequestId,
        obs: &Observation,
        now: Instant,
    ) -> Option<OverloadOutcome> {
        let jitter = self.jitter.unit();
        let retries = self.config.overload_retries;
        let attempts = {
            let request = self.requests.get_mut(&id)?;
            if !matches!(request.phase, Phase::InFlight) {
                return None;
            }
            request.overload_attempts = request.overload_attempts.saturating_add(1);
            request.overload_attempts
        };
        let lane = self.lane_of_in_flight(id)?;
        // The upstream is overloaded either way: the lane backs off even if this request
        // is passed through.
        let pause = lane.budget.on_overloaded(obs, jitter, now);
        if attempts > retries {
            return Some(OverloadOutcome::Exhausted);
        }
        lane.budget.completed();
        lane.front.push_back(id);
        self.requeue(id, now);
        Some(OverloadOutcome::Requeued { pause })
    }

    fn requeue(&mut self, id: RequestId, now: Instant) {
        if let Some(request) = self.requests.get_mut(&id) {
            request.phase = Phase::Queued { since: now };
        }
    }

    fn lane_of_in_flight(&mut self, id: RequestId) -> Option<&mut Lane> {
        let request = self.requests.get(&id)?;
        if !matches!(request.phase, Phase::InFlight) {
            return None;
        }
        self.lanes.get_mut(&request.lane)
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut keys: Vec<&BudgetKey> = self.lanes.keys().collect();
        keys.sort();
        let lanes = keys
            .into_iter()
            .filter_map(|key| {
                let lane = self.lanes.get(key)?;
                Some(LaneSnapshot {
                    credential: key.credential.to_string(),
                    family: key.family.to_string(),
                    state: lane.budget.state(now),
                    allowed_in_flight: lane.budget.allowed_inflight(now),
                    in_flight: lane.budget.in_flight(),
                    requeued: lane.front.len(),
                    queued_per_agent: lane
                        .agents
                        .iter()
                        .map(|(agent, queue)| (agent.to_string(), queue.len()))
                        .collect(),
                    fair_share_tokens: lane
                        .policy
                        .counters()
                        .into_iter()
                        .map(|(agent, counter)| (agent.to_string(), counter))
                        .collect(),
                    paused_for_ms: lane
                        .budget
                        .pause_until(now)
                        .map(|until| millis(until - now)),
                    buckets: lane
                        .budget
                        .bucket_snapshots(now)
                        .into_iter()
                        .map(|(bucket, snapshot)| (bucket.name(), snapshot))
                        .collect(),
                })
            })
            .collect();
        let in_flight = self
            .requests
            .values()
            .filter(|request| matches!(request.phase, Phase::InFlight))
            .count();
        Snapshot {
            held_bytes: self.held_bytes,
            max_queued_bytes: self.config.max_queued_bytes,
            queued: self.requests.len() - in_flight,
            in_flight,
            lanes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::{Bucket, BucketReading};

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn key(credential: &str, model: &str) -> BudgetKey {
        BudgetKey::new(Fingerprint::of_bytes(credential.as_bytes()), model)
    }

    fn agent(name: &str) -> AgentKey {
        AgentKey::new(name)
    }

    fn scheduler(max_inflight: usize) -> Scheduler {
        Scheduler::with_jitter(
            SchedulerConfig {
                max_inflight,
                probe_new_lanes: false,
                ..SchedulerConfig::default()
            },
            Box::new(FixedJitter(1.0)),
        )
    }

    fn retry_after(at: Instant, seconds: f64) -> Observation {
        let mut obs = Observation::empty(at);
        obs.retry_after = Some(secs(seconds));
        obs
    }

    fn tokens(at: Instant, limit: u64, remaining: u64, reset_in: f64) -> Observation {
        let mut obs = Observation::empty(at);
        obs.buckets[Bucket::Tokens.index()] = BucketReading {
            limit: Some(limit),
            remaining: Some(remaining),
            reset: Some(at + secs(reset_in)),
        };
        obs
    }

    #[test]
    fn families() {
        assert_eq!(family_of("claude-opus-4-1-20250805"), ModelFamily::Opus);
        assert_eq!(family_of("claude-3-opus-latest"), ModelFamily::Opus);
        assert_eq!(family_of("claude-sonnet-4-5"), ModelFamily::Sonnet);
        assert_eq!(family_of("Claude-3-5-Haiku-20241022"), ModelFamily::Haiku);
        assert_eq!(
            family_of("claude-2.1"),
            ModelFamily::Other(Arc::from("claude-2.1"))
        );
        assert_eq!(family_of("").as_str(), "");
        assert_eq!(
            key("k", "claude-opus-4-1"),
            key("k", "claude-opus-4-20250514")
        );
        assert_ne!(key("k", "claude-opus-4-1"), key("j", "claude-opus-4-1"));
    }

    #[test]
    fn round_robin_serves_single_requests_within_the_first_three() {
        let t0 = Instant::now();
        let mut s = scheduler(1);
        let lane = key("k", "claude-sonnet-4-5");
        let mut owner = HashMap::new();
        for _ in 0..100 {
            let id = s.enqueue(agent("a"), lane.clone(), 10, t0).unwrap();
            owner.insert(id, "a");
        }
        for name in ["b", "c"] {
            let id = s.enqueue(agent(name), lane.clone(), 10, t0).unwrap();
            owner.insert(id, name);
        }
        let mut order = Vec::new();
        for _ in 0..102 {
            let sent = s.next_dispatches(t0);
            assert_eq!(sent.len(), 1);
            order.push(owner[&sent[0]]);
            s.on_complete(sent[0]);
        }
        assert!(
            order[..3].contains(&"b") && order[..3].contains(&"c"),
            "{order:?}"
        );
        assert_eq!(order.iter().filter(|&&name| name == "a").count(), 100);
        assert!(s.next_dispatches(t0).is_empty());
        assert_eq!(s.snapshot(t0).queued, 0);
    }

    #[test]
    fn token_fair_lane_charges_real_usage_across_requeues() {
        let t0 = Instant::now();
        let mut s = Scheduler::with_jitter(
            SchedulerConfig {
                max_inflight: 1,
                policy: PolicyKind::TokenFair,
                ..SchedulerConfig::default()
            },
            Box::new(FixedJitter(1.0)),
        );
        let lane = key("k", "opus");
        let mut owner = HashMap::new();
        for _ in 0..50 {
            for name in ["big", "small"] {
                let id = s.enqueue(agent(name), lane.clone(), 1, t0).unwrap();
                owner.insert(id, name);
            }
        }
        // Queued, never dispatched: nothing to charge.
        let queued = *owner.keys().max().unwrap();
        assert!(!s.charge(queued, 5));

        // big goes first (it was backlogged first), gets a 429, goes again from the front,
        // and is charged once its usage is known.
        let first = s.next_dispatches(t0);
        assert_eq!(owner[&first[0]], "big");
        s.on_rate_limited(first[0], &retry_after(t0, 1.0), t0);
        let now = t0 + secs(1.0);
        assert_eq!(s.next_dispatches(now), first);
        assert!(s.charge(first[0], 30_000));
        assert!(s.charge(first[0], 10_000));
        s.on_complete(first[0]);
        assert!(!s.charge(first[0], 1), "completed: no more charges");

        // small catches up, 40 requests of 1 000, before big goes again.
        let mut order = Vec::new();
        for _ in 0..41 {
            let sent = s.next_dispatches(now);
            assert_eq!(sent.len(), 1);
            let name = owner[&sent[0]];
            order.push(name);
            s.charge(sent[0], if name == "big" { 40_000 } else { 1_000 });
            s.on_complete(sent[0]);
        }
        assert!(order[..40].iter().all(|&name| name == "small"), "{order:?}");
        assert_eq!(order[40], "big");
        let counters = &s.snapshot(now).lanes[0].fair_share_tokens;
        assert_eq!(counters["big"], 80_000);
        assert_eq!(counters["small"], 40_000);

        // Everyone leaves: big's debt is kept while the lane lives.
        let ids: Vec<RequestId> = owner.keys().copied().collect();
        for id in ids {
            s.cancel(id);
        }
        assert!(s.snapshot(now).lanes[0]
            .fair_share_tokens
            .contains_key("big"));

        // A request cancelled while requeued at the front finishes for the policy too: once
        // another agent has been served for a while, c (owing nothing) is forgotten. Were it
        // still counted as in flight, it would be remembered forever.
        let c = s.enqueue(agent("c"), lane.clone(), 1, now).unwrap();
        assert_eq!(s.next_dispatches(now), vec![c]);
        s.on_rate_limited(c, &retry_after(now, 1.0), now);
        assert!(s.snapshot(now).lanes[0].fair_share_tokens.contains_key("c"));
        s.cancel(c);
        let later = now + Duration::from_secs(5);
        for _ in 0..4 {
            let d = s.enqueue(agent("d"), lane.clone(), 1, later).unwrap();
            assert_eq!(s.next_dispatches(later), vec![d]);
            s.charge(d, 100_000);
            s.on_complete(d);
        }
        assert!(!s.snapshot(later).lanes[0]
            .fair_share_tokens
            .contains_key("c"));
    }

    #[test]
    fn round_robin_has_no_counters_to_show() {
        let t0 = Instant::now();
        let mut s = scheduler(1);
        let id = s.enqueue(agent("a"), key("k", "opus"), 1, t0).unwrap();
        s.next_dispatches(t0);
        assert!(s.charge(id, 100));
        let json = serde_json::to_value(s.snapshot(t0)).unwrap();
        assert!(json["lanes"][0].get("fair_share_tokens").is_none());
    }

    #[test]
    fn agent_fifo_order_is_kept() {
        let t0 = Instant::now();
        let mut s = scheduler(10);
        let lane = key("k", "opus");
        let ids: Vec<_> = (0..5)
            .map(|_| s.enqueue(agent("a"), lane.clone(), 1, t0).unwrap())
            .collect();
        // Plenty allows 10 in flight here; all five go, oldest first.
        assert_eq!(s.next_dispatches(t0), ids);
    }

    #[test]
    fn requeue_at_front_after_429_and_nothing_jumps_ahead_while_paused() {
        let t0 = Instant::now();
        let mut s = scheduler(3);
        let lane = key("k", "claude-opus-4-1");
        let first = s.enqueue(agent("a"), lane.clone(), 10, t0).unwrap();
        assert_eq!(s.next_dispatches(t0), vec![first]);

        let pause = s.on_rate_limited(first, &retry_after(t0, 5.0), t0);
        assert_eq!(pause, Some(secs(5.0)));
        assert!(!s.is_in_flight(first));
        let b1 = s.enqueue(agent("b"), lane.clone(), 10, t0).unwrap();
        // Paused: nothing goes, whoever arrives.
        let c1 = s
            .enqueue(agent("c"), lane.clone(), 10, t0 + secs(1.0))
            .unwrap();
        assert!(s.next_dispatches(t0 + secs(1.0)).is_empty());
        assert!(s.next_dispatches(t0 + secs(4.9)).is_empty());
        assert_eq!(s.next_wakeup(t0 + secs(1.0)), Some(t0 + secs(5.0)));

        // Pause over: the requeued request goes first, and alone (restart at 1).
        assert_eq!(s.next_dispatches(t0 + secs(5.0)), vec![first]);
        assert_eq!(s.waited(first, t0 + secs(5.0)), Some(secs(5.0)));
        s.on_response(
            first,
            &tokens(t0 + secs(6.0), 400_000, 300_000, 10.0),
            true,
            t0 + secs(6.0),
        );
        s.on_complete(first);
        // Fresh headers show plenty: the lane widens.
        let mut rest = s.next_dispatches(t0 + secs(6.0));
        rest.sort();
        assert_eq!(rest, vec![b1, c1]);
    }

    #[test]
    fn several_429s_keep_their_order_at_the_front() {
        let t0 = Instant::now();
        let mut s = scheduler(3);
        let lane = key("k", "haiku");
        let ids: Vec<_> = ["a", "b", "c"]
            .iter()
            .map(|name| s.enqueue(agent(name), lane.clone(), 1, t0).unwrap())
            .collect();
        let later = s.enqueue(agent("d"), lane.clone(), 1, t0).unwrap();
        assert_eq!(s.next_dispatches(t0).len(), 3);
        for id in &ids {
            s.on_rate_limited(*id, &retry_after(t0, 1.0), t0);
        }
        let mut order = Vec::new();
        let mut now = t0 + secs(1.0);
        while order.len() < 4 {
            for id in s.next_dispatches(now) {
                order.push(id);
                s.on_complete(id);
            }
            now += secs(0.1);
        }
        assert_eq!(order, [ids[0], ids[1], ids[2], later]);
    }

    #[test]
    fn cancelled_queued_request_is_never_dispatched() {
        let t0 = Instant::now();
        let mut s = scheduler(1);
        let lane = key("k", "sonnet");
        let a1 = s.enqueue(agent("a"), lane.clone(), 100, t0).unwrap();
        let a2 = s.enqueue(agent("a"), lane.clone(), 100, t0).unwrap();
        let b1 = s.enqueue(agent("b"), lane.clone(), 100, t0).unwrap();
        assert_eq!(s.held_bytes(), 300);
        assert!(s.cancel(a1));
        assert!(s.cancel(b1));
        assert!(!s.cancel(b1));
        assert_eq!(s.held_bytes(), 100);
        // The emptied agent queue is gone, not left behind.
        let snapshot = s.snapshot(t0);
        assert_eq!(
            snapshot.lanes[0]
                .queued_per_agent
                .keys()
                .collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(s.next_dispatches(t0), vec![a2]);
        assert!(s.snapshot(t0).lanes[0].queued_per_agent.is_empty());

        // Cancelling a requeued request removes it from the front too.
        s.on_rate_limited(a2, &retry_after(t0, 1.0), t0);
        assert!(s.cancel(a2));
        assert!(s.next_dispatches(t0 + secs(2.0)).is_empty());
        assert_eq!(s.held_bytes(), 0);
    }

    #[test]
    fn retry_after_absent_uses_reset_then_doubling_backoff() {
        let t0 = Instant::now();
        let mut s = scheduler(1);
        let lane = key("k", "opus");
        let id = s.enqueue(agent("a"), lane.clone(), 1, t0).unwrap();
        let mut now = t0;
        let mut pauses = Vec::new();
        for _ in 0..8 {
            assert_eq!(s.next_dispatches(now), vec![id]);
            let pause = s
                .on_rate_limited(id, &Observation::empty(now), now)
                .unwrap();
            pauses.push(pause.as_secs());
            assert_eq!(s.next_wakeup(now), Some(now + pause));
            now += pause;
        }
        assert_eq!(pauses, [1, 2, 4, 8, 16, 32, 60, 60]);

        // With a reset header on the exhausted bucket, that is the pause.
        assert_eq!(s.next_dispatches(now), vec![id]);
        let pause = s.on_rate_limited(id, &tokens(now, 60_000, 0, 42.0), now);
        assert_eq!(pause, Some(secs(42.0)));
    }

    #[test]
    fn overload_retries_run_out_and_the_slot_is_kept() {
        let t0 = Instant::now();
        let mut s = Scheduler::with_jitter(
            SchedulerConfig {
                overload_retries: 2,
                probe_new_lanes: false,
                ..SchedulerConfig::default()
            },
            Box::new(FixedJitter(1.0)),
        );
        let lane = key("k", "sonnet");
        let id = s.enqueue(agent("a"), lane.clone(), 1, t0).unwrap();
        let other = s.enqueue(agent("b"), lane.clone(), 1, t0).unwrap();
        assert_eq!(s.next_dispatches(t0).len(), 2);
        s.on_complete(other);
        let empty = Observation::empty(t0);

        assert_eq!(
            s.on_overloaded(id, &empty, t0),
            Some(OverloadOutcome::Requeued { pause: secs(1.0) })
        );
        assert!(s.next_dispatches(t0 + secs(0.5)).is_empty());
        assert_eq!(s.next_dispatches(t0 + secs(1.0)), vec![id]);
        assert_eq!(
            s.on_overloaded(id, &empty, t0 + secs(1.0)),
            Some(OverloadOutcome::Requeued { pause: secs(2.0) })
        );
        assert_eq!(s.next_dispatches(t0 + secs(3.0)), vec![id]);
        assert_eq!(
            s.on_overloaded(id, &empty, t0 + secs(3.0)),
            Some(OverloadOutcome::Exhausted)
        );
        // Passed through: still holds its slot until the body ends.
        assert!(s.is_in_flight(id));
        assert_eq!(s.snapshot(t0 + secs(3.0)).in_flight, 1);
        assert!(s.on_complete(id));
        assert_eq!(s.snapshot(t0 + secs(3.0)).in_flight, 0);
        // Not in flight any more: nothing to do.
        assert_eq!(s.on_overloaded(id, &empty, t0), None);
        assert_eq!(s.on_rate_limited(id, &empty, t0), None);
    }

    #[test]
    fn overload_jitter_comes_from_the_injected_source() {
        let t0 = Instant::now();
        let mut s = Scheduler::with_jitter(SchedulerConfig::default(), Box::new(FixedJitter(0.0)));
        let id = s.enqueue(agent("a"), key("k", "opus"), 1, t0).unwrap();
        s.next_dispatches(t0);
        assert_eq!(
            s.on_overloaded(id, &Observation::empty(t0), t0),
            Some(OverloadOutcome::Requeued { pause: secs(0.5) })
        );
    }

    #[test]
    fn two_budget_keys_are_independent() {
        let t0 = Instant::now();
        let mut s = scheduler(3);
        let opus = key("k", "claude-opus-4-1");
        let haiku = key("k", "claude-3-5-haiku");
        let other_key_opus = key("j", "claude-opus-4-1");
        let o1 = s.enqueue(agent("a"), opus.clone(), 1, t0).unwrap();
        assert_eq!(s.next_dispatches(t0), vec![o1]);
        // Opus is drained.
        s.on_response(o1, &tokens(t0, 60_000, 0, 60.0), true, t0);
        s.on_complete(o1);
        let o2 = s.enqueue(agent("a"), opus.clone(), 1, t0).unwrap();
        let h1 = s.enqueue(agent("a"), haiku.clone(), 1, t0).unwrap();
        let k1 = s
            .enqueue(agent("a"), other_key_opus.clone(), 1, t0)
            .unwrap();
        let mut sent = s.next_dispatches(t0);
        sent.sort();
        assert_eq!(sent, vec![h1, k1]);
        // Opus resumes after its partial refill (3 s), not before.
        assert_eq!(s.next_wakeup(t0), Some(t0 + secs(3.0)));
        assert!(s.next_dispatches(t0 + secs(2.9)).is_empty());
        assert_eq!(s.next_dispatches(t0 + secs(3.0)), vec![o2]);
    }

    #[test]
    fn in_flight_never_exceeds_the_state_limit() {
        let t0 = Instant::now();
        let mut s = scheduler(3);
        let lanes = [key("k", "opus"), key("k", "haiku")];
        let mut rng = XorShiftJitter::new(7);
        let mut roll = |n: usize| (rng.unit() * n as f64) as usize;
        let mut in_flight: Vec<RequestId> = Vec::new();
        let mut now = t0;
        let mut total_sent = 0;
        for step in 0..3_000 {
            now += secs(0.05);
            match roll(6) {
                0 | 1 => {
                    let lane = lanes[roll(2)].clone();
                    let name = ["a", "b", "c"][roll(3)];
                    s.enqueue(agent(name), lane, 1, now).unwrap();
                }
                2 if !in_flight.is_empty() => {
                    let id = in_flight.swap_remove(roll(in_flight.len()));
                    s.on_complete(id);
                }
                3 if !in_flight.is_empty() => {
                    let id = in_flight[roll(in_flight.len())];
                    let remaining = [0, 2_000, 8_000, 50_000][roll(4)];
                    s.on_response(id, &tokens(now, 60_000, remaining, 30.0), true, now);
                }
                4 if !in_flight.is_empty() && step % 7 == 0 => {
                    let at = roll(in_flight.len());
                    let id = in_flight.swap_remove(at);
                    s.on_rate_limited(id, &retry_after(now, 0.5), now);
                }
                _ => {}
            }
            let before: HashMap<String, usize> = s
                .snapshot(now)
                .lanes
                .into_iter()
                .map(|lane| (lane.family, lane.in_flight))
                .collect();
            let sent = s.next_dispatches(now);
            total_sent += sent.len();
            in_flight.extend(sent);
            for lane in s.snapshot(now).lanes {
                assert!(lane.in_flight <= 3);
                let was = before.get(&lane.family).copied().unwrap_or(0);
                if lane.in_flight > was {
                    // This lane dispatched: it may only have filled up to its state's limit.
                    assert!(
                        lane.in_flight <= lane.allowed_in_flight,
                        "step {step}: {lane:?}"
                    );
                }
            }
        }
        assert!(
            total_sent > 300,
            "the walk should exercise dispatch: {total_sent}"
        );
    }

    #[test]
    fn memory_bound_refuses_then_admits_again() {
        let t0 = Instant::now();
        let mut s = Scheduler::with_jitter(
            SchedulerConfig {
                max_queued_bytes: 1_000,
                max_inflight: 1,
                ..SchedulerConfig::default()
            },
            Box::new(FixedJitter(1.0)),
        );
        let lane = key("k", "opus");
        let a = s.enqueue(agent("a"), lane.clone(), 600, t0).unwrap();
        assert!(s.try_admit(400));
        assert!(!s.try_admit(401));
        assert!(!s.try_admit(u64::MAX));
        let refused = s.enqueue(agent("b"), lane.clone(), 401, t0).unwrap_err();
        assert_eq!(refused.held_bytes, 600);
        // In-flight bodies still count; completion frees them.
        assert_eq!(s.next_dispatches(t0), vec![a]);
        assert!(!s.try_admit(401));
        s.on_complete(a);
        assert!(s.try_admit(1_000));
    }

    #[test]
    fn idle_lanes_are_forgotten_once_refilled() {
        let t0 = Instant::now();
        let mut s = scheduler(3);
        let id = s.enqueue(agent("a"), key("k", "opus"), 1, t0).unwrap();
        s.next_dispatches(t0);
        s.on_response(id, &tokens(t0, 60_000, 30_000, 30.0), true, t0);
        s.on_complete(id);
        s.next_dispatches(t0 + secs(1.0));
        assert_eq!(s.snapshot(t0 + secs(1.0)).lanes.len(), 1);
        s.next_dispatches(t0 + secs(30.0));
        assert!(s.snapshot(t0 + secs(30.0)).lanes.is_empty());
        assert_eq!(s.next_wakeup(t0 + secs(30.0)), None);
    }

    #[test]
    fn snapshot_serializes() {
        let t0 = Instant::now();
        let mut s = scheduler(1);
        let lane = key("k", "claude-opus-4-1");
        let id = s.enqueue(agent("a"), lane.clone(), 5, t0).unwrap();
        s.enqueue(agent("b"), lane.clone(), 5, t0).unwrap();
        s.next_dispatches(t0);
        s.on_response(id, &tokens(t0, 60_000, 0, 60.0), true, t0);
        let json = serde_json::to_value(s.snapshot(t0)).unwrap();
        let lane_json = &json["lanes"][0];
        assert_eq!(lane_json["family"], "opus");
        assert_eq!(lane_json["state"], "paused");
        assert_eq!(lane_json["in_flight"], 1);
        assert_eq!(lane_json["queued_per_agent"]["b"], 1);
        assert_eq!(lane_json["paused_for_ms"], 3000);
        assert_eq!(lane_json["buckets"]["tokens"]["remaining"], 0);
        assert_eq!(lane_json["credential"].as_str().unwrap().len(), 12);
        assert_eq!(json["held_bytes"], 10);
    }
}
