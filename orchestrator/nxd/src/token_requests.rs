//! The cap on the requests one deploy token has under way, `api_max_requests_per_token`, on
//! every route: an upload whose body is still coming, a log read or follow (`nx logs -f`,
//! which ends only with the deployment or the token), a task's events (tasks also have
//! `tasks.max_concurrent_per_token`), any other request until its answer is sent.
//! Without it the least token (`--can logs` on one sandbox) could hold every API connection
//! with requests it never finishes or answers it never reads (attacker s10 F11 for follows,
//! s12 H6 for every other route), and starve nxd's state database pool with them. The root
//! token has no such cap (the operator's own; and `api_reserved_connections` keeps it room).

use crate::error::ApiError;
use crate::scopes::Caller;
use axum::body::{Body, Bytes, HttpBody};
use axum::http::StatusCode;
use axum::response::Response;
use nx_orchestrator::router::{Counts, Slot};
use std::pin::Pin;
use std::sync::{Arc, LazyLock};
use std::task::{Context, Poll};

/// Requests under way by deploy token id.
static UNDER_WAY: LazyLock<Arc<Counts<String>>> = LazyLock::new(Arc::default);

/// One more request under way for `caller`, counted until the slot is dropped (see
/// [`held_until_sent`]); none for the root token.
///
/// Errors: 429 when the token has `max` requests under way, saying what to do.
pub fn take(caller: &Caller, max: usize) -> Result<Option<Slot<String>>, ApiError> {
    let Caller::Deploy(token) = caller else {
        return Ok(None);
    };
    UNDER_WAY.take(token.id.clone(), max).map(Some).ok_or_else(|| {
        tracing::debug!(token = %token.id, max, "api_max_requests_per_token reached");
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "deploy token {} has {max} requests under way (uploads, log reads, `nx logs -f`, tasks), the most one token may (api_max_requests_per_token): wait for one to end, or end one, and try again",
                token.id
            ),
        )
    })
}

/// `response` with `slot` held until its body is sent to the end or dropped (the client went
/// away).
pub fn held_until_sent(response: Response, slot: Option<Slot<String>>) -> Response {
    match slot {
        Some(slot) => response.map(|body| Body::new(Held { body, _slot: slot })),
        None => response,
    }
}

/// A response body and the request slot it holds.
struct Held {
    body: Body,
    _slot: Slot<String>,
}

impl HttpBody for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
