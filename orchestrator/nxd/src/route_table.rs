//! nxd's route table: every route as its method, its path (axum's syntax, `{name}` for a path
//! parameter) and its handler. The API's router is built from it ([`router`]), and the test in
//! `openapi` checks the OpenAPI document (`orchestrator/nxd/openapi.yaml`) against it, so that
//! a route cannot be added, moved or removed without the document saying so.

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use nx_orchestrator::Orchestrator;
use std::sync::Arc;

type Shared = Arc<Orchestrator>;

/// One route: a method on a path, and what answers it.
pub struct Route {
    pub method: Method,
    /// axum's syntax: `/v1/deployments/{id}`.
    pub path: &'static str,
    handler: MethodRouter<Shared>,
}

impl Route {
    fn new<H, T>(method: Method, path: &'static str, handler: H) -> Self
    where
        H: Handler<T, Shared>,
        T: 'static,
    {
        let filter = MethodFilter::try_from(method.clone()).expect("a method axum routes");
        Self {
            handler: on(filter, handler),
            method,
            path,
        }
    }

    /// The same route with no default limit on its body's size (artifact and dump uploads;
    /// bundles' lists of files, which `json_body::ManifestBody` limits by `bundles.max_files`).
    pub fn unlimited_body(mut self) -> Self {
        self.handler = self.handler.layer(DefaultBodyLimit::disable());
        self
    }
}

/// `GET path`.
pub fn get<H: Handler<T, Shared>, T: 'static>(path: &'static str, handler: H) -> Route {
    Route::new(Method::GET, path, handler)
}

/// `POST path`.
pub fn post<H: Handler<T, Shared>, T: 'static>(path: &'static str, handler: H) -> Route {
    Route::new(Method::POST, path, handler)
}

/// `PUT path`.
pub fn put<H: Handler<T, Shared>, T: 'static>(path: &'static str, handler: H) -> Route {
    Route::new(Method::PUT, path, handler)
}

/// `DELETE path`.
pub fn delete<H: Handler<T, Shared>, T: 'static>(path: &'static str, handler: H) -> Route {
    Route::new(Method::DELETE, path, handler)
}

/// The router of `routes`; the methods of one path become that path's methods.
pub fn router(routes: Vec<Route>) -> Router<Shared> {
    routes.into_iter().fold(Router::new(), |router, route| {
        tracing::debug!(method = %route.method, path = route.path, "route");
        router.route(route.path, route.handler)
    })
}
