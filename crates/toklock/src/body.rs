//! A response body that holds its scheduler slot until the body ends or is dropped, so a
//! streaming generation counts against the in-flight limit for as long as it runs (the
//! original released the slot when the headers arrived).
//!
//! When the scheduling policy charges real usage (`--schedule token-fair`), the body also
//! reads the usage the upstream reports as frames pass ([`UsageScanner`]) and charges it
//! through the slot as soon as it is known: a stream's input when it opens, its output as
//! `message_delta`s arrive, a JSON message's usage when its `usage` object has passed. Frames
//! are handed on as they are, never held back or copied. Whatever was reported before the
//! client went away stays charged.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::queue::Slot;
use crate::usage::UsageScanner;

pub struct HeldBody<B = Incoming> {
    inner: B,
    slot: Option<Slot>,
    usage: UsageScanner,
    /// Weighted tokens already charged through the slot.
    charged: u64,
}

impl<B> HeldBody<B> {
    /// Holds `slot` until `inner` ends. `usage` reads the body's usage for the fairness
    /// policy; pass [`UsageScanner::for_response`] (it is switched off when the policy does
    /// not charge usage).
    pub fn new(inner: B, slot: Slot, usage: UsageScanner) -> HeldBody<B> {
        let usage = if slot.charges_usage() {
            usage
        } else {
            UsageScanner::off()
        };
        HeldBody {
            inner,
            slot: Some(slot),
            usage,
            charged: 0,
        }
    }

    /// Reads one data frame and charges whatever usage it newly reported.
    fn scan(&mut self, data: &[u8]) {
        if !self.usage.feed(data) {
            return;
        }
        let cost = self.usage.usage().cost();
        if cost > self.charged {
            if let Some(slot) = &self.slot {
                slot.charge(cost - self.charged);
            }
            self.charged = cost;
        }
    }
}

impl<B> Body for HeldBody<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if this.usage.is_scanning() {
                if let Some(data) = frame.data_ref() {
                    this.scan(data);
                }
            }
        }
        match &polled {
            // The body is over (or broken): free the slot now rather than when hyper gets
            // round to dropping us.
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.slot = None,
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.slot = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use futures_util::stream;
    use http_body_util::{BodyExt, StreamBody};

    use super::*;
    use crate::agent::AgentKey;
    use crate::credential::Fingerprint;
    use crate::queue::Queue;
    use crate::scheduler::{BudgetKey, PolicyKind, Scheduler, SchedulerConfig};

    const START: &str = concat!(
        "event: message_start\n",
        "data: {\"type\":\"message_start\",\"message\":{\"usage\":",
        "{\"input_tokens\":100,\"output_tokens\":1}}}\n\n",
    );
    const REST: &str = concat!(
        "event: content_block_delta\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,",
        "\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
        "event: message_delta\n",
        "data: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":30}}\n\n",
        "event: message_stop\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );

    type Chunks = StreamBody<stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>;

    /// The stream cut into `size`-byte frames.
    fn frames(text: &str, size: usize) -> Chunks {
        let frames: Vec<_> = text
            .as_bytes()
            .chunks(size)
            .map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk))))
            .collect();
        StreamBody::new(stream::iter(frames))
    }

    fn queue(policy: PolicyKind) -> Queue {
        Queue::with_scheduler(Scheduler::new(SchedulerConfig {
            policy,
            probe_new_lanes: false,
            ..SchedulerConfig::default()
        }))
    }

    fn key() -> BudgetKey {
        BudgetKey::new(Fingerprint::of_bytes(b"sk-test"), "claude-opus-4-1")
    }

    fn counter(q: &Queue, name: &str) -> Option<u64> {
        q.snapshot()
            .lanes
            .first()
            .and_then(|lane| lane.fair_share_tokens.get(name).copied())
    }

    #[tokio::test]
    async fn frames_pass_unchanged_and_the_usage_is_charged() {
        let q = queue(PolicyKind::TokenFair);
        // Another request in flight keeps the lane (and its counters) alive.
        let _keeper = q
            .admit(AgentKey::new("k"), key(), 1)
            .unwrap()
            .await
            .unwrap();
        let whole = format!("{START}{REST}");
        for size in [1, 7, 4096] {
            let slot = q
                .admit(AgentKey::new("a"), key(), 1)
                .unwrap()
                .await
                .unwrap();
            let body = HeldBody::new(frames(&whole, size), slot, UsageScanner::sse());
            let before = counter(&q, "a").unwrap_or(0);
            let bytes = body.collect().await.unwrap().to_bytes();
            assert_eq!(bytes, whole.as_bytes());
            // 100 input + 2 x 30 output; the slot is free again.
            assert_eq!(counter(&q, "a"), Some(before + 160), "frames of {size}");
            assert_eq!(q.snapshot().in_flight, 1);
        }
    }

    #[tokio::test]
    async fn a_client_that_leaves_early_is_charged_what_was_reported() {
        let q = queue(PolicyKind::TokenFair);
        let _keeper = q
            .admit(AgentKey::new("k"), key(), 1)
            .unwrap()
            .await
            .unwrap();
        let slot = q
            .admit(AgentKey::new("a"), key(), 1)
            .unwrap()
            .await
            .unwrap();
        let mut body = HeldBody::new(
            frames(&format!("{START}{REST}"), START.len()),
            slot,
            UsageScanner::sse(),
        );
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, START.as_bytes());
        // The input (and the first output token) is charged as soon as the stream opens,
        // while the slot is still held.
        assert_eq!(counter(&q, "a"), Some(100 + 2));
        assert_eq!(q.snapshot().in_flight, 2);
        drop(body);
        assert_eq!(q.snapshot().in_flight, 1);
        assert_eq!(counter(&q, "a"), Some(102));
    }

    #[tokio::test]
    async fn round_robin_does_not_scan() {
        let q = queue(PolicyKind::RoundRobin);
        let slot = q
            .admit(AgentKey::new("a"), key(), 1)
            .unwrap()
            .await
            .unwrap();
        assert!(!slot.charges_usage());
        let body = HeldBody::new(frames(START, 5), slot, UsageScanner::sse());
        assert!(!body.usage.is_scanning());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, START.as_bytes());
    }
}
