//! The router's rate-limited log lines ([`LineBudget`]s): access lines of requests that no
//! route answers (unknown hosts, ACME challenge misses), lines about a connection itself (a
//! head or TLS handshake cut off at `head_timeout_secs`, a connection refused at
//! `max_connections`), and those a deployment causes with every response (a cookie dropped
//! for a shared domain). Requests that a route answers are not limited here
//! (`access_log_sample` samples them); the log's size is bounded as a whole by its writer
//! (`router.log_max_mb`).

use nx_router_api::log_budget::LineBudget;

/// Access lines of requests that no route answered (`404 no deployment answers`).
pub static UNROUTED: LineBudget = LineBudget::new("access lines of requests no route answers");
/// Lines about single connections: head or TLS handshake timeouts, refusals at the cap.
pub static CONNECTIONS: LineBudget =
    LineBudget::new("lines about single connections (head timeouts, refusals at the cap)");

/// Lines about `Set-Cookie` headers a deployment sent for a domain other tenants share.
pub static TOSSED_COOKIES: LineBudget =
    LineBudget::new("lines about cookies dropped for a shared domain");

/// Every kind, for the summary of lines left out.
static ALL: [&LineBudget; 3] = [&UNROUTED, &CONNECTIONS, &TOSSED_COOKIES];

/// Starts the summary of lines left out (`nx_router_api::log_budget::report_suppressed`).
pub fn report_suppressed() -> std::io::Result<()> {
    nx_router_api::log_budget::report_suppressed("nx-router-log-budget", &ALL)
}
