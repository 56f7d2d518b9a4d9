//! Response bodies: whole or streamed, and tied to the request's record so
//! that finishing (or the client going away) is noted.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use http::{HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::Value;

use super::record::{RecordGuard, RequestOutcome};
use super::status::ApiError;

/// The body of every response the test apiserver sends.
pub(crate) struct ResponseBody {
    inner: UnsyncBoxBody<Bytes, Infallible>,
    guard: Option<Arc<RecordGuard>>,
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl ResponseBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self { inner: Full::new(bytes.into()).boxed_unsync(), guard: None }
    }

    /// A body streamed chunk by chunk, each chunk flushed as it comes.
    pub fn stream(s: impl Stream<Item = Bytes> + Send + 'static) -> Self {
        let frames = s.map(|b| Ok::<_, Infallible>(Frame::data(b)));
        Self { inner: StreamBody::new(frames).boxed_unsync(), guard: None }
    }

    /// Ties the body to the request's record.
    pub fn with_guard(mut self, guard: Arc<RecordGuard>) -> Self {
        self.guard = Some(guard);
        self
    }

    fn complete(&self) {
        if let Some(g) = &self.guard {
            g.finish(RequestOutcome::Completed);
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.complete(),
            Poll::Ready(Some(_)) if this.inner.is_end_stream() => this.complete(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let end = self.inner.is_end_stream();
        if end {
            self.complete();
        }
        end
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response with a body and content type.
pub(crate) fn respond(status: StatusCode, content_type: &str, body: ResponseBody) -> Response<ResponseBody> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    if let Ok(ct) = HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    resp
}

/// A JSON response.
pub(crate) fn json(status: StatusCode, value: &Value) -> Response<ResponseBody> {
    json_as(status, "application/json", value)
}

/// A JSON response with a specific JSON media type.
pub(crate) fn json_as(status: StatusCode, content_type: &str, value: &Value) -> Response<ResponseBody> {
    respond(status, content_type, ResponseBody::full(value.to_string()))
}

/// The `Status` response for a failure.
pub(crate) fn error(err: &ApiError) -> Response<ResponseBody> {
    respond(err.code, "application/json", ResponseBody::full(err.to_bytes()))
}

/// An empty response.
pub(crate) fn empty(status: StatusCode) -> Response<ResponseBody> {
    let mut resp = Response::new(ResponseBody::full(Bytes::new()));
    *resp.status_mut() = status;
    resp
}
