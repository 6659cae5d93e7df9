//! The cap on one deploy token's long-lived streams, `api_max_streams_per_token`: log follows
//! (`nx logs -f`, which end only with the deployment or the token; tasks have their own cap,
//! `tasks.max_concurrent_per_token`).
//! Without it the least token (`--can logs` on one sandbox) could hold every API connection
//! (attacker s10 F11). The root token has no such cap (the operator's own; and
//! `api_reserved_connections` keeps it room).

use crate::error::ApiError;
use crate::scopes::Caller;
use axum::http::StatusCode;
use nx_orchestrator::router::{Counts, Slot};
use std::sync::{Arc, LazyLock};

/// Open streams by deploy token id.
static OPEN: LazyLock<Arc<Counts<String>>> = LazyLock::new(Arc::default);

/// One more stream for `caller`, held until the slot is dropped (keep it in the stream's
/// body); none for the root token.
///
/// Errors: 429 when the token has `max` streams open, saying what to do.
pub fn open(caller: &Caller, max: usize) -> Result<Option<Slot<String>>, ApiError> {
    let Caller::Deploy(token) = caller else {
        return Ok(None);
    };
    match OPEN.take(token.id.clone(), max) {
        Some(slot) => Ok(Some(slot)),
        None => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "deploy token {} has {max} log follows open (`nx logs -f`), the most one token may (api_max_streams_per_token): end one and try again",
                token.id
            ),
        )),
    }
}
