//! The response body type: a whole buffer or a paced SSE stream, carrying the [`Finish`]
//! guard so that the response counts as active until its body ends or is dropped.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::records::Finish;
use crate::sse::SseStream;

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Sse(Box<SseStream>),
}

/// Body of every response the mock sends.
#[derive(Debug)]
pub struct MockBody {
    kind: Kind,
    /// Boxed: hyper moves bodies around, and the guard carries the whole draft record.
    finish: Option<Box<Finish>>,
}

impl MockBody {
    pub(crate) fn full(bytes: Bytes) -> Self {
        let bytes = (!bytes.is_empty()).then_some(bytes);
        Self {
            kind: Kind::Full(bytes),
            finish: None,
        }
    }

    pub(crate) fn sse(stream: SseStream) -> Self {
        Self {
            kind: Kind::Sse(Box::new(stream)),
            finish: None,
        }
    }

    pub(crate) fn with_finish(mut self, finish: Finish) -> Self {
        self.finish = Some(Box::new(finish));
        self
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let next = match &mut this.kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take()),
            Kind::Sse(stream) => {
                let mut scratch = 0;
                let generated = match this.finish.as_mut() {
                    Some(f) => &mut f.generated,
                    None => &mut scratch,
                };
                stream.poll_next(cx, generated)
            }
        };
        // The last frame is out (or there is none): settle and stamp the end now rather than
        // whenever hyper gets round to dropping the body.
        let ended = match (&next, &this.kind) {
            (Poll::Ready(None), _) => true,
            (Poll::Ready(Some(_)), Kind::Full(_)) => true,
            (Poll::Ready(Some(_)), Kind::Sse(s)) => s.is_done(),
            (Poll::Pending, _) => false,
        };
        if ended {
            this.finish.take();
        }
        next.map(|b| b.map(|b| Ok(Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.kind, Kind::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Sse(_) => SizeHint::default(),
        }
    }
}
