//! `GET /ws`: a WebSocket echo (RFC 6455), for the tests and the router benchmark: every text
//! or binary message comes back as it was sent.

use tiny_http::{Header, ReadWrite, Request, Response};
use tungstenite::protocol::Role;

/// Answers the handshake and echoes on a thread of its own, so the worker is free again; 503
/// when no thread can be started.
pub fn echo(request: Request) {
    let key = request
        .headers()
        .iter()
        .find(|h| h.field.equiv("Sec-WebSocket-Key"))
        .map(|h| h.value.as_str().to_owned());
    let Some(key) = key else {
        let _ = request.respond(
            Response::from_string("a WebSocket handshake is expected\n").with_status_code(400),
        );
        return;
    };
    // The echo thread is started before the handshake is answered: where none can be started
    // (the unit's TasksMax reached: this app runs a thread per connection), the client gets a
    // 503 that says so, not a handshake answered and then closed (a panic here would also end
    // the worker).
    let (hand_over, stream) = std::sync::mpsc::channel::<Box<dyn ReadWrite + Send>>();
    let started = std::thread::Builder::new().spawn(move || {
        let Ok(stream) = stream.recv() else { return };
        let mut ws = tungstenite::WebSocket::from_raw_socket(stream, Role::Server, None);
        while let Ok(message) = ws.read() {
            let echo = message.is_text() || message.is_binary();
            if message.is_close() || (echo && ws.send(message).is_err()) {
                return;
            }
        }
    });
    if let Err(e) = started {
        let text = format!("nx-sample: no thread for this WebSocket ({e}): TasksMax reached?\n");
        let _ = request.respond(Response::from_string(text).with_status_code(503));
        return;
    }
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let header = Header::from_bytes("Sec-WebSocket-Accept", accept).expect("a valid header");
    let stream = request.upgrade("websocket", Response::empty(101).with_header(header));
    // The thread is waiting on the other end: a send fails only if it is gone.
    let _ = hand_over.send(stream);
}
