//! A response body that holds its scheduler slot until the body ends or is dropped, so a
//! streaming generation counts against the in-flight limit for as long as it runs (the
//! original released the slot when the headers arrived).

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::queue::Slot;

pub struct HeldBody {
    inner: Incoming,
    slot: Option<Slot>,
}

impl HeldBody {
    pub fn new(inner: Incoming, slot: Slot) -> HeldBody {
        HeldBody {
            inner,
            slot: Some(slot),
        }
    }
}

impl Body for HeldBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
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
