//! A streaming Messages response as a body that paces itself.
//!
//! The stream is a state machine polled by hyper, not a spawned task: when the client goes
//! away hyper drops the body, and with it the timer, so nothing can leak or keep running.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value};
use tokio::time::{Instant, Sleep};

use crate::message::{token_text, Plan};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    MessageStart,
    BlockStart,
    Ping,
    Delta(u64),
    BlockStop,
    MessageDelta,
    MessageStop,
    Done,
}

/// The event sequence `message_start → content_block_start → ping → content_block_delta × N
/// → content_block_stop → message_delta → message_stop`, one body frame per event.
#[derive(Debug)]
pub(crate) struct SseStream {
    plan: Plan,
    phase: Phase,
    origin: Instant,
    /// Per-token interval; `None` = as fast as the client reads.
    interval: Option<Duration>,
    sleep: Option<(Instant, Pin<Box<Sleep>>)>,
    /// Emit an in-stream overloaded error in place of delta number `n`.
    fail_at: Option<u64>,
}

/// Encode one server-sent event.
pub(crate) fn event(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

impl SseStream {
    pub fn new(plan: Plan, interval: Option<Duration>, fail_midway: bool) -> Self {
        let fail_at = fail_midway.then_some(plan.output_tokens / 2);
        Self {
            plan,
            phase: Phase::MessageStart,
            origin: Instant::now(),
            interval,
            sleep: None,
            fail_at,
        }
    }

    /// When delta `i` is due: token `i` is generated `(i + 1) / speed` after the start, so a
    /// stream of N tokens takes as long as a non-streaming response of N tokens.
    fn due(&self, i: u64) -> Option<Instant> {
        self.interval
            .map(|iv| self.origin + Duration::from_secs_f64(iv.as_secs_f64() * (i + 1) as f64))
    }

    /// Next event, or `None` at the end. `generated` counts deltas sent, for settlement.
    pub fn poll_next(&mut self, cx: &mut Context<'_>, generated: &mut u64) -> Poll<Option<Bytes>> {
        let p = &self.plan;
        let out = match self.phase {
            Phase::MessageStart => {
                self.phase = Phase::BlockStart;
                let mut message = json!({
                    "id": p.id, "type": "message", "role": "assistant", "model": p.model,
                    "content": [], "stop_reason": null, "stop_sequence": null,
                });
                message["usage"] = p.usage(1);
                event(
                    "message_start",
                    &json!({"type": "message_start", "message": message}),
                )
            }
            Phase::BlockStart => {
                self.phase = Phase::Ping;
                event(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": 0,
                            "content_block": {"type": "text", "text": ""}}),
                )
            }
            Phase::Ping => {
                self.phase = Phase::Delta(0);
                event("ping", &json!({"type": "ping"}))
            }
            Phase::Delta(i) if i >= p.output_tokens => {
                self.phase = Phase::BlockStop;
                return self.poll_next(cx, generated);
            }
            Phase::Delta(i) => {
                if let Some(due) = self.due(i) {
                    if Instant::now() < due {
                        let sleep = match &mut self.sleep {
                            Some((at, s)) => {
                                if *at != due {
                                    s.as_mut().reset(due);
                                    *at = due;
                                }
                                s
                            }
                            None => {
                                &mut self
                                    .sleep
                                    .insert((due, Box::pin(tokio::time::sleep_until(due))))
                                    .1
                            }
                        };
                        if sleep.as_mut().poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                    }
                }
                if self.fail_at == Some(i) {
                    self.phase = Phase::Done;
                    return Poll::Ready(Some(event(
                        "error",
                        &json!({"type": "error",
                                "error": {"type": "overloaded_error", "message": "Overloaded"}}),
                    )));
                }
                self.phase = Phase::Delta(i + 1);
                *generated = i + 1;
                event(
                    "content_block_delta",
                    &json!({"type": "content_block_delta", "index": 0,
                            "delta": {"type": "text_delta", "text": token_text(i)}}),
                )
            }
            Phase::BlockStop => {
                self.phase = Phase::MessageDelta;
                event(
                    "content_block_stop",
                    &json!({"type": "content_block_stop", "index": 0}),
                )
            }
            Phase::MessageDelta => {
                self.phase = Phase::MessageStop;
                event(
                    "message_delta",
                    &json!({"type": "message_delta",
                            "delta": {"stop_reason": p.stop_reason, "stop_sequence": null},
                            "usage": {"input_tokens": p.input_tokens,
                                      "cache_creation_input_tokens": 0,
                                      "cache_read_input_tokens": 0,
                                      "output_tokens": p.output_tokens}}),
                )
            }
            Phase::MessageStop => {
                self.phase = Phase::Done;
                event("message_stop", &json!({"type": "message_stop"}))
            }
            Phase::Done => return Poll::Ready(None),
        };
        Poll::Ready(Some(out))
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }
}
