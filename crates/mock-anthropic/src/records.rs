//! What the mock saw, for assertions: one [`Record`] per request served, plus counters and
//! the JSON summary served at `GET /_mock/stats`.

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

/// The log behind [`crate::MockServer::records`]. `epoch` changes on reset so a response
/// still in flight cannot write into a record of the new generation.
#[derive(Debug, Default)]
pub(crate) struct RecordLog {
    epoch: u64,
    records: Vec<Record>,
    rate_limited: u64,
    overloaded: u64,
}

impl RecordLog {
    pub fn records(&self) -> Vec<Record> {
        self.records.clone()
    }

    pub fn rate_limited(&self) -> u64 {
        self.rate_limited
    }

    pub fn overloaded(&self) -> u64 {
        self.overloaded
    }

    pub fn reset(&mut self) {
        self.epoch += 1;
        self.records.clear();
        self.rate_limited = 0;
        self.overloaded = 0;
    }

    fn push(&mut self, r: Record) -> (u64, usize) {
        match r.status {
            429 => self.rate_limited += 1,
            529 => self.overloaded += 1,
            _ => {}
        }
        self.records.push(r);
        (self.epoch, self.records.len() - 1)
    }

    fn finish(&mut self, slot: (u64, usize), end: Instant, output_tokens: u64) {
        if slot.0 != self.epoch {
            return;
        }
        if let Some(r) = self.records.get_mut(slot.1) {
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

/// Lives from request arrival until the response body ends or is dropped. Dropping it is
/// what settles output tokens, stamps the record's end and ends the "active" count, so a
/// client that disconnects mid-stream is accounted for with no extra code path.
#[derive(Debug)]
pub(crate) struct Finish {
    shared: Arc<Shared>,
    draft: Option<Record>,
    slot: Option<(u64, usize)>,
    pub settle: Option<Settle>,
    /// Output tokens generated so far (streams bump it per delta).
    pub generated: u64,
}

impl Finish {
    pub fn begin(shared: Arc<Shared>, draft: Record) -> Self {
        shared.enter();
        Self {
            shared,
            draft: Some(draft),
            slot: None,
            settle: None,
            generated: 0,
        }
    }

    /// The record being built; `None` once published.
    pub fn draft(&mut self) -> Option<&mut Record> {
        self.draft.as_mut()
    }

    /// The response status is known: make the record visible.
    pub fn publish(&mut self, status: u16) {
        if let Some(mut r) = self.draft.take() {
            r.status = status;
            r.output_tokens = self.generated;
            self.slot = Some(lock(&self.shared.log).push(r));
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
        {
            let mut log = lock(&self.shared.log);
            if let Some(mut r) = self.draft.take() {
                r.status = 499;
                r.end = Some(end);
                r.output_tokens = self.generated;
                log.push(r);
            } else if let Some(slot) = self.slot {
                log.finish(slot, end, self.generated);
            }
        }
        self.shared.leave();
    }
}

/// Per-caller or per-credential totals in `GET /_mock/stats`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Tally {
    pub requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub rate_limited: u64,
    pub overloaded: u64,
}

impl Tally {
    fn add(&mut self, r: &Record) {
        self.requests += 1;
        self.input_tokens += r.input_tokens;
        self.output_tokens += r.output_tokens;
        self.rate_limited += u64::from(r.status == 429);
        self.overloaded += u64::from(r.status == 529);
    }
}

/// The JSON body of `GET /_mock/stats`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Stats {
    pub total: Tally,
    pub active: usize,
    pub peak_concurrency: usize,
    /// Keyed by caller tag; untagged requests under `"(none)"`.
    pub by_caller: BTreeMap<String, Tally>,
    /// Keyed by credential; requests without one under `"(none)"`.
    pub by_credential: BTreeMap<String, Tally>,
}

pub(crate) fn stats(shared: &Shared) -> Stats {
    let mut s = Stats {
        active: shared.active.load(Ordering::SeqCst),
        peak_concurrency: shared.peak.load(Ordering::SeqCst),
        ..Stats::default()
    };
    let none = || "(none)".to_string();
    for r in lock(&shared.log).records.iter() {
        s.total.add(r);
        s.by_caller
            .entry(r.caller.clone().unwrap_or_else(none))
            .or_default()
            .add(r);
        s.by_credential
            .entry(r.credential.clone().unwrap_or_else(none))
            .or_default()
            .add(r);
    }
    s
}
