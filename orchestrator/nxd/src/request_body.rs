//! The bound on a request body that stops coming, `api_body_timeout_secs` (as nginx's
//! `client_body_timeout`): while a handler waits for the next bytes of a request's body, none
//! for that long ends the request with 408 Request Timeout and closes the connection. hyper
//! bounds only the head (`api_head_timeout_secs`); without this, an upload whose head
//! announced a body that never comes held its connection (and its temp file, and its token's
//! `api_max_requests_per_token` count) for as long as the client liked (attacker s12 H6: 4,096
//! of them, still open after 140 s). Time a handler spends elsewhere (checking the store, the
//! database) does not count: the clock runs only while the body is awaited.

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// The middleware: each request's body under `timeout`; a request whose body stalled past it
/// is answered 408 (whatever its handler made of the error), saying what to do, and its
/// connection closed.
pub async fn bounded(State(timeout): State<Duration>, request: Request, next: Next) -> Response {
    let stalled = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(Bounded {
            body,
            timeout,
            waiting: None,
            stalled: Arc::clone(&stalled),
        })
    });
    let response = next.run(request).await;
    if !stalled.load(Ordering::Relaxed) {
        return response;
    }
    let why = format!(
        "the request's body sent nothing for {} s (api_body_timeout_secs), so nxd ended the request: send the body without pausing, or ask the operator to raise api_body_timeout_secs for a slow link",
        timeout.as_secs()
    );
    let mut response =
        crate::error::ApiError::new(StatusCode::REQUEST_TIMEOUT, why).into_response();
    response.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    response
}

/// The body's error once it stalled (the handler's view; the client gets the 408).
fn stalled(timeout: Duration) -> axum::Error {
    axum::Error::new(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "no body bytes for {} s (api_body_timeout_secs)",
            timeout.as_secs()
        ),
    ))
}

/// A request body that fails once it has sent nothing for `timeout` while awaited.
struct Bounded {
    body: Body,
    timeout: Duration,
    /// Armed when the body was awaited and had nothing; disarmed by the next frame.
    waiting: Option<Pin<Box<tokio::time::Sleep>>>,
    stalled: Arc<AtomicBool>,
}

impl HttpBody for Bounded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        if self.stalled.load(Ordering::Relaxed) {
            return Poll::Ready(Some(Err(stalled(self.timeout))));
        }
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            self.waiting = None;
            return Poll::Ready(frame);
        }
        let timeout = self.timeout;
        let waiting = self
            .waiting
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match waiting.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.stalled.store(true, Ordering::Relaxed);
                Poll::Ready(Some(Err(stalled(timeout))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
