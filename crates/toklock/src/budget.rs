//! One budget lane's view of Anthropic's token buckets, and how many requests it may have in
//! flight right now.
//!
//! Pure state machine: it is fed only by real response headers ([`Observation`]) and by
//! dispatch/complete bookkeeping, and every query takes the current `Instant`, so tests drive it
//! with an injected clock.
//!
//! # Model
//! Buckets refill continuously. From one reading (limit L, remaining R, full again at `reset`,
//! read at `t0`) the refill rate is `(L - R) / (reset - t0)`; when that is unusable (bucket full,
//! reset missing or in the past) the rate is `L / 60 s`, because every Anthropic limit is per
//! minute. The estimated level at `t` is `min(L, R + rate * (t - t0))`.
//!
//! # States and watermarks
//! * **paused** (0 in flight): a token bucket is below its pause watermark, or the request
//!   bucket has nothing left once requests dispatched since the newest reading are counted
//!   (that count is known, not guessed), or a 429/529 penalty is running. A watermark pause
//!   lasts until the bucket has refilled back up to the pause watermark, not until `reset`.
//! * **low** (1 in flight): a token bucket is below its slow watermark, or the lane has just
//!   come out of a pause and no fresh response has arrived since.
//! * **plenty** (`max_inflight`).
//!
//! Watermarks per token bucket with limit L: slow below `min(slow_below, L / 3)`, pause below
//! `min(pause_below, L / 10)`. With the defaults (10 000 / 3 000) a large limit behaves like the
//! original toklock; at Tier 1 (8 000 output tokens/min) the output bucket slows only below
//! 2 666 and pauses only below 800, instead of living in the slow lane forever. A third keeps
//! room for about three typical requests at full width; a tenth is enough to let one more
//! request start while keeping it unlikely to 429.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ratelimit::{Bucket, Observation, MAX_HEADER_WAIT};
use crate::scheduler::SchedulerConfig;

/// Every Anthropic rate limit is per minute; used when a reading gives no usable refill rate.
const LIMIT_WINDOW_SECS: f64 = 60.0;

/// How long to pause when a bucket is short and neither its limit nor its reset is known.
/// The next response's headers will say more.
const UNKNOWN_REFILL_WAIT: Duration = Duration::from_secs(1);

/// How wide a lane may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LaneState {
    Plenty,
    Low,
    Paused,
}

/// Exponential backoff: `base * 2^(strikes - 1)`, capped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    /// The delay after `strikes` consecutive failures (1 for the first).
    pub fn delay(&self, strikes: u32) -> Duration {
        let doublings = strikes.saturating_sub(1).min(30);
        self.base
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.cap)
            .min(self.cap)
    }
}

/// The newest reading of one bucket.
#[derive(Clone, Copy, Debug, PartialEq)]
struct BucketState {
    limit: Option<u64>,
    remaining: u64,
    reset: Option<Instant>,
    observed_at: Instant,
}

impl BucketState {
    /// Units per second; `None` when the limit is unknown (nothing to scale a refill by).
    fn refill_rate(&self) -> Option<f64> {
        let limit = self.limit.filter(|&limit| limit > 0)? as f64;
        let missing = limit - self.remaining as f64;
        if let Some(reset) = self.reset {
            let span = reset
                .saturating_duration_since(self.observed_at)
                .as_secs_f64();
            if span > 0.0 && missing > 0.0 {
                return Some(missing / span);
            }
        }
        Some(limit / LIMIT_WINDOW_SECS)
    }

    /// Estimated level at `at`.
    fn level_at(&self, at: Instant) -> f64 {
        let remaining = self.remaining as f64;
        let full = self.limit.map(|limit| (limit as f64).max(remaining));
        if let (Some(reset), Some(full)) = (self.reset, full) {
            if at >= reset {
                return full;
            }
        }
        let elapsed = at.saturating_duration_since(self.observed_at).as_secs_f64();
        let level = remaining + self.refill_rate().unwrap_or(0.0) * elapsed;
        full.map_or(level, |full| level.min(full))
    }

    /// When the level reaches `target` (the reading time if it already had).
    fn time_to_reach(&self, target: f64) -> Instant {
        let remaining = self.remaining as f64;
        if remaining >= target {
            return self.observed_at;
        }
        let fits_in_limit = self.limit.is_some_and(|limit| target <= limit as f64);
        match (self.refill_rate(), self.reset) {
            (Some(rate), Some(reset)) if fits_in_limit => {
                (self.observed_at + seconds((target - remaining) / rate)).min(reset)
            }
            (Some(rate), _) => self.observed_at + seconds((target - remaining) / rate),
            (None, Some(reset)) => reset,
            (None, None) => self.observed_at + UNKNOWN_REFILL_WAIT,
        }
    }
}

/// A non-negative, finite, clamped `Duration` from seconds computed in floating point.
fn seconds(secs: f64) -> Duration {
    if secs.is_nan() || secs <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(secs)
        .unwrap_or(MAX_HEADER_WAIT)
        .min(MAX_HEADER_WAIT)
}

/// What the status snapshot shows for one bucket.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BucketSnapshot {
    pub limit: Option<u64>,
    /// As the newest response reported it.
    pub remaining: u64,
    /// Estimated now, from the refill rate (requests: minus those dispatched since).
    pub estimated_now: u64,
    pub reset_in_ms: Option<u64>,
    pub observed_ms_ago: u64,
}

/// One (credential, model family) budget.
#[derive(Clone, Debug)]
pub struct Budget {
    max_inflight: usize,
    slow_below: u64,
    pause_below: u64,
    rate_limit_backoff: Backoff,
    overload_backoff: Backoff,
    buckets: [Option<BucketState>; 4],
    /// Requests sent since the newest request-bucket reading: they already count against it.
    requests_since_reading: u64,
    in_flight: usize,
    /// End of the newest 429/529 pause.
    penalty_until: Option<Instant>,
    /// Set when a pause starts; holds the lane at 1 in flight until a response arrives after
    /// the pause is over.
    restarting: bool,
    /// Some response (2xx or not) has come back since the lane was created. Until then the
    /// lane sends one request at a time; an upstream that sends no rate-limit headers at all
    /// is then left at full width.
    heard_back: bool,
    rate_limit_strikes: u32,
    overload_strikes: u32,
}

impl Budget {
    pub fn new(config: &SchedulerConfig) -> Budget {
        Budget {
            max_inflight: config.max_inflight.max(1),
            slow_below: config.slow_below,
            pause_below: config.pause_below,
            rate_limit_backoff: config.rate_limit_backoff,
            overload_backoff: config.overload_backoff,
            buckets: [None; 4],
            requests_since_reading: 0,
            in_flight: 0,
            penalty_until: None,
            restarting: false,
            heard_back: !config.probe_new_lanes,
            rate_limit_strikes: 0,
            overload_strikes: 0,
        }
    }

    /// `(slow_at, pause_at)` for a token bucket, capped by the bucket's own limit.
    fn watermarks(&self, limit: Option<u64>) -> (u64, u64) {
        match limit {
            Some(limit) => (
                self.slow_below.min(limit / 3),
                self.pause_below.min(limit / 10),
            ),
            None => (self.slow_below, self.pause_below),
        }
    }

    /// Takes in whatever buckets the observation reports.
    fn absorb(&mut self, obs: &Observation) {
        for bucket in Bucket::ALL {
            let reading = obs.bucket(bucket);
            let slot = &mut self.buckets[bucket.index()];
            match reading.remaining {
                Some(remaining) => {
                    *slot = Some(BucketState {
                        limit: reading.limit.or(slot.and_then(|old| old.limit)),
                        remaining,
                        reset: reading.reset,
                        observed_at: obs.observed_at,
                    });
                    if bucket == Bucket::Requests {
                        self.requests_since_reading = 0;
                    }
                }
                None => {
                    if let (Some(state), Some(limit)) = (slot.as_mut(), reading.limit) {
                        state.limit = Some(limit);
                    }
                }
            }
        }
    }

    /// Feeds the headers of a response that is not a retried 429/529. `success` (a 2xx)
    /// resets the backoff counters. A response arriving after a pause has ended lets the lane
    /// widen again as far as its headers allow.
    pub fn observe(&mut self, obs: &Observation, success: bool, now: Instant) {
        self.absorb(obs);
        self.heard_back = true;
        if success {
            self.rate_limit_strikes = 0;
            self.overload_strikes = 0;
        }
        self.restarting = self.pause_until(now).is_some();
    }

    /// A retryable 429: pause for `retry-after`; without it until the reset of the bucket that
    /// ran out; without that, backoff (1 s doubling to 60 s by default). Returns the pause.
    pub fn on_rate_limited(&mut self, obs: &Observation, now: Instant) -> Duration {
        self.absorb(obs);
        self.heard_back = true;
        self.rate_limit_strikes = self.rate_limit_strikes.saturating_add(1);
        let delay = obs
            .retry_after
            .or_else(|| self.exhausted_bucket_reset(obs, now))
            .unwrap_or_else(|| self.rate_limit_backoff.delay(self.rate_limit_strikes));
        self.penalize(now, delay);
        delay
    }

    /// A 529/503: pause for `retry-after` if given, else backoff with "equal jitter" (between
    /// half and all of the backoff; `jitter_unit` in `[0, 1]`). Returns the pause.
    pub fn on_overloaded(&mut self, obs: &Observation, jitter_unit: f64, now: Instant) -> Duration {
        self.absorb(obs);
        self.heard_back = true;
        self.overload_strikes = self.overload_strikes.saturating_add(1);
        let delay = obs.retry_after.unwrap_or_else(|| {
            let full = self.overload_backoff.delay(self.overload_strikes);
            let unit = if jitter_unit.is_nan() {
                1.0
            } else {
                jitter_unit.clamp(0.0, 1.0)
            };
            full.mul_f64(0.5 + 0.5 * unit)
        });
        self.penalize(now, delay);
        delay
    }

    fn penalize(&mut self, now: Instant, delay: Duration) {
        let until = now + delay.min(MAX_HEADER_WAIT);
        self.penalty_until = Some(self.penalty_until.map_or(until, |old| old.max(until)));
        self.restarting = true;
    }

    /// The latest reset among buckets that this 429 shows as run out, if still ahead.
    fn exhausted_bucket_reset(&self, obs: &Observation, now: Instant) -> Option<Duration> {
        Bucket::ALL
            .into_iter()
            .filter_map(|bucket| {
                let reading = obs.bucket(bucket);
                let remaining = reading.remaining?;
                let exhausted = if bucket.is_tokens() {
                    remaining < self.watermarks(reading.limit).1 || remaining == 0
                } else {
                    remaining == 0
                };
                exhausted.then_some(reading.reset?)
            })
            .max()
            .filter(|&reset| reset > now)
            .map(|reset| reset - now)
    }

    /// A request was sent upstream.
    pub fn dispatched(&mut self, now: Instant) {
        self.in_flight += 1;
        self.requests_since_reading = self.requests_since_reading.saturating_add(1);
        if self.requests_pause_end(now).is_some() {
            self.restarting = true;
        }
    }

    /// A request's slot was freed (body ended, client gone, or the request was requeued).
    pub fn completed(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// When the request bucket has a request to spare again, if it has none now.
    fn requests_pause_end(&self, now: Instant) -> Option<Instant> {
        let state = self.buckets[Bucket::Requests.index()]?;
        let needed = self.requests_since_reading as f64 + 1.0;
        Some(state.time_to_reach(needed)).filter(|&end| end > now)
    }

    /// When this lane may dispatch again, if it is paused now: the end of the longest running
    /// pause (watermark, request bucket, 429/529 penalty).
    pub fn pause_until(&self, now: Instant) -> Option<Instant> {
        let token_pauses = Bucket::ALL
            .into_iter()
            .filter(|bucket| bucket.is_tokens())
            .filter_map(|bucket| {
                let state = self.buckets[bucket.index()]?;
                let (_, pause_at) = self.watermarks(state.limit);
                (state.remaining < pause_at).then(|| state.time_to_reach(pause_at as f64))
            });
        token_pauses
            .chain(self.penalty_until)
            .chain(self.requests_pause_end(now))
            .filter(|&end| end > now)
            .max()
    }

    pub fn state(&self, now: Instant) -> LaneState {
        if self.pause_until(now).is_some() {
            return LaneState::Paused;
        }
        let any_low = Bucket::ALL
            .into_iter()
            .filter(|bucket| bucket.is_tokens())
            .any(|bucket| {
                self.buckets[bucket.index()].is_some_and(|state| {
                    let (slow_at, _) = self.watermarks(state.limit);
                    state.level_at(now) < slow_at as f64
                })
            });
        // A new lane knows nothing of its budget: one request finds out, instead of
        // max_inflight of them meeting an empty bucket at once.
        if any_low || self.restarting || !self.heard_back {
            LaneState::Low
        } else {
            LaneState::Plenty
        }
    }

    /// How many requests this lane may have in flight now.
    pub fn allowed_inflight(&self, now: Instant) -> usize {
        match self.state(now) {
            LaneState::Paused => 0,
            LaneState::Low if self.restarting || !self.heard_back => 1,
            LaneState::Low => self.graded_width(now),
            LaneState::Plenty => self.max_inflight,
        }
    }

    /// Width of a low lane. A step from `max_inflight` straight to 1 at the slow watermark
    /// would hold a saturated lane (whose level hovers just above the pause watermark) at one
    /// request at a time, which cannot use the refill when requests take longer than a
    /// refill step. So the width grows with the estimated level, from 1 at the pause
    /// watermark to `max_inflight` at the slow watermark. More in flight drains the level and
    /// narrows the lane again, so dispatch settles at the rate the bucket refills.
    fn graded_width(&self, now: Instant) -> usize {
        let max = self.max_inflight.max(1);
        let mut width = max;
        for bucket in Bucket::ALL.into_iter().filter(|bucket| bucket.is_tokens()) {
            let Some(state) = self.buckets[bucket.index()] else {
                continue;
            };
            let (slow_at, pause_at) = self.watermarks(state.limit);
            let level = state.level_at(now);
            if level >= slow_at as f64 {
                continue;
            }
            let span = slow_at.saturating_sub(pause_at).max(1) as f64;
            let fraction = ((level - pause_at as f64) / span).clamp(0.0, 1.0);
            width = width.min(1 + ((max - 1) as f64 * fraction).floor() as usize);
        }
        width.max(1)
    }

    /// When refill alone will next let a low lane widen, so a queued request need not wait
    /// for the next response to be sent. `None` when the lane is not in the graded range.
    pub fn widens_at(&self, now: Instant) -> Option<Instant> {
        if self.state(now) != LaneState::Low || self.restarting || !self.heard_back {
            return None;
        }
        let max = self.max_inflight.max(1);
        let next = self.graded_width(now) + 1;
        if next > max {
            return None;
        }
        let fraction = (next - 1) as f64 / (max - 1).max(1) as f64;
        Bucket::ALL
            .into_iter()
            .filter(|bucket| bucket.is_tokens())
            .filter_map(|bucket| {
                let state = self.buckets[bucket.index()]?;
                let (slow_at, pause_at) = self.watermarks(state.limit);
                let span = slow_at.saturating_sub(pause_at) as f64;
                let target = pause_at as f64 + span * fraction;
                (state.level_at(now) < target).then(|| state.time_to_reach(target))
            })
            .max()
            .filter(|&at| at > now)
    }

    /// Whether one more request may be sent now.
    pub fn has_room(&self, now: Instant) -> bool {
        self.in_flight < self.allowed_inflight(now)
    }

    /// Nothing here is worth remembering: idle, not paused, and every bucket full again. Such
    /// a lane can be dropped, which keeps the lane map bounded.
    pub fn is_settled(&self, now: Instant) -> bool {
        self.in_flight == 0
            && self.pause_until(now).is_none()
            && self.buckets.iter().flatten().all(|state| {
                let full_at = state
                    .reset
                    .unwrap_or(state.observed_at + Duration::from_secs_f64(LIMIT_WINDOW_SECS));
                now >= full_at
            })
    }

    /// The newest reading of each bucket, for the status endpoint.
    pub fn bucket_snapshots(&self, now: Instant) -> Vec<(Bucket, BucketSnapshot)> {
        Bucket::ALL
            .into_iter()
            .filter_map(|bucket| {
                let state = self.buckets[bucket.index()]?;
                let mut estimated = state.level_at(now).floor();
                if bucket == Bucket::Requests {
                    estimated -= self.requests_since_reading as f64;
                }
                let snapshot = BucketSnapshot {
                    limit: state.limit,
                    remaining: state.remaining,
                    // Saturating float-to-int cast: negative becomes 0.
                    estimated_now: estimated.max(0.0) as u64,
                    reset_in_ms: state
                        .reset
                        .map(|reset| millis(reset.saturating_duration_since(now))),
                    observed_ms_ago: millis(now.saturating_duration_since(state.observed_at)),
                };
                Some((bucket, snapshot))
            })
            .collect()
    }
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ratelimit::BucketReading;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    /// A budget that starts at full width, so tests of the watermarks need no warm-up.
    fn budget() -> Budget {
        Budget::new(&SchedulerConfig {
            probe_new_lanes: false,
            ..SchedulerConfig::default()
        })
    }

    /// An observation at `at` of one bucket: (limit, remaining, reset after `at`).
    fn reading(
        at: Instant,
        bucket: Bucket,
        limit: u64,
        remaining: u64,
        reset_in: f64,
    ) -> Observation {
        let mut obs = Observation::empty(at);
        obs.buckets[bucket.index()] = BucketReading {
            limit: Some(limit),
            remaining: Some(remaining),
            reset: Some(at + secs(reset_in)),
        };
        obs
    }

    fn with(
        mut obs: Observation,
        bucket: Bucket,
        limit: u64,
        remaining: u64,
        reset_in: f64,
    ) -> Observation {
        obs.buckets[bucket.index()] = BucketReading {
            limit: Some(limit),
            remaining: Some(remaining),
            reset: Some(obs.observed_at + secs(reset_in)),
        };
        obs
    }

    #[test]
    fn unknown_budget_sends_one_request_first() {
        let t0 = Instant::now();
        let mut b = Budget::new(&SchedulerConfig::default());
        assert_eq!(
            b.allowed_inflight(t0),
            1,
            "a new lane probes with one request"
        );
        // Any answer, even one without rate-limit headers, tells it what it needs.
        b.observe(&Observation::empty(t0), true, t0);
        assert_eq!(b.state(t0), LaneState::Plenty);
        assert_eq!(b.allowed_inflight(t0), 3);
        assert_eq!(b.pause_until(t0), None);

        let unprobed = budget();
        assert_eq!(
            unprobed.allowed_inflight(t0),
            3,
            "probing can be turned off"
        );
    }

    #[test]
    fn plenty_low_paused_at_large_limits() {
        let t0 = Instant::now();
        let mut b = budget();
        b.observe(
            &reading(t0, Bucket::Tokens, 400_000, 200_000, 30.0),
            true,
            t0,
        );
        assert_eq!(b.state(t0), LaneState::Plenty);

        // Low: the width grows with the level between the pause (3 000) and slow (10 000)
        // watermarks, from 1 up to max_inflight.
        b.observe(&reading(t0, Bucket::Tokens, 400_000, 9_000, 59.0), true, t0);
        assert_eq!(b.state(t0), LaneState::Low);
        assert_eq!(b.allowed_inflight(t0), 2);
        b.observe(&reading(t0, Bucket::Tokens, 400_000, 4_000, 59.0), true, t0);
        assert_eq!(b.state(t0), LaneState::Low);
        assert_eq!(b.allowed_inflight(t0), 1);

        b.observe(&reading(t0, Bucket::Tokens, 400_000, 2_000, 59.0), true, t0);
        assert_eq!(b.state(t0), LaneState::Paused);
        assert_eq!(b.allowed_inflight(t0), 0);
    }

    #[test]
    fn tier1_output_bucket_nearly_full_is_plenty() {
        let t0 = Instant::now();
        let mut b = budget();
        let obs = reading(t0, Bucket::OutputTokens, 8_000, 8_000, 0.0);
        let obs = with(obs, Bucket::InputTokens, 30_000, 30_000, 0.0);
        let obs = with(obs, Bucket::Requests, 50, 49, 1.2);
        b.observe(&obs, true, t0);
        assert_eq!(b.state(t0), LaneState::Plenty);

        // 7k of 8k output left: still plenty (slow below 2 666, pause below 800).
        b.observe(
            &reading(t0, Bucket::OutputTokens, 8_000, 7_000, 7.5),
            true,
            t0,
        );
        assert_eq!(b.state(t0), LaneState::Plenty);
        b.observe(
            &reading(t0, Bucket::OutputTokens, 8_000, 2_000, 45.0),
            true,
            t0,
        );
        assert_eq!(b.state(t0), LaneState::Low);
        b.observe(
            &reading(t0, Bucket::OutputTokens, 8_000, 700, 55.0),
            true,
            t0,
        );
        assert_eq!(b.state(t0), LaneState::Paused);
    }

    #[test]
    fn pause_lasts_until_partial_refill_not_full_reset() {
        let t0 = Instant::now();
        let mut b = budget();
        b.observe(&reading(t0, Bucket::Tokens, 60_000, 0, 60.0), true, t0);
        // 1 000 tokens/s refill; 3 000 needed to leave the pause: 3 s, not 60 s.
        let until = b.pause_until(t0).unwrap();
        let pause = until - t0;
        assert!(pause > secs(2.99) && pause < secs(3.01), "{pause:?}");
        assert_eq!(b.state(t0 + secs(2.9)), LaneState::Paused);
        assert_eq!(b.state(until), LaneState::Low);
    }

    #[test]
    fn restarts_at_one_after_a_pause_and_widens_on_fresh_headers() {
        let t0 = Instant::now();
        let mut b = budget();
        b.observe(&reading(t0, Bucket::Tokens, 60_000, 0, 60.0), true, t0);
        let until = b.pause_until(t0).unwrap();

        // Long after the pause the estimate is high, but no fresh response has come: 1.
        let later = t0 + secs(50.0);
        assert!(later > until);
        assert_eq!(b.allowed_inflight(later), 1);

        // A stale-looking response during the pause does not widen either.
        b.observe(
            &reading(t0 + secs(1.0), Bucket::Tokens, 60_000, 1_000, 59.0),
            true,
            t0 + secs(1.0),
        );
        assert_eq!(b.allowed_inflight(t0 + secs(1.5)), 0);

        // A fresh response after the pause that shows plenty: widen.
        b.observe(
            &reading(later, Bucket::Tokens, 60_000, 50_000, 10.0),
            true,
            later,
        );
        assert_eq!(b.allowed_inflight(later), 3);
    }

    #[test]
    fn requests_remaining_zero_pauses_until_one_refills() {
        let t0 = Instant::now();
        let mut b = budget();
        // 50 RPM, empty, full in 60 s: one request every 1.2 s.
        b.observe(&reading(t0, Bucket::Requests, 50, 0, 60.0), true, t0);
        let until = b.pause_until(t0).unwrap();
        let pause = until - t0;
        assert!(pause > secs(1.19) && pause < secs(1.21), "{pause:?}");
        assert_eq!(b.allowed_inflight(t0), 0);
    }

    #[test]
    fn requests_dispatched_since_the_reading_count_against_it() {
        let t0 = Instant::now();
        let mut b = budget();
        b.observe(&reading(t0, Bucket::Requests, 50, 2, 57.6), true, t0);
        assert!(b.has_room(t0));
        b.dispatched(t0);
        assert!(b.has_room(t0));
        b.dispatched(t0);
        // Two sent, two were left: paused until the next one refills (1.2 s per request).
        assert_eq!(b.state(t0), LaneState::Paused);
        let pause = b.pause_until(t0).unwrap() - t0;
        assert!(pause > secs(1.19) && pause < secs(1.21), "{pause:?}");
        // A fresh reading replaces the count.
        let t1 = t0 + secs(0.5);
        b.observe(&reading(t1, Bucket::Requests, 50, 10, 48.0), true, t1);
        assert_eq!(b.state(t1), LaneState::Plenty);
    }

    #[test]
    fn rate_limited_prefers_retry_after() {
        let t0 = Instant::now();
        let mut b = budget();
        let mut obs = reading(t0, Bucket::Tokens, 60_000, 0, 60.0);
        obs.retry_after = Some(secs(7.0));
        assert_eq!(b.on_rate_limited(&obs, t0), secs(7.0));
        assert_eq!(b.pause_until(t0), Some(t0 + secs(7.0)));
        // Then the lane restarts at 1.
        assert_eq!(b.allowed_inflight(t0 + secs(7.0)), 1);
    }

    #[test]
    fn rate_limited_without_retry_after_waits_for_the_exhausted_buckets_reset() {
        let t0 = Instant::now();
        let mut b = budget();
        // Input bucket ran out (reset in 20 s); output is fine (reset in 50 s, ignored).
        let obs = reading(t0, Bucket::InputTokens, 30_000, 0, 20.0);
        let obs = with(obs, Bucket::OutputTokens, 8_000, 7_000, 50.0);
        assert_eq!(b.on_rate_limited(&obs, t0), secs(20.0));
        assert_eq!(b.pause_until(t0), Some(t0 + secs(20.0)));
    }

    #[test]
    fn rate_limited_without_any_hint_backs_off_doubling_to_60s_and_resets_on_success() {
        let t0 = Instant::now();
        let mut b = budget();
        let empty = Observation::empty(t0);
        let delays: Vec<u64> = (0..9)
            .map(|_| b.on_rate_limited(&empty, t0).as_secs())
            .collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        b.observe(&empty, true, t0 + secs(100.0));
        assert_eq!(b.on_rate_limited(&empty, t0 + secs(100.0)), secs(1.0));
        // A non-success response does not reset the backoff.
        b.observe(&empty, false, t0 + secs(200.0));
        assert_eq!(b.on_rate_limited(&empty, t0 + secs(200.0)), secs(2.0));
    }

    #[test]
    fn overloaded_backoff_is_jittered_and_capped() {
        let t0 = Instant::now();
        let mut b = budget();
        let empty = Observation::empty(t0);
        assert_eq!(b.on_overloaded(&empty, 1.0, t0), secs(1.0));
        assert_eq!(b.on_overloaded(&empty, 0.0, t0), secs(1.0)); // half of 2 s
        assert_eq!(b.on_overloaded(&empty, 0.5, t0), secs(3.0)); // 3/4 of 4 s
        for _ in 0..10 {
            b.on_overloaded(&empty, 1.0, t0);
        }
        assert_eq!(b.on_overloaded(&empty, 1.0, t0), secs(30.0));
        assert_eq!(b.on_overloaded(&empty, f64::NAN, t0), secs(30.0));
        // A retry-after on the 529 is honoured as it is.
        let mut obs = Observation::empty(t0);
        obs.retry_after = Some(secs(4.0));
        assert_eq!(b.on_overloaded(&obs, 0.0, t0), secs(4.0));
    }

    #[test]
    fn penalties_only_extend() {
        let t0 = Instant::now();
        let mut b = budget();
        let mut obs = Observation::empty(t0);
        obs.retry_after = Some(secs(10.0));
        b.on_rate_limited(&obs, t0);
        obs.retry_after = Some(secs(2.0));
        b.on_rate_limited(&obs, t0 + secs(1.0));
        assert_eq!(b.pause_until(t0 + secs(1.0)), Some(t0 + secs(10.0)));
        // A good response during the penalty does not lift it.
        b.observe(
            &reading(t0 + secs(2.0), Bucket::Tokens, 60_000, 60_000, 0.0),
            true,
            t0 + secs(2.0),
        );
        assert_eq!(b.state(t0 + secs(2.0)), LaneState::Paused);
    }

    #[test]
    fn settles_when_idle_and_refilled() {
        let t0 = Instant::now();
        let mut b = budget();
        b.observe(&reading(t0, Bucket::Tokens, 60_000, 30_000, 30.0), true, t0);
        assert!(!b.is_settled(t0 + secs(10.0)));
        assert!(b.is_settled(t0 + secs(30.0)));
        b.dispatched(t0 + secs(30.0));
        assert!(!b.is_settled(t0 + secs(31.0)));
        b.completed();
        assert!(b.is_settled(t0 + secs(31.0)));
    }

    #[test]
    fn garbage_numbers_never_panic() {
        let t0 = Instant::now();
        let mut b = budget();
        for (limit, remaining, reset_in) in [
            (0, 0, 0.0),
            (u64::MAX, 0, 86_400.0),
            (u64::MAX, u64::MAX, 0.0),
            (10, 1_000, 5.0),
            (1, 0, 0.0),
        ] {
            for bucket in Bucket::ALL {
                b.observe(&reading(t0, bucket, limit, remaining, reset_in), true, t0);
                let _ = b.state(t0 + secs(1.0));
                let _ = b.pause_until(t0);
                let _ = b.bucket_snapshots(t0 + secs(3.0));
                for _ in 0..5 {
                    b.dispatched(t0);
                }
                let _ = b.pause_until(t0);
            }
        }
        // Remaining without limit or reset: a short pause, then the next response decides.
        let mut b = budget();
        let mut obs = Observation::empty(t0);
        obs.buckets[Bucket::Tokens.index()].remaining = Some(0);
        b.observe(&obs, true, t0);
        assert_eq!(b.pause_until(t0), Some(t0 + UNKNOWN_REFILL_WAIT));
    }

    #[test]
    fn a_low_lane_widens_as_it_refills_and_says_when() {
        let t0 = Instant::now();
        let mut b = budget();
        // 60 000 a minute, 1 000 a second; 3 500 left: just above the pause watermark.
        b.observe(
            &reading(t0, Bucket::InputTokens, 60_000, 3_500, 56.5),
            true,
            t0,
        );
        assert_eq!(b.allowed_inflight(t0), 1);
        // Width 2 needs the midpoint of 3 000 and 10 000: 6 500, three seconds of refill.
        let at = b.widens_at(t0).expect("it will widen");
        let wait = at.duration_since(t0).as_secs_f64();
        assert!((2.9..3.1).contains(&wait), "widens after {wait} s");
        assert_eq!(b.allowed_inflight(at + secs(0.01)), 2);
        // At the slow watermark it is plenty, and there is nothing more to wait for.
        let later = t0 + secs(7.0);
        assert_eq!(b.state(later), LaneState::Plenty);
        assert_eq!(b.widens_at(later), None);
        // Right after a pause the lane stays at one until a response arrives.
        let mut limited = Observation::empty(t0);
        limited.retry_after = Some(secs(1.0));
        b.on_rate_limited(&limited, t0);
        assert_eq!(b.widens_at(t0 + secs(1.5)), None);
    }
}
