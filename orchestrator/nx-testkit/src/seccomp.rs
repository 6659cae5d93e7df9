//! What NX's seccomp filter refuses, as a deployment of the sample app reports it.

/// Asserts, through the sample app's probes reached by `get(path) -> (HTTP status, body)`,
/// that the deployment runs under NX's seccomp filter: no nested user namespace
/// (`/unshare`), no io_uring (`/io-uring`, `EPERM`), no `AF_VSOCK` (40) or `AF_PACKET` (17)
/// sockets, while `AF_INET` (2), `AF_INET6` (10) and `AF_UNIX` (1) sockets are made as usual
/// (family numbers: `<linux/socket.h>`). Panics naming the probe that got through.
pub fn assert_filtered(get: impl Fn(&str) -> (u16, String)) {
    let (status, body) = get("/unshare");
    assert_eq!(status, 403, "created a nested user namespace: {body}");
    let (status, body) = get("/io-uring");
    assert_eq!(status, 403, "set up an io_uring: {body}");
    assert!(body.contains("Operation not permitted"), "{body}");
    for (family, allowed) in [(40, false), (17, false), (2, true), (10, true), (1, true)] {
        let (status, body) = get(&format!("/socket?family={family}"));
        assert_eq!(status == 200, allowed, "socket family {family}: {body}");
    }
}
