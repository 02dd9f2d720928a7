//! Admission control: the Messages buckets per (credential, model family), the `count_tokens`
//! request bucket per credential, and the rate-limit headers that describe them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};

use crate::bucket::Bucket;
use crate::clock::{reset_epoch_secs, rfc3339};
use crate::config::{MockConfig, OutputMode};

/// Buckets are pooled per credential and per model family, as Anthropic pools them.
pub type Key = (String, String);

/// The family a model's limits are pooled under: `opus`, `sonnet`, `haiku`, or otherwise the
/// whole model name.
pub fn model_family(model: &str) -> String {
    let lower = model.to_ascii_lowercase();
    for family in ["opus", "sonnet", "haiku"] {
        if lower.contains(family) {
            return family.to_string();
        }
    }
    model.to_string()
}

#[derive(Debug)]
struct Family {
    requests: Bucket,
    input: Bucket,
    output: Bucket,
}

/// What a rate-limit header group reports about one bucket.
#[derive(Debug, Clone, Copy)]
pub struct BucketView {
    pub limit: u64,
    pub remaining: u64,
    pub until_full: Duration,
}

impl BucketView {
    fn of(b: &Bucket, round: bool) -> Self {
        let mut remaining = b.remaining();
        if round {
            remaining = (remaining + 500) / 1000 * 1000;
        }
        Self {
            limit: b.limit(),
            remaining,
            until_full: b.until_full(),
        }
    }

    fn write(&self, name: &str, headers: &mut HeaderMap) {
        let reset = rfc3339(reset_epoch_secs(self.until_full));
        for (suffix, value) in [
            ("limit", self.limit.to_string()),
            ("remaining", self.remaining.to_string()),
            ("reset", reset),
        ] {
            let header = format!("anthropic-ratelimit-{name}-{suffix}");
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::try_from(header),
                HeaderValue::try_from(value),
            ) {
                headers.insert(n, v);
            }
        }
    }
}

/// The state of one Messages family, as sent in the response headers.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub requests: BucketView,
    pub input: BucketView,
    pub output: BucketView,
}

impl Snapshot {
    /// All four header groups. `tokens-*` mirrors whichever of input/output has less left
    /// (input on a tie): the "most restrictive limit in effect".
    pub fn write(&self, headers: &mut HeaderMap) {
        self.requests.write("requests", headers);
        self.input.write("input-tokens", headers);
        self.output.write("output-tokens", headers);
        let tightest = if self.output.remaining < self.input.remaining {
            self.output
        } else {
            self.input
        };
        tightest.write("tokens", headers);
    }
}

/// What a Messages call costs at admission.
#[derive(Debug, Clone, Copy)]
pub struct Cost {
    pub input: u64,
    pub max_tokens: u64,
}

/// The outcome of asking for admission.
#[derive(Debug)]
pub enum Admission {
    /// Charged; headers show the state after the charge.
    Admitted(Snapshot),
    /// Not charged. `retry_after` is when enough will have refilled; `None` when the cost
    /// exceeds a bucket's limit so it can never be admitted.
    Limited {
        snapshot: Snapshot,
        retry_after: Option<Duration>,
        what: &'static str,
    },
}

/// All buckets of one server.
#[derive(Debug, Default)]
pub struct Limiter {
    families: HashMap<Key, Family>,
    count_tokens: HashMap<String, Bucket>,
}

impl Limiter {
    fn family(&mut self, key: &Key, cfg: &MockConfig, now: Instant) -> &mut Family {
        let f = self.families.entry(key.clone()).or_insert_with(|| Family {
            requests: Bucket::with_fill(cfg.requests_per_minute, cfg.initial_fill, now),
            input: Bucket::with_fill(cfg.input_tokens_per_minute, cfg.initial_fill, now),
            output: Bucket::with_fill(cfg.output_tokens_per_minute, cfg.initial_fill, now),
        });
        f.requests.set_limit(cfg.requests_per_minute, now);
        f.input.set_limit(cfg.input_tokens_per_minute, now);
        f.output.set_limit(cfg.output_tokens_per_minute, now);
        f
    }

    fn snapshot(f: &Family, cfg: &MockConfig) -> Snapshot {
        Snapshot {
            requests: BucketView::of(&f.requests, false),
            input: BucketView::of(&f.input, cfg.round_remaining),
            output: BucketView::of(&f.output, cfg.round_remaining),
        }
    }

    /// Current state without charging (for injected errors, which consume nothing).
    pub fn peek(&mut self, key: &Key, cfg: &MockConfig, now: Instant) -> Snapshot {
        Self::snapshot(self.family(key, cfg, now), cfg)
    }

    /// Charge a Messages call if every bucket can afford it; otherwise charge nothing.
    pub fn admit(&mut self, key: &Key, cost: Cost, cfg: &MockConfig, now: Instant) -> Admission {
        let f = self.family(key, cfg, now);
        // In Generated mode nothing is reserved; the bucket only has to be out of debt.
        let output_need = match cfg.output_mode {
            OutputMode::Reserve => cost.max_tokens,
            OutputMode::Generated => 1,
        };
        let needs = [
            ("requests", &f.requests, 1),
            ("input tokens", &f.input, cost.input),
            ("output tokens", &f.output, output_need),
        ];
        let short: Vec<(&'static str, Option<Duration>)> = needs
            .into_iter()
            .map(|(what, bucket, need)| (what, bucket.wait_for(need)))
            .filter(|(_, wait)| *wait != Some(Duration::ZERO))
            .collect();
        // A bucket that can never hold the cost wins; otherwise the longest wait.
        let worst = short
            .iter()
            .find(|(_, wait)| wait.is_none())
            .or_else(|| short.iter().max_by_key(|(_, wait)| *wait))
            .map(|&(what, wait)| (wait, what));
        match worst {
            None => {
                f.requests.take(1);
                f.input.take(cost.input);
                if cfg.output_mode == OutputMode::Reserve {
                    f.output.take(cost.max_tokens);
                }
                Admission::Admitted(Self::snapshot(f, cfg))
            }
            Some((retry_after, what)) => Admission::Limited {
                snapshot: Self::snapshot(f, cfg),
                retry_after,
                what,
            },
        }
    }

    /// Settle output at the end of a response: refund the unused reservation, or charge what
    /// was generated.
    pub fn settle(
        &mut self,
        key: &Key,
        mode: OutputMode,
        reserved: u64,
        generated: u64,
        cfg: &MockConfig,
        now: Instant,
    ) {
        let f = self.family(key, cfg, now);
        match mode {
            OutputMode::Reserve => f.output.give(reserved.saturating_sub(generated)),
            OutputMode::Generated => f.output.take(generated),
        }
    }

    /// Charge one `count_tokens` request. `Err` carries the view and the wait.
    pub fn admit_count_tokens(
        &mut self,
        credential: &str,
        cfg: &MockConfig,
        now: Instant,
    ) -> Result<BucketView, (BucketView, Option<Duration>)> {
        let limit = cfg.count_tokens_requests_per_minute;
        let b = self
            .count_tokens
            .entry(credential.to_string())
            .or_insert_with(|| Bucket::new(limit, now));
        b.set_limit(limit, now);
        match b.wait_for(1) {
            Some(d) if d.is_zero() => {
                b.take(1);
                Ok(BucketView::of(b, false))
            }
            wait => Err((BucketView::of(b, false), wait)),
        }
    }
}

/// Write the `count_tokens` bucket as the `requests-*` group (it has no token limits).
pub fn write_count_tokens_headers(view: &BucketView, headers: &mut HeaderMap) {
    view.write("requests", headers);
}

/// `retry-after` value: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tight() -> MockConfig {
        MockConfig {
            requests_per_minute: 60,
            input_tokens_per_minute: 600,
            output_tokens_per_minute: 120,
            ..MockConfig::default()
        }
    }

    #[test]
    fn families() {
        assert_eq!(model_family("claude-opus-4-1-20250805"), "opus");
        assert_eq!(model_family("Claude-Sonnet-4-5"), "sonnet");
        assert_eq!(model_family("claude-3-5-haiku-latest"), "haiku");
        assert_eq!(model_family("mystery-1"), "mystery-1");
    }

    #[test]
    fn admission_is_all_or_nothing_and_reports_the_longest_wait() {
        let cfg = tight();
        let mut l = Limiter::default();
        let key = ("k".to_string(), "opus".to_string());
        let t0 = Instant::now();
        assert!(matches!(
            l.admit(
                &key,
                Cost {
                    input: 500,
                    max_tokens: 100
                },
                &cfg,
                t0
            ),
            Admission::Admitted(_)
        ));
        // input has 100 left (needs 200 more → 20 s at 10/s); output 20 left (needs 80 more
        // → 40 s at 2/s): output is the longer wait.
        match l.admit(
            &key,
            Cost {
                input: 300,
                max_tokens: 100,
            },
            &cfg,
            t0,
        ) {
            Admission::Limited {
                retry_after,
                what,
                snapshot,
            } => {
                assert_eq!(what, "output tokens");
                assert_eq!(retry_after, Some(Duration::from_secs(40)));
                assert_eq!(snapshot.requests.remaining, 59, "a 429 charges nothing");
                assert_eq!(snapshot.input.remaining, 100);
            }
            other => panic!("{other:?}"),
        }
        // Refund 90 of the 100 reserved.
        l.settle(&key, OutputMode::Reserve, 100, 10, &cfg, t0);
        assert_eq!(l.peek(&key, &cfg, t0).output.remaining, 110);
        // Other family, other credential: untouched.
        let other = ("k".to_string(), "haiku".to_string());
        assert_eq!(l.peek(&other, &cfg, t0).input.remaining, 600);
    }

    #[test]
    fn over_the_limit_is_never_admissible() {
        let cfg = tight();
        let mut l = Limiter::default();
        let key = ("k".to_string(), "opus".to_string());
        match l.admit(
            &key,
            Cost {
                input: 601,
                max_tokens: 1,
            },
            &cfg,
            Instant::now(),
        ) {
            Admission::Limited {
                retry_after: None,
                what: "input tokens",
                ..
            } => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn generated_mode_charges_at_the_end() {
        let cfg = MockConfig {
            output_mode: OutputMode::Generated,
            ..tight()
        };
        let mut l = Limiter::default();
        let key = ("k".to_string(), "opus".to_string());
        let t0 = Instant::now();
        assert!(matches!(
            l.admit(&key, Cost { input: 1, max_tokens: 4096 }, &cfg, t0),
            Admission::Admitted(s) if s.output.remaining == 120
        ));
        l.settle(&key, OutputMode::Generated, 0, 150, &cfg, t0);
        match l.admit(
            &key,
            Cost {
                input: 1,
                max_tokens: 1,
            },
            &cfg,
            t0,
        ) {
            // 30 in debt: 31 tokens at 2/s = 15.5 s.
            Admission::Limited {
                retry_after: Some(d),
                ..
            } => {
                assert_eq!(retry_after_secs(d), 16)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn rounding_and_tokens_group() {
        let cfg = MockConfig {
            round_remaining: true,
            ..MockConfig::default()
        };
        let mut l = Limiter::default();
        let key = ("k".to_string(), "x".to_string());
        let t0 = Instant::now();
        let Admission::Admitted(s) = l.admit(
            &key,
            Cost {
                input: 1_501,
                max_tokens: 10,
            },
            &cfg,
            t0,
        ) else {
            panic!()
        };
        assert_eq!(s.input.remaining, 999_998_000);
        let mut h = HeaderMap::new();
        s.write(&mut h);
        assert_eq!(h["anthropic-ratelimit-tokens-limit"], "100000000");
        assert_eq!(h["anthropic-ratelimit-requests-remaining"], "999999");
        assert!(h["anthropic-ratelimit-input-tokens-reset"]
            .to_str()
            .unwrap()
            .ends_with('Z'));
    }
}
