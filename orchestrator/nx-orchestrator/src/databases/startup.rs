//! The first message a PostgreSQL client sends on a connection, read by a sandbox's gate
//! before any byte reaches the cluster: PostgreSQL's documentation, "Frontend/Backend
//! Protocol", sections "Start-up" and "Message Formats" (`StartupMessage`, `SSLRequest`,
//! `GSSENCRequest`, `CancelRequest`); the server's own reading is `ProcessStartupPacket`
//! (src/backend/tcop/backend_startup.c), which [`startup_parameters`] follows step by step so
//! that the gate and PostgreSQL never disagree on which user and database a message asks for.

use std::collections::HashSet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest startup packet PostgreSQL reads, length word included
/// (`MAX_STARTUP_PACKET_LENGTH`, src/include/libpq/pqcomm.h).
const MAX_STARTUP_LENGTH: usize = 10_000;
/// Request codes sent where a `StartupMessage` has its protocol version (pqcomm.h).
const CANCEL_REQUEST_CODE: u32 = 80_877_102;
const SSL_REQUEST_CODE: u32 = 80_877_103;
const GSSENC_REQUEST_CODE: u32 = 80_877_104;
/// The protocol's major version, the high 16 bits of a `StartupMessage`'s version.
const PROTOCOL_MAJOR: u32 = 3;

/// SQLSTATE `invalid_authorization_specification` (PostgreSQL's "Errcodes" appendix).
const INVALID_AUTHORIZATION: &str = "28000";
/// SQLSTATE `insufficient_privilege`, PostgreSQL's own for a database a role may not connect
/// to ("permission denied for database").
const INSUFFICIENT_PRIVILEGE: &str = "42501";
/// SQLSTATE `protocol_violation`.
const PROTOCOL_VIOLATION: &str = "08P01";

/// Why a gate refuses a connection's opening: the SQLSTATE and the message drivers show.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Refusal {
    pub(super) code: &'static str,
    pub(super) message: String,
}

impl Refusal {
    fn protocol(message: impl Into<String>) -> Self {
        Self {
            code: PROTOCOL_VIOLATION,
            message: message.into(),
        }
    }
}

/// Reads `client`'s messages up to its `StartupMessage` (or `CancelRequest`), answering an
/// `SSLRequest` or `GSSENCRequest` with `N` (no encryption over a unix socket, as a cluster
/// without it answers) and reading on. Returns that message's bytes, length word included,
/// for the cluster unchanged: a cancel request as it is (PostgreSQL checks its secret key),
/// a startup message only if the user it asks for is the sandbox's `role` or one of its
/// preview `branches`' roles, and the database that user's own (named as the role; none
/// given: PostgreSQL takes the user's name). A role may be granted no other database, but
/// PostgreSQL gives a new one `CONNECT` for PUBLIC until nxd revokes it: through the gate no
/// tenant reaches another's new database, nor its own scratch ones (attacker s11 G10).
///
/// # Errors
/// A [`Refusal`] (SQLSTATE 28000) for a startup message asking for any other user or none;
/// (42501, as PostgreSQL's "permission denied for database") for another database; (08P01) for a message that is not PostgreSQL's protocol 3,
/// longer than PostgreSQL reads, laid out as PostgreSQL would refuse, or cut short by the
/// client.
pub(super) async fn read_opening<S>(
    client: &mut S,
    role: &str,
    branches: &HashSet<String>,
) -> Result<Vec<u8>, Refusal>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let packet = read_packet(client).await?;
        let code = u32::from_be_bytes(packet[4..8].try_into().expect("8 bytes read"));
        match code {
            SSL_REQUEST_CODE | GSSENC_REQUEST_CODE => client
                .write_all(b"N")
                .await
                .map_err(|e| Refusal::protocol(format!("cannot answer: {e}")))?,
            CANCEL_REQUEST_CODE => return Ok(packet),
            version if version >> 16 == PROTOCOL_MAJOR => {
                let Asked { user, database } = startup_parameters(&packet[8..])?;
                let admitted = user.and_then(|u| std::str::from_utf8(u).ok());
                let user = match admitted {
                    Some(user) if user == role || branches.contains(user) => user,
                    _ => return Err(Refusal {
                        code: INVALID_AUTHORIZATION,
                        message: format!(
                            "this socket admits only the sandbox's own roles ({role}, and its preview branches'); connect with the role and password DATABASE_URL names, not as {}",
                            user.map_or("no user".into(), String::from_utf8_lossy)
                        ),
                    }),
                };
                return match database.filter(|d| !d.is_empty()) {
                    Some(database) if database != user.as_bytes() => Err(Refusal {
                        code: INSUFFICIENT_PRIVILEGE,
                        message: format!(
                            "permission denied for database \"{}\": this socket admits role {user} to its own database only; connect to the database DATABASE_URL names",
                            String::from_utf8_lossy(database)
                        ),
                    }),
                    _ => Ok(packet),
                };
            }
            version => {
                return Err(Refusal::protocol(format!(
                "unsupported frontend protocol {}.{}: this socket speaks PostgreSQL's protocol 3",
                version >> 16,
                version & 0xffff
            )))
            }
        }
    }
}

/// One length-prefixed startup-phase packet: its Int32 length (itself included, 8 to
/// [`MAX_STARTUP_LENGTH`]) and the rest.
async fn read_packet<S: AsyncRead + Unpin>(client: &mut S) -> Result<Vec<u8>, Refusal> {
    let cut_short =
        |e: std::io::Error| Refusal::protocol(format!("incomplete startup packet: {e}"));
    let mut length = [0u8; 4];
    client.read_exact(&mut length).await.map_err(cut_short)?;
    let length = u32::from_be_bytes(length) as usize;
    if !(8..=MAX_STARTUP_LENGTH).contains(&length) {
        return Err(Refusal::protocol(format!(
            "invalid length of startup packet: {length} bytes"
        )));
    }
    let mut packet = vec![0u8; length];
    packet[..4].copy_from_slice(&(length as u32).to_be_bytes());
    client
        .read_exact(&mut packet[4..])
        .await
        .map_err(cut_short)?;
    Ok(packet)
}

/// What a `StartupMessage` asks for: its last `user` and `database` parameters, if any.
struct Asked<'a> {
    user: Option<&'a [u8]>,
    database: Option<&'a [u8]>,
}

/// The user and the database a `StartupMessage`'s parameters (`body`: what follows its
/// version) ask for, read as `ProcessStartupPacket` reads them: NUL-terminated name and value
/// pairs until an empty name, the last `user` and the last `database` winning, a value cut off
/// by the packet's end ending the list; the terminator must then be the packet's last byte.
/// (PostgreSQL then takes the user's name for a database missing or empty.)
///
/// # Errors
/// (08P01) when the layout breaks that rule, as PostgreSQL refuses it.
fn startup_parameters(body: &[u8]) -> Result<Asked<'_>, Refusal> {
    // PostgreSQL NUL-terminates its copy of the packet, so a string runs at most to the end.
    let c_string = |at: usize| {
        let rest = &body[at..];
        &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())]
    };
    let (mut user, mut database) = (None, None);
    let mut offset = 0;
    while offset < body.len() {
        let name = c_string(offset);
        if name.is_empty() {
            break;
        }
        let value_offset = offset + name.len() + 1;
        if value_offset >= body.len() {
            break;
        }
        let value = c_string(value_offset);
        match name {
            b"user" => user = Some(value),
            b"database" => database = Some(value),
            _ => {}
        }
        offset = value_offset + value.len() + 1;
    }
    if offset + 1 != body.len() {
        return Err(Refusal::protocol(
            "invalid startup packet layout: expected terminator as last byte",
        ));
    }
    Ok(Asked { user, database })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `StartupMessage` of protocol 3.0 with `params` (name, value pairs) and the terminator.
    fn startup(params: &[(&str, &str)]) -> Vec<u8> {
        let mut body = 196_608u32.to_be_bytes().to_vec();
        for (name, value) in params {
            for part in [name, value] {
                body.extend(part.as_bytes());
                body.push(0);
            }
        }
        body.push(0);
        framed(body)
    }

    fn framed(body: Vec<u8>) -> Vec<u8> {
        let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
        packet.extend(body);
        packet
    }

    /// What `read_opening` makes of `sent` for the role `nx_alpha` with the branch
    /// `nxb_d1`, and what it answered.
    fn open(sent: &[u8]) -> (Result<Vec<u8>, Refusal>, Vec<u8>) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let (mut gate, mut client) = tokio::io::duplex(64 * 1024);
            client.write_all(sent).await.unwrap();
            client.shutdown().await.unwrap();
            let branches = HashSet::from(["nxb_d1".to_owned()]);
            let result = read_opening(&mut gate, "nx_alpha", &branches).await;
            drop(gate);
            let mut answered = Vec::new();
            client.read_to_end(&mut answered).await.unwrap();
            (result, answered)
        })
    }

    #[test]
    fn only_a_startup_message_for_the_gates_role_passes_unchanged() {
        let mine = startup(&[("user", "nx_alpha"), ("database", "nx_alpha")]);
        assert_eq!(open(&mine).0, Ok(mine.clone()));
        let branch = startup(&[("user", "nxb_d1"), ("database", "nxb_d1")]);
        assert_eq!(open(&branch).0, Ok(branch.clone()));
        for other in [
            startup(&[("user", "postgres"), ("database", "postgres")]),
            startup(&[("database", "nx_alpha")]),
            // The last `user` is the one PostgreSQL takes.
            startup(&[("user", "nx_alpha"), ("user", "postgres")]),
            startup(&[("user", "nx_alpha_x")]),
            startup(&[("user", "nxb_d2")]),
        ] {
            let refusal = open(&other).0.unwrap_err();
            assert_eq!(refusal.code, "28000", "{refusal:?}");
            assert!(refusal
                .message
                .contains("admits only the sandbox's own roles (nx_alpha"));
        }
        // Two `user`s ending with the gate's: PostgreSQL takes the gate's role.
        let last = startup(&[("user", "postgres"), ("user", "nx_alpha")]);
        assert_eq!(open(&last).0, Ok(last.clone()));
    }

    #[test]
    fn a_role_passes_only_to_its_own_database() {
        for own in [
            startup(&[("user", "nx_alpha")]),
            startup(&[("user", "nx_alpha"), ("database", "")]),
            startup(&[
                ("database", "nxr_20261201t115509556z"),
                ("database", "nx_alpha"),
                ("user", "nx_alpha"),
            ]),
            startup(&[("user", "nxb_d1"), ("database", "nxb_d1")]),
        ] {
            assert_eq!(open(&own).0, Ok(own.clone()));
        }
        for (other, asked) in [
            // A restore's scratch database, a branch's, production's from a branch, and the
            // last `database` winning as PostgreSQL takes it.
            (
                startup(&[
                    ("user", "nx_alpha"),
                    ("database", "nxr_20261201t115509556z"),
                ]),
                "nxr_20261201t115509556z",
            ),
            (
                startup(&[("user", "nx_alpha"), ("database", "nxb_d1")]),
                "nxb_d1",
            ),
            (
                startup(&[("user", "nxb_d1"), ("database", "nx_alpha")]),
                "nx_alpha",
            ),
            (
                startup(&[
                    ("database", "nx_alpha"),
                    ("user", "nx_alpha"),
                    ("database", "postgres"),
                ]),
                "postgres",
            ),
        ] {
            let refusal = open(&other).0.unwrap_err();
            assert_eq!(refusal.code, "42501", "{refusal:?}");
            assert!(
                refusal
                    .message
                    .contains(&format!("permission denied for database \"{asked}\"")),
                "{refusal:?}"
            );
        }
    }

    #[test]
    fn an_encryption_request_is_declined_and_the_startup_message_read_after_it() {
        let mut sent = framed(SSL_REQUEST_CODE.to_be_bytes().to_vec());
        let mine = startup(&[("user", "nx_alpha")]);
        sent.extend(&mine);
        let (result, answered) = open(&sent);
        assert_eq!(result, Ok(mine));
        assert_eq!(answered, b"N");
        let mut gss = framed(GSSENC_REQUEST_CODE.to_be_bytes().to_vec());
        gss.extend(startup(&[("user", "postgres")]));
        let (result, answered) = open(&gss);
        assert_eq!(result.unwrap_err().code, "28000");
        assert_eq!(answered, b"N");
    }

    #[test]
    fn a_cancel_request_passes_and_malformed_openings_are_refused() {
        let mut cancel = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        cancel.extend([0, 0, 0, 42, 1, 2, 3, 4]);
        let cancel = framed(cancel);
        assert_eq!(open(&cancel).0, Ok(cancel.clone()));
        // Protocol 2, a length out of bounds, a packet cut short, a missing terminator, and a
        // value running into the end after which PostgreSQL would see the terminator missing.
        let mut unterminated = startup(&[("user", "nx_alpha")]);
        unterminated.pop();
        unterminated[3] -= 1;
        let mut cut_value = 196_608u32.to_be_bytes().to_vec();
        cut_value.extend(b"user\0nx_alpha");
        for bad in [
            framed(131_072u32.to_be_bytes().to_vec()),
            20_000u32.to_be_bytes().to_vec(),
            startup(&[("user", "nx_alpha")])[..10].to_vec(),
            unterminated,
            framed(cut_value),
        ] {
            let refusal = open(&bad).0.unwrap_err();
            assert_eq!(refusal.code, "08P01", "{bad:?}: {refusal:?}");
        }
    }
}
