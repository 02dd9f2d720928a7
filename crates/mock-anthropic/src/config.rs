//! Runtime configuration of the mock upstream.
//!
//! Everything here can be changed while the server runs ([`crate::MockServer::update`] or
//! `POST /_mock/config`), so a test can flip an injection on, send a request, and flip it off.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How output tokens are charged against the output-tokens bucket.
///
/// Anthropic historically reserved `max_tokens` at admission and corrected at the end; since
/// early 2026 it documents charging tokens as they are generated. toklock must cope with both,
/// so the mock offers both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputMode {
    /// Admission needs `max_tokens` in the output bucket; it is taken up front and the unused
    /// part is given back when the response ends.
    Reserve,
    /// Admission needs the output bucket not to be in debt (at least 1 token); the generated
    /// tokens are taken when the response ends, which may push the bucket below zero.
    Generated,
}

/// Knobs of the mock. `Default` is generous: nothing gets limited in a short test or
/// benchmark, responses are instant and short.
///
/// Serialized field names are the JSON keys accepted by `POST /_mock/config`; durations are
/// whole milliseconds there (`first_byte_latency_ms`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MockConfig {
    /// Messages requests per minute, per credential and model family.
    pub requests_per_minute: u64,
    /// Input tokens per minute, per credential and model family.
    pub input_tokens_per_minute: u64,
    /// Output tokens per minute, per credential and model family.
    pub output_tokens_per_minute: u64,
    /// `count_tokens` requests per minute, per credential (a bucket of its own, like the
    /// real API, so it never drains the Messages buckets).
    pub count_tokens_requests_per_minute: u64,
    /// How full a new (credential, family) set of Messages buckets starts: 1.0 = full (the
    /// real API's state for an idle key), 0.0 = empty, so a test is under pressure at once.
    pub initial_fill: f64,
    /// How output tokens are charged.
    pub output_mode: OutputMode,
    /// Round the token `-remaining` headers to the nearest 1,000 like the real API.
    ///
    /// Off by default: tests of toklock under tight limits (a few hundred tokens a minute)
    /// would otherwise only ever see `0` or `1000`. Turn it on to check that toklock copes
    /// with the real API's coarse figures. Request counts are never rounded.
    pub round_remaining: bool,
    /// Delay before the response headers (time to first byte), for every Messages call.
    #[serde(rename = "first_byte_latency_ms", with = "millis")]
    pub first_byte_latency: Duration,
    /// Generation speed. Streams emit one `text_delta` per token at this pace; non-streaming
    /// responses wait `output_tokens / tokens_per_sec` before answering. `0` = instant.
    pub tokens_per_sec: f64,
    /// Output length when the request does not say (`x-mock-output-tokens`); capped by the
    /// request's `max_tokens`.
    pub default_output_tokens: u64,
    /// Gzip JSON bodies when the client sends `accept-encoding: gzip`. SSE is never gzipped.
    /// Off by default: it costs the mock CPU in benchmarks and hides bodies from raw tests.
    pub gzip: bool,
    /// Put `retry-after` (whole seconds) on rate-limit 429s. Spend-limit 429s never carry it.
    pub retry_after: bool,
    /// Answer the next N Messages calls with `529 overloaded_error`; counts down to 0.
    pub fail_next_overloaded: u64,
    /// Make the next N streaming Messages calls fail midway with an in-stream
    /// `event: error` (overloaded_error) after half of their tokens; counts down to 0.
    pub fail_next_streams_midway: u64,
    /// Answer every Messages call with the spend-cap 429
    /// (`error.details.error_code = enforced_spend_limit_reached`, no `retry-after`).
    pub spend_limit_reached: bool,
    /// Subscription (OAuth) mode: every Messages response carries
    /// `anthropic-ratelimit-unified-status` (`allowed`, or `rejected` on 429s) and
    /// `anthropic-ratelimit-unified-reset` (Unix epoch seconds).
    pub subscription: bool,
    /// In subscription mode, answer every Messages call with a `rejected` 429 whose
    /// unified reset is `subscription_reset` away (a 5-hour window by default).
    pub subscription_rejected: bool,
    /// How far away the unified reset of an injected subscription rejection is.
    #[serde(rename = "subscription_reset_ms", with = "millis")]
    pub subscription_reset: Duration,
    /// Keep at most this many [`crate::Record`]s (each holds a copy of the request headers);
    /// later requests still count in the stats. Bounds memory in long benchmarks.
    pub max_records: usize,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            requests_per_minute: 1_000_000,
            input_tokens_per_minute: 1_000_000_000,
            output_tokens_per_minute: 100_000_000,
            count_tokens_requests_per_minute: 1_000_000,
            initial_fill: 1.0,
            output_mode: OutputMode::Reserve,
            round_remaining: false,
            first_byte_latency: Duration::ZERO,
            tokens_per_sec: 0.0,
            default_output_tokens: 16,
            gzip: false,
            retry_after: true,
            fail_next_overloaded: 0,
            fail_next_streams_midway: 0,
            spend_limit_reached: false,
            subscription: false,
            subscription_rejected: false,
            subscription_reset: Duration::from_secs(5 * 3600),
            max_records: 100_000,
        }
    }
}

impl MockConfig {
    /// Time to generate `tokens` at `tokens_per_sec` (zero when unpaced).
    pub fn generation_time(&self, tokens: u64) -> Duration {
        match self.token_interval() {
            Some(_) => Duration::from_secs_f64(tokens as f64 / self.tokens_per_sec),
            None => Duration::ZERO,
        }
    }

    /// Time per token, `None` when generation is instant.
    pub fn token_interval(&self) -> Option<Duration> {
        if self.tokens_per_sec.is_finite() && self.tokens_per_sec > 0.0 {
            Some(Duration::from_secs_f64(1.0 / self.tokens_per_sec))
        } else {
            None
        }
    }

    /// Apply a partial JSON object (as sent to `POST /_mock/config`) on top of `self`.
    pub fn merged(&self, patch: &serde_json::Value) -> Result<MockConfig, String> {
        let mut current = serde_json::to_value(self).map_err(|e| e.to_string())?;
        let (Some(cur), Some(patch)) = (current.as_object_mut(), patch.as_object()) else {
            return Err("config patch must be a JSON object".into());
        };
        for (k, v) in patch {
            cur.insert(k.clone(), v.clone());
        }
        serde_json::from_value(current).map_err(|e| e.to_string())
    }
}

/// Durations as whole milliseconds in JSON, which is what shell users type.
mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_merges_and_rejects_typos() {
        let cfg = MockConfig::default();
        let patched = cfg
            .merged(&serde_json::json!({"fail_next_overloaded": 2, "first_byte_latency_ms": 50}))
            .unwrap();
        assert_eq!(patched.fail_next_overloaded, 2);
        assert_eq!(patched.first_byte_latency, Duration::from_millis(50));
        assert_eq!(patched.requests_per_minute, cfg.requests_per_minute);
        assert!(cfg
            .merged(&serde_json::json!({"fail_next_overload": 2}))
            .is_err());
        assert!(cfg.merged(&serde_json::json!([1])).is_err());
    }

    #[test]
    fn generation_time_follows_speed() {
        let cfg = MockConfig {
            tokens_per_sec: 100.0,
            ..MockConfig::default()
        };
        assert_eq!(cfg.generation_time(50), Duration::from_millis(500));
        assert_eq!(MockConfig::default().generation_time(50), Duration::ZERO);
    }
}
