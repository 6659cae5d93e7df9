//! The SFTP upload server: `sftp`/`scp` put a binary, it becomes a deployment, no `nx` needed.
//! SSH is russh, the SFTP subsystem russh-sftp (both from crates.io): only public-key
//! authentication is offered; the SSH user is the sandbox's name and a key is accepted only if
//! it was added to that sandbox (`nx keys add`). No shell, no exec: only the `sftp` subsystem,
//! which shows the user its sandbox's upload area (`area`).

pub(crate) mod area;
mod deploy;
pub mod host_key;
mod startups;

use anyhow::Context;
use nx_orchestrator::names::SandboxName;
use nx_orchestrator::router::log_budget::{self, LineBudget};
use nx_orchestrator::router::ClientCounts;
use nx_orchestrator::Orchestrator;
use russh::keys::{HashAlg, PrivateKey, PublicKey};
use russh::server::{Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, MethodKind, MethodSet};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Serves SFTP on `listener`, forever: an accept error (EMFILE, ENFILE, ECONNABORTED) is
/// logged and accepting goes on after a pause, never fatal (attacker s11 G1: russh's own loop,
/// `run_on_socket`, returned on the first one, and nxd exited with it). At most
/// `sftp.max_connections` connections are open at once and `sftp.max_connections_per_address`
/// from one client (its IPv4 address or IPv6 /64, `router::client_share`); one over a cap is
/// closed as it is accepted. Of them, at most `sftp.max_startups` have not authenticated yet
/// (`startups`: a new one takes the place of the busiest client's oldest). A connection that
/// has not authenticated within `sftp.login_grace_secs` is closed (OpenSSH's
/// `LoginGraceTime`, sshd_config(5)). Lines about connections closed at a cap are
/// rate-limited ([`CLOSED_AT_A_CAP`]).
pub async fn serve(
    app: Arc<Orchestrator>,
    listener: tokio::net::TcpListener,
    host_key: PrivateKey,
) -> anyhow::Result<()> {
    let limits = app.config.sftp.clone();
    static BUDGETS: [&LineBudget; 1] = [&CLOSED_AT_A_CAP];
    log_budget::report_suppressed("nxd-sftp-log-budget", &BUDGETS)
        .context("starting the SFTP log budget's thread")?;
    let mut methods = MethodSet::empty();
    methods.push(MethodKind::PublicKey);
    let config = Arc::new(russh::server::Config {
        methods,
        keys: vec![host_key],
        auth_rejection_time: Duration::from_millis(500),
        // OpenSSH clients probe with "none" first: no need to make them wait for that.
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: Some(Duration::from_secs(600)),
        nodelay: true,
        ..Default::default()
    });
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let by_client = Arc::new(ClientCounts::default());
    let startups = startups::Startups::new(limits.max_startups);
    let grace = Duration::from_secs(limits.login_grace_secs);
    loop {
        let (stream, grace_end, peer) = match accept(&listener).await {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "SFTP accept failed; accepting again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(client_slot) = by_client.take_for(peer.ip(), limits.max_connections_per_address)
        else {
            tracing::debug!(%peer, "sftp.max_connections_per_address reached: connection closed");
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            if CLOSED_AT_A_CAP.allow() {
                tracing::warn!(%peer, "sftp.max_connections reached: connection closed");
            }
            continue;
        };
        let grace_end = Arc::new(grace_end);
        let (startup, made_way) = startups.admit(peer.ip(), Arc::clone(&grace_end));
        if let Some(client) = made_way {
            if CLOSED_AT_A_CAP.allow() {
                tracing::warn!(%client, %peer, "sftp.max_startups reached: the oldest unauthenticated connection of the client holding the most closed");
            }
        }
        let authenticated = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler = Connection {
            app: Arc::clone(&app),
            peer: Some(peer),
            user: None,
            authenticated: Arc::clone(&authenticated),
            startup: Some(startup),
            channels: HashMap::new(),
        };
        let config = Arc::clone(&config);
        tokio::spawn(async move {
            let _slots = (slot, client_slot);
            let served = async {
                let session = match russh::server::run_stream(config, stream, handler).await {
                    Ok(session) => session,
                    Err(e) => {
                        tracing::debug!(error = %e, %peer, "SFTP connection setup failed");
                        return;
                    }
                };
                if let Err(e) = session.await {
                    tracing::debug!(error = %e, %peer, "SFTP connection ended");
                }
            };
            tokio::pin!(served);
            // The second descriptor lives no longer than the connection or the grace: held
            // for the grace after the connection ended, a flood's descriptors outlived it
            // (`sftp.login_grace_secs`, 30 s by default) and kept nxd at its open-file limit.
            tokio::select! {
                () = &mut served => return,
                () = tokio::time::sleep(grace) => {}
            }
            if !authenticated.load(std::sync::atomic::Ordering::Relaxed) {
                tracing::debug!(%peer, "not authenticated within sftp.login_grace_secs: connection closed");
                let _ = grace_end.shutdown(std::net::Shutdown::Both);
            }
            drop(grace_end);
            served.await;
        });
    }
}

/// Lines about connections closed at `sftp.max_connections` or `sftp.max_startups`: anyone
/// can cause them (attacker s12 M3: 3,100 a second), so they are rate-limited; a summary every
/// 10 s says how many were left out.
pub static CLOSED_AT_A_CAP: LineBudget =
    LineBudget::new("lines about SFTP connections closed at a cap");

/// The next connection on `listener`: its stream, a second descriptor of its socket (dup(2))
/// and the peer's address. The second descriptor ends a connection that has not authenticated
/// in time whatever russh is waiting for (before the client's version line it reads nothing
/// else: a disconnect request would wait with it).
///
/// Errors: accept(2)'s or dup(2)'s, such as EMFILE at nxd's open-file limit. Both are the
/// same failure to take a connection: with one descriptor left, accept succeeds and dup fails
/// (CI of session 12: a flood held nxd at 1,023 of 1,024 files and only dup failed, unlogged).
async fn accept(
    listener: &tokio::net::TcpListener,
) -> std::io::Result<(tokio::net::TcpStream, std::net::TcpStream, SocketAddr)> {
    let (stream, peer) = listener.accept().await?;
    let stream = stream.into_std()?;
    let clone = stream.try_clone()?;
    Ok((tokio::net::TcpStream::from_std(stream)?, clone, peer))
}

/// One SSH connection: before authentication no user, after it exactly one.
struct Connection {
    app: Arc<Orchestrator>,
    peer: Option<SocketAddr>,
    user: Option<area::KeyHolder>,
    /// Set once a key is accepted (the login grace timer reads it).
    authenticated: Arc<std::sync::atomic::AtomicBool>,
    /// Its place among the startups, given back once a key is accepted.
    startup: Option<startups::Place>,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

impl Connection {
    /// The sandbox `user` names, if `key` was added to it.
    async fn sandbox_for(&self, user: &str, key: &PublicKey) -> Option<SandboxName> {
        let sandbox = SandboxName::parse(user).ok()?;
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        match self.app.ssh_keys.authorizes(&sandbox, &fingerprint).await {
            Ok(true) => Some(sandbox),
            Ok(false) => None,
            Err(e) => {
                tracing::error!(error = %e, "cannot check an SFTP key");
                None
            }
        }
    }
}

impl russh::server::Handler for Connection {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(match self.sandbox_for(user, offer.public_key).await {
            Some(_) => Auth::Accept,
            None => Auth::reject(),
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fingerprint = key.public_key.fingerprint(HashAlg::Sha256).to_string();
        match self.sandbox_for(user, key.public_key).await {
            Some(sandbox) => {
                tracing::info!(%sandbox, %fingerprint, peer = ?self.peer, "SFTP user authenticated");
                self.user = Some(area::KeyHolder {
                    sandbox,
                    fingerprint,
                });
                self.authenticated
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.startup = None;
                Ok(Auth::Accept)
            }
            None => {
                tracing::info!(user, %fingerprint, peer = ?self.peer, "SFTP key refused");
                Ok(Auth::reject())
            }
        }
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let channel = self.channels.remove(&id);
        let (Some(channel), Some(user), "sftp") = (channel, self.user.clone(), name) else {
            session.channel_failure(id)?;
            return Ok(());
        };
        match area::UploadArea::new(Arc::clone(&self.app), user) {
            Ok(area) => {
                session.channel_success(id)?;
                russh_sftp::server::run(channel.into_stream(), area).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot open the SFTP upload area");
                session.channel_failure(id)?;
            }
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse_command(id, session)
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        _data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        refuse_command(id, session)
    }

    /// The client is done: exit status 0, as sshd sends when its sftp-server exits (scp
    /// fails without one), then the channel closes.
    async fn channel_eof(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.exit_status_request(id, 0)?;
        session.eof(id)?;
        session.close(id)?;
        Ok(())
    }
}

/// Shells and commands: refused with a line on stderr that says what this server is for.
fn refuse_command(id: ChannelId, session: &mut Session) -> Result<(), russh::Error> {
    session.channel_failure(id)?;
    session.extended_data(
        id,
        1,
        &b"nxd speaks only SFTP here: `sftp <sandbox>@host` or `scp app <sandbox>@host:`\n"[..],
    )?;
    session.close(id)
}
