//! Counters for `GET /toklock/metrics`, in the Prometheus text format. Labels are bounded:
//! lanes are keyed by credential fingerprint and model family, never by agent (agents come
//! and go without limit).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::scheduler::Snapshot;

/// Upper bounds (seconds) of the queue-wait histogram buckets.
const WAIT_BUCKETS: [f64; 11] = [0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0, 60.0, 300.0];

/// Why toklock itself refused or gave up on a request.
#[derive(Clone, Copy, Debug)]
pub enum Rejection {
    QueueFull,
    MaxWait,
    TooLarge,
    Upstream,
}

#[derive(Default)]
pub struct Metrics {
    scheduled: AtomicU64,
    passthrough: AtomicU64,
    requeued_429: AtomicU64,
    passed_429: AtomicU64,
    overload_retries: AtomicU64,
    rejected: [AtomicU64; 4],
    wait_buckets: [AtomicU64; WAIT_BUCKETS.len()],
    wait_count: AtomicU64,
    wait_sum_micros: AtomicU64,
}

impl Metrics {
    pub fn scheduled(&self) {
        self.scheduled.fetch_add(1, Ordering::Relaxed);
    }

    pub fn passthrough(&self) {
        self.passthrough.fetch_add(1, Ordering::Relaxed);
    }

    /// An upstream 429 that went back to the front of its queue.
    pub fn requeued_429(&self) {
        self.requeued_429.fetch_add(1, Ordering::Relaxed);
    }

    /// An upstream 429 that had to reach the caller (spend limit, do-not-retry, subscription).
    pub fn passed_429(&self) {
        self.passed_429.fetch_add(1, Ordering::Relaxed);
    }

    pub fn overload_retry(&self) {
        self.overload_retries.fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Records the total queue wait of a request that went upstream.
    pub fn waited(&self, wait: Duration) {
        let secs = wait.as_secs_f64();
        if let Some(i) = WAIT_BUCKETS.iter().position(|&bound| secs <= bound) {
            self.wait_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.wait_count.fetch_add(1, Ordering::Relaxed);
        self.wait_sum_micros.fetch_add(
            wait.as_micros().min(u64::MAX as u128) as u64,
            Ordering::Relaxed,
        );
    }

    /// The whole exposition: counters plus gauges from a queue snapshot.
    pub fn render(&self, queue: &Snapshot) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut text = String::with_capacity(4096);
        head(
            &mut text,
            "toklock_requests_total",
            "counter",
            "Requests proxied, by whether they went through the fair queue.",
        );
        let _ = writeln!(
            text,
            "toklock_requests_total{{kind=\"scheduled\"}} {}",
            get(&self.scheduled)
        );
        let _ = writeln!(
            text,
            "toklock_requests_total{{kind=\"passthrough\"}} {}",
            get(&self.passthrough)
        );
        head(
            &mut text,
            "toklock_upstream_rate_limited_total",
            "counter",
            "Upstream 429s, by what toklock did with them.",
        );
        let _ = writeln!(
            text,
            "toklock_upstream_rate_limited_total{{action=\"requeued\"}} {}",
            get(&self.requeued_429)
        );
        let _ = writeln!(
            text,
            "toklock_upstream_rate_limited_total{{action=\"passed_to_caller\"}} {}",
            get(&self.passed_429)
        );
        head(
            &mut text,
            "toklock_overload_retries_total",
            "counter",
            "Upstream 529/503 answers retried after a backoff.",
        );
        let _ = writeln!(
            text,
            "toklock_overload_retries_total {}",
            get(&self.overload_retries)
        );
        head(
            &mut text,
            "toklock_rejected_total",
            "counter",
            "Requests toklock answered with its own error.",
        );
        for (i, reason) in [
            "queue_full",
            "max_wait",
            "too_large",
            "upstream_unreachable",
        ]
        .iter()
        .enumerate()
        {
            let _ = writeln!(
                text,
                "toklock_rejected_total{{reason=\"{reason}\"}} {}",
                get(&self.rejected[i])
            );
        }
        head(
            &mut text,
            "toklock_queue_wait_seconds",
            "histogram",
            "Time scheduled requests waited in toklock's queues.",
        );
        let mut cumulative = 0;
        for (bound, count) in WAIT_BUCKETS.iter().zip(&self.wait_buckets) {
            cumulative += get(count);
            let _ = writeln!(
                text,
                "toklock_queue_wait_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = get(&self.wait_count);
        let _ = writeln!(
            text,
            "toklock_queue_wait_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            text,
            "toklock_queue_wait_seconds_sum {}",
            get(&self.wait_sum_micros) as f64 / 1e6
        );
        let _ = writeln!(text, "toklock_queue_wait_seconds_count {count}");

        head(
            &mut text,
            "toklock_queued_requests",
            "gauge",
            "Requests waiting in queues.",
        );
        let _ = writeln!(text, "toklock_queued_requests {}", queue.queued);
        head(
            &mut text,
            "toklock_in_flight_requests",
            "gauge",
            "Scheduled requests upstream now, streams included.",
        );
        let _ = writeln!(text, "toklock_in_flight_requests {}", queue.in_flight);
        head(
            &mut text,
            "toklock_held_body_bytes",
            "gauge",
            "Request body bytes held (queued or in flight).",
        );
        let _ = writeln!(text, "toklock_held_body_bytes {}", queue.held_bytes);
        head(
            &mut text,
            "toklock_lane_allowed_in_flight",
            "gauge",
            "How many requests a budget lane may have upstream now (0 = paused).",
        );
        for lane in &queue.lanes {
            let _ = writeln!(
                text,
                "toklock_lane_allowed_in_flight{{credential=\"{}\",family=\"{}\"}} {}",
                lane.credential,
                escape(&lane.family),
                lane.allowed_in_flight
            );
        }
        text
    }
}

/// The `# HELP` and `# TYPE` lines of one metric family.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Escapes a label value (model names come from request bodies).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
