//! A continuously refilling token bucket, plus the per-(credential, family) set of them.
//!
//! The real API refills at `limit / 60` per second rather than once a minute, so a burst can
//! 429 well under the per-minute figure. All methods take `now` explicitly so the refill
//! arithmetic is testable without sleeping.

use std::time::{Duration, Instant};

/// One bucket. The level is fractional (refill is continuous) and may go below zero when
/// tokens are charged after the fact ([`crate::OutputMode::Generated`]).
#[derive(Debug, Clone)]
pub struct Bucket {
    limit: u64,
    level: f64,
    updated: Instant,
}

impl Bucket {
    /// A full bucket holding `limit` per minute.
    pub fn new(limit: u64, now: Instant) -> Self {
        Self {
            limit,
            level: limit as f64,
            updated: now,
        }
    }

    /// A bucket holding `limit` per minute that starts `fill` full (0.0 to 1.0), so tests can
    /// begin under pressure instead of with a minute's worth of burst.
    pub fn with_fill(limit: u64, fill: f64, now: Instant) -> Self {
        Self {
            limit,
            level: limit as f64 * fill.clamp(0.0, 1.0),
            updated: now,
        }
    }

    /// Capacity (per minute).
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Refill rate in units per second.
    pub fn rate(&self) -> f64 {
        self.limit as f64 / 60.0
    }

    /// Current level (after [`Bucket::refill`]); may be negative.
    pub fn level(&self) -> f64 {
        self.level
    }

    /// Whole units available now, never negative.
    pub fn remaining(&self) -> u64 {
        self.level.max(0.0).floor() as u64
    }

    /// Add what has dripped in since the last update, capped at the limit.
    pub fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.updated).as_secs_f64();
        self.level = (self.level + dt * self.rate()).min(self.limit as f64);
        // Never move backwards: a caller holding an older `now` must not re-credit time.
        if now > self.updated {
            self.updated = now;
        }
    }

    /// Follow a config change: refill at the old rate up to `now`, then clamp to the new limit.
    pub fn set_limit(&mut self, limit: u64, now: Instant) {
        self.refill(now);
        if limit != self.limit {
            self.limit = limit;
            self.level = self.level.min(limit as f64);
        }
    }

    /// Remove `amount` (may go negative).
    pub fn take(&mut self, amount: u64) {
        self.level -= amount as f64;
    }

    /// Give back `amount`, capped at the limit.
    pub fn give(&mut self, amount: u64) {
        self.level = (self.level + amount as f64).min(self.limit as f64);
    }

    /// How long until the level reaches `amount`; `None` if it never will (over the limit,
    /// or a zero limit).
    pub fn wait_for(&self, amount: u64) -> Option<Duration> {
        let need = amount as f64 - self.level;
        if need <= 0.0 {
            return Some(Duration::ZERO);
        }
        if amount > self.limit || self.limit == 0 {
            return None;
        }
        Some(Duration::from_secs_f64(need / self.rate()))
    }

    /// How long until the bucket is full: what the `-reset` headers report.
    pub fn until_full(&self) -> Duration {
        let need = self.limit as f64 - self.level;
        if need <= 0.0 || self.limit == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(need / self.rate())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn starts_full_and_refills_continuously() {
        let t0 = Instant::now();
        let mut b = Bucket::new(60, t0); // one per second
        assert_eq!(b.remaining(), 60);
        b.take(60);
        assert_eq!(b.remaining(), 0);
        b.refill(t0 + secs(0.5));
        assert_eq!(b.remaining(), 0);
        b.refill(t0 + secs(10.0));
        assert_eq!(b.remaining(), 10);
        b.refill(t0 + secs(1000.0));
        assert_eq!(b.remaining(), 60, "capped at the limit");
    }

    #[test]
    fn waits_and_reset() {
        let t0 = Instant::now();
        let mut b = Bucket::new(6000, t0); // 100 per second
        b.take(6000);
        assert_eq!(b.wait_for(250), Some(secs(2.5)));
        assert_eq!(b.until_full(), secs(60.0));
        b.refill(t0 + secs(30.0));
        assert_eq!(b.remaining(), 3000);
        assert_eq!(b.until_full(), secs(30.0));
        assert_eq!(b.wait_for(2000), Some(Duration::ZERO));
        assert_eq!(
            b.wait_for(6001),
            None,
            "more than the limit is never admissible"
        );
    }

    #[test]
    fn debt_and_refund() {
        let t0 = Instant::now();
        let mut b = Bucket::new(120, t0); // 2 per second
        b.take(200);
        assert_eq!(b.level(), -80.0);
        assert_eq!(b.remaining(), 0);
        assert_eq!(b.wait_for(1), Some(secs(40.5)));
        b.give(1000);
        assert_eq!(b.level(), 120.0, "refund capped at the limit");
    }

    #[test]
    fn limit_changes_clamp_and_time_does_not_go_back() {
        let t0 = Instant::now();
        let mut b = Bucket::new(600, t0);
        b.set_limit(60, t0 + secs(1.0));
        assert_eq!(b.remaining(), 60);
        b.take(60);
        b.refill(t0 + secs(11.0));
        assert_eq!(b.remaining(), 10);
        b.refill(t0); // stale `now`
        b.refill(t0 + secs(12.0));
        assert_eq!(b.remaining(), 11);
    }
}
