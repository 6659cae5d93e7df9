//! JSON answers serialized into a buffer as large as the last answer of the same route, as
//! `axum::Json` would answer them otherwise: `nx ls` of a host with a thousand deployments is
//! about 1 MB, which `axum::Json` grows by doubling from 128 bytes (~2 MB copied in
//! reallocations per request: 6.6% of nxd's CPU time for `nx ls` in session 9's profile).

use crate::error::ApiError;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The size of a route's last answer, in bytes (0: none yet).
pub struct LastSize(AtomicUsize);

impl LastSize {
    /// No answer yet.
    pub const fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    /// A buffer for the next answer: the last one's size and a sixteenth more (it may have
    /// grown by a deployment or two).
    fn buffer(&self) -> Vec<u8> {
        let last = self.0.load(Ordering::Relaxed);
        Vec::with_capacity(last + last / 16)
    }
}

/// `value` as a JSON answer (`application/json`), its buffer sized by `last`.
pub struct SizedJson<T>(pub T, pub &'static LastSize);

impl<T: Serialize> IntoResponse for SizedJson<T> {
    fn into_response(self) -> Response {
        let SizedJson(value, last) = self;
        let mut body = last.buffer();
        match serde_json::to_writer(&mut body, &value) {
            Ok(()) => {
                last.0.store(body.len(), Ordering::Relaxed);
                let json = header::HeaderValue::from_static("application/json");
                ([(header::CONTENT_TYPE, json)], body).into_response()
            }
            Err(e) => {
                ApiError::internal(format!("cannot write the answer as JSON: {e}")).into_response()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_what_axum_json_answers_in_a_buffer_of_the_last_size() {
        static LAST: LastSize = LastSize::new();
        let value = serde_json::json!({"deployments": vec!["d1234567"; 1000]});
        let expected = axum::Json(&value).into_response();
        let expected_type = expected.headers()[header::CONTENT_TYPE].clone();
        let expected = axum::body::to_bytes(expected.into_body(), usize::MAX)
            .await
            .unwrap();
        let answer = SizedJson(&value, &LAST).into_response();
        assert_eq!(answer.headers()[header::CONTENT_TYPE], expected_type);
        let body = axum::body::to_bytes(answer.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(body, expected);
        assert_eq!(LAST.0.load(Ordering::Relaxed), expected.len());
        assert!(
            LAST.buffer().capacity() >= expected.len(),
            "sized by the last"
        );
    }
}
