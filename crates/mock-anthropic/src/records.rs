//! What the mock saw, for assertions: one [`Record`] per request served, plus running
//! tallies (the JSON summary served at `GET /_mock/stats`).
//!
//! Tallies are kept incrementally rather than derived from the records, so they stay right
//! after [`crate::MockConfig::max_records`] stops the record list from growing during a long
//! benchmark.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, Method};
use serde::Serialize;

use crate::config::OutputMode;
use crate::limits::Key;
use crate::state::{lock, Shared};

/// One request as the mock served it.
#[derive(Debug, Clone)]
pub struct Record {
    pub method: Method,
    /// Path and query, e.g. `/v1/messages?beta=true`.
    pub path: String,
    /// Every request header as received, so tests can check header hygiene.
    pub headers: HeaderMap,
    /// `x-api-key`, or the token of `authorization: Bearer`. Kept raw: test keys only.
    pub credential: Option<String>,
    /// `x-mock-caller`, else `x-toklock-agent`.
    pub caller: Option<String>,
    pub model: Option<String>,
    pub stream: bool,
    /// Status answered; 499 if the client went away before the response headers.
    pub status: u16,
    /// Input tokens charged (0 unless admitted).
    pub input_tokens: u64,
    /// Output tokens generated and charged (final once `end` is set).
    pub output_tokens: u64,
    pub start: Instant,
    /// When the body finished or was dropped by the client; `None` while in flight.
    pub end: Option<Instant>,
}

/// Per-caller or per-credential totals in `GET /_mock/stats`.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct Tally {
    pub requests: u64,
    pub input_tokens: u64,
    /// Added when each response ends.
    pub output_tokens: u64,
    pub rate_limited: u64,
    pub overloaded: u64,
}

/// The JSON body of `GET /_mock/stats`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub total: Tally,
    pub active: usize,
    pub peak_concurrency: usize,
    /// Requests counted in the tallies but not kept as records (over `max_records`).
    pub records_not_kept: u64,
    /// Keyed by caller tag; untagged requests under `"(none)"`.
    pub by_caller: BTreeMap<String, Tally>,
    /// Keyed by credential; requests without one under `"(none)"`.
    pub by_credential: BTreeMap<String, Tally>,
}

const NONE: &str = "(none)";

/// Where a published request lives: the log generation and its index, if it was kept.
type Slot = (u64, Option<usize>);

/// The log behind [`crate::MockServer::records`]. `epoch` changes on reset so a response
/// still in flight cannot write into the new generation.
#[derive(Debug, Default)]
pub(crate) struct RecordLog {
    epoch: u64,
    records: Vec<Record>,
    stats: Stats,
}

impl RecordLog {
    pub fn records(&self) -> Vec<Record> {
        self.records.clone()
    }

    pub fn stats(&self) -> Stats {
        self.stats.clone()
    }

    pub fn reset(&mut self) {
        self.epoch += 1;
        self.records = Vec::new();
        self.stats = Stats::default();
    }

    fn tallies<'a>(
        stats: &'a mut Stats,
        caller: &Option<String>,
        credential: &Option<String>,
    ) -> [&'a mut Tally; 3] {
        let key = |k: &Option<String>| k.clone().unwrap_or_else(|| NONE.to_string());
        [
            &mut stats.total,
            stats.by_caller.entry(key(caller)).or_default(),
            stats.by_credential.entry(key(credential)).or_default(),
        ]
    }

    fn push(&mut self, r: Record, max_records: usize) -> Slot {
        for t in Self::tallies(&mut self.stats, &r.caller, &r.credential) {
            t.requests += 1;
            t.input_tokens += r.input_tokens;
            t.rate_limited += u64::from(r.status == 429);
            t.overloaded += u64::from(r.status == 529);
        }
        if self.records.len() < max_records {
            self.records.push(r);
            (self.epoch, Some(self.records.len() - 1))
        } else {
            self.stats.records_not_kept += 1;
            (self.epoch, None)
        }
    }

    fn finish(&mut self, slot: Slot, who: &Who, end: Instant, output_tokens: u64) {
        if slot.0 != self.epoch {
            return;
        }
        for t in Self::tallies(&mut self.stats, &who.caller, &who.credential) {
            t.output_tokens += output_tokens;
        }
        if let Some(r) = slot.1.and_then(|i| self.records.get_mut(i)) {
            r.end = Some(end);
            r.output_tokens = output_tokens;
        }
    }
}

/// Output to settle when a response ends.
#[derive(Debug)]
pub(crate) struct Settle {
    pub key: Key,
    pub mode: OutputMode,
    pub reserved: u64,
}

/// The tally keys of a request, kept by the guard since its record may not be.
#[derive(Debug)]
struct Who {
    caller: Option<String>,
    credential: Option<String>,
}

/// Lives from request arrival until the response body ends or is dropped. Dropping it is
/// what settles output tokens, stamps the record's end and ends the "active" count, so a
/// client that disconnects mid-stream is accounted for with no extra code path.
#[derive(Debug)]
pub(crate) struct Finish {
    shared: Arc<Shared>,
    draft: Option<Box<Record>>,
    who: Who,
    slot: Option<Slot>,
    pub settle: Option<Settle>,
    /// Output tokens generated so far (streams bump it per delta).
    pub generated: u64,
}

impl Finish {
    pub fn begin(shared: Arc<Shared>, draft: Record) -> Self {
        shared.enter();
        let who = Who {
            caller: draft.caller.clone(),
            credential: draft.credential.clone(),
        };
        Self {
            shared,
            draft: Some(Box::new(draft)),
            who,
            slot: None,
            settle: None,
            generated: 0,
        }
    }

    /// The record being built; `None` once published.
    pub fn draft(&mut self) -> Option<&mut Record> {
        self.draft.as_deref_mut()
    }

    /// The response status is known: make the record visible.
    pub fn publish(&mut self, status: u16) {
        if let Some(mut r) = self.draft.take() {
            r.status = status;
            r.output_tokens = self.generated;
            let max = lock(&self.shared.config).max_records;
            self.slot = Some(lock(&self.shared.log).push(*r, max));
        }
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        let end = Instant::now();
        if let Some(s) = self.settle.take() {
            let cfg = self.shared.config();
            lock(&self.shared.limiter).settle(
                &s.key,
                s.mode,
                s.reserved,
                self.generated,
                &cfg,
                end,
            );
        }
        if self.draft.is_some() {
            // The client left before the response headers.
            self.publish(499);
        }
        if let Some(slot) = self.slot {
            lock(&self.shared.log).finish(slot, &self.who, end, self.generated);
        }
        self.shared.leave();
    }
}

pub(crate) fn stats(shared: &Shared) -> Stats {
    let mut s = lock(&shared.log).stats();
    s.active = shared.active.load(Ordering::SeqCst);
    s.peak_concurrency = shared.peak.load(Ordering::SeqCst);
    s
}
