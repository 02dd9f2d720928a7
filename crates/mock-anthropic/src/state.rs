//! State shared by the accept loop, the handlers and the response bodies.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::config::MockConfig;
use crate::limits::Limiter;
use crate::records::RecordLog;

/// Everything a request can touch. Each field has its own lock, always taken one at a time
/// and never across an `.await`, so no ordering rules are needed.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub config: Mutex<MockConfig>,
    pub limiter: Mutex<Limiter>,
    pub log: Mutex<RecordLog>,
    pub active: AtomicUsize,
    pub peak: AtomicUsize,
}

impl Shared {
    pub fn new(config: MockConfig) -> Self {
        Self {
            config: Mutex::new(config),
            ..Self::default()
        }
    }

    /// A copy of the config for one request, so a concurrent update is seen whole or not at all.
    pub fn config(&self) -> MockConfig {
        lock(&self.config).clone()
    }

    /// Count a response as in flight (until its body ends) and track the peak.
    pub fn enter(&self) {
        let now = self.active.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
    }

    pub fn leave(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
    }

    /// Consume one unit of a count-down injection if any is left.
    pub fn take_injection(&self, pick: impl FnOnce(&mut MockConfig) -> &mut u64) -> bool {
        let mut cfg = lock(&self.config);
        let n = pick(&mut cfg);
        if *n > 0 {
            *n -= 1;
            true
        } else {
            false
        }
    }
}

/// Lock, ignoring poisoning: a panicking test thread must not wedge the mock for the others.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
