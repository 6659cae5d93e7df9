//! Certificates from an ACME server (RFC 8555) for the names NX routes, and only those: the
//! production hosts `<sandbox>.<base_domain>` (and, through [`Acme::want`], whatever else nxd
//! routes). The protocol, JWS and CSR are instant-acme's, the validation certificate rcgen's;
//! the challenge is `tls.acme_challenge`: HTTP-01 (§8.3), answered by the router on its plain
//! HTTP listener from `<state_dir>/tls/challenges/`, or TLS-ALPN-01 (RFC 8737), answered on its
//! HTTPS listener from `<state_dir>/tls/challenges/tls-alpn-01/`.
//!
//! Each name has a [`CertificateStatus`] kept in `<state_dir>/tls/status.json`: valid until a
//! date, or failed with the server's reason and the time of the next attempt (back-off from
//! 60 s, doubling, up to a day). A certificate is stored (see [`super::store`]) and the router
//! told to re-read the store; a renewed one replaces the old in one rename, so no handshake
//! sees neither.

use super::store::{self, StoreError};
use super::{AcmeChallenge, TlsConfig};
use crate::router::RouterClient;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
pub use nx_api::domains::{CertificateState, CertificateStatus};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The first retry after a failed order, in seconds; it doubles after each failure.
const FIRST_BACKOFF_SECS: i64 = 60;
/// The longest back-off, in seconds.
const MAX_BACKOFF_SECS: i64 = 86_400;
/// How long an order may stay pending before it counts as failed.
const ORDER_PATIENCE: Duration = Duration::from_secs(90);

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("the ACME server refused the order: {0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot make the TLS-ALPN-01 validation certificate: {0}")]
    ValidationCertificate(#[from] rcgen::Error),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// The stored account: its credentials, for the directory they belong to.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// nxd's ACME client: one account, the names wanted, their states.
pub struct Acme {
    config: TlsConfig,
    dir: PathBuf,
    certs_dir: PathBuf,
    challenges_dir: PathBuf,
    router: RouterClient,
    account: tokio::sync::OnceCell<Account>,
    wanted: watch::Sender<BTreeSet<String>>,
    statuses: std::sync::Mutex<BTreeMap<String, CertificateStatus>>,
    /// The leaf of `tls.cert_file`, to leave the names it covers alone.
    fixed_leaf: Option<rustls_pki_types::CertificateDer<'static>>,
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

impl Acme {
    /// Starts the ACME loop for `config` (which must have [`TlsConfig::acme_enabled`]).
    /// Reads the fixed certificate's leaf, if any, and the stored statuses.
    pub fn start(
        config: &TlsConfig,
        state_dir: &std::path::Path,
        router: RouterClient,
    ) -> Result<Arc<Self>, AcmeError> {
        let fixed_leaf = match (&config.cert_file, &config.key_file) {
            (Some(cert), Some(key)) => Some(store::read_pair(cert, key)?.chain.remove(0)),
            _ => None,
        };
        let dir = super::dir(state_dir);
        let statuses = std::fs::read(dir.join("status.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let acme = Arc::new(Self {
            config: config.clone(),
            certs_dir: super::certs_dir(state_dir),
            challenges_dir: super::challenges_dir(state_dir),
            dir,
            router,
            account: tokio::sync::OnceCell::new(),
            wanted: watch::Sender::new(BTreeSet::new()),
            statuses: std::sync::Mutex::new(statuses),
            fixed_leaf,
        });
        for dir in [&acme.certs_dir, &acme.challenges_dir] {
            std::fs::create_dir_all(dir).map_err(|source| AcmeError::Io {
                what: format!("creating {}", dir.display()),
                source,
            })?;
        }
        tokio::spawn(acme.clone().run());
        Ok(acme)
    }

    /// Sets the names that need certificates (lower-case DNS names); the loop looks at once.
    pub fn want(&self, names: BTreeSet<String>) {
        self.wanted.send_if_modified(|current| {
            let changed = *current != names;
            *current = names;
            changed
        });
    }

    /// Every wanted name's status (a name not looked at yet is pending).
    pub fn statuses(&self) -> BTreeMap<String, CertificateStatus> {
        let known = self.statuses.lock().expect("statuses lock");
        self.wanted
            .borrow()
            .iter()
            .map(|name| {
                let status = known
                    .get(name)
                    .cloned()
                    .unwrap_or(CertificateStatus::of(CertificateState::Pending));
                (name.clone(), status)
            })
            .collect()
    }

    async fn run(self: Arc<Self>) {
        let mut wanted = self.wanted.subscribe();
        loop {
            let names: Vec<String> = wanted.borrow_and_update().iter().cloned().collect();
            for name in &names {
                self.ensure(name).await;
            }
            let interval = Duration::from_secs(self.config.acme_check_interval_secs);
            let wait = self.next_retry().map_or(interval, |at| {
                Duration::from_secs((at - now()).clamp(1, interval.as_secs() as i64) as u64)
            });
            tokio::select! {
                changed = wanted.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The earliest time a failed name may be ordered again.
    fn next_retry(&self) -> Option<i64> {
        let statuses = self.statuses.lock().expect("statuses lock");
        statuses.values().filter_map(|s| s.next_attempt).min()
    }

    fn set_status(&self, name: &str, status: CertificateStatus) {
        let mut statuses = self.statuses.lock().expect("statuses lock");
        statuses.insert(name.to_owned(), status);
        let json = serde_json::to_vec_pretty(&*statuses).expect("statuses serialize");
        if let Err(e) = store::write_private(&self.dir.join("status.json"), &json) {
            tracing::warn!(error = %e, "cannot keep the certificate statuses");
        }
    }

    /// Orders `name`'s certificate if it has none, it is due for renewal, and its back-off
    /// (after a failure) is over.
    #[tracing::instrument(skip(self))]
    async fn ensure(&self, name: &str) {
        if self
            .fixed_leaf
            .as_ref()
            .is_some_and(|leaf| store::covers(leaf, name))
        {
            let fixed = CertificateStatus {
                state: CertificateState::Fixed,
                not_after: self
                    .fixed_leaf
                    .as_ref()
                    .and_then(|l| store::not_after(l).ok()),
                error: None,
                failures: 0,
                next_attempt: None,
            };
            self.set_status(name, fixed);
            return;
        }
        let path = store::path(&self.certs_dir, name);
        let stored = store::read_pair(&path, &path).ok().map(|p| p.not_after);
        let renew_at =
            |not_after: i64| not_after - i64::from(self.config.acme_renew_before_days) * 86_400;
        let previous = self
            .statuses
            .lock()
            .expect("statuses lock")
            .get(name)
            .cloned();
        if let Some(not_after) = stored.filter(|n| renew_at(*n) > now()) {
            if previous
                .as_ref()
                .is_none_or(|p| p.state != CertificateState::Valid)
            {
                self.set_status(
                    name,
                    CertificateStatus {
                        state: CertificateState::Valid,
                        not_after: Some(not_after),
                        error: None,
                        failures: 0,
                        next_attempt: None,
                    },
                );
            }
            return;
        }
        let failures = previous.as_ref().map_or(0, |p| p.failures);
        if previous
            .as_ref()
            .and_then(|p| p.next_attempt)
            .is_some_and(|at| at > now())
        {
            return;
        }
        tracing::info!(renewal = stored.is_some(), "ordering a certificate");
        match self.order(name).await {
            Ok(not_after) => {
                tracing::info!(not_after, "certificate stored");
                self.set_status(
                    name,
                    CertificateStatus {
                        state: CertificateState::Valid,
                        not_after: Some(not_after),
                        error: None,
                        failures: 0,
                        next_attempt: None,
                    },
                );
                if let Err(e) = self
                    .router
                    .reload_certificates(Duration::from_secs(10))
                    .await
                {
                    tracing::warn!(error = %e, "the router did not re-read the certificates");
                }
            }
            Err(e) => {
                let backoff = (FIRST_BACKOFF_SECS << failures.min(16)).min(MAX_BACKOFF_SECS);
                tracing::warn!(error = %e, retry_in_secs = backoff, "certificate order failed");
                self.set_status(
                    name,
                    CertificateStatus {
                        // A renewal that failed still serves the old certificate.
                        state: if stored.is_some() {
                            CertificateState::Valid
                        } else {
                            CertificateState::Failed
                        },
                        not_after: stored,
                        error: Some(e.to_string()),
                        failures: failures + 1,
                        next_attempt: Some(now() + backoff),
                    },
                );
            }
        }
    }

    /// The account: the stored one for this directory, or a new one (then stored, 0600).
    async fn account(&self) -> Result<&Account, AcmeError> {
        self.account
            .get_or_try_init(|| async {
                let file = self.dir.join("account.json");
                let directory = &self.config.acme_directory_url;
                let builder = match &self.config.acme_ca_roots {
                    Some(roots) => Account::builder_with_root(roots)?,
                    None => Account::builder()?,
                };
                let stored = std::fs::read(&file)
                    .ok()
                    .and_then(|b| serde_json::from_slice::<StoredAccount>(&b).ok())
                    .filter(|a| &a.directory == directory);
                if let Some(stored) = stored {
                    return Ok(builder.from_credentials(stored.credentials).await?);
                }
                let contact = self
                    .config
                    .acme_email
                    .as_ref()
                    .map(|e| format!("mailto:{e}"));
                let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, credentials) = builder
                    .create(
                        &NewAccount {
                            contact: &contact,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory.clone(),
                        None,
                    )
                    .await?;
                let stored = StoredAccount {
                    directory: directory.clone(),
                    credentials,
                };
                store::write_private(
                    &file,
                    &serde_json::to_vec(&stored).expect("credentials serialize"),
                )?;
                tracing::info!(id = account.id(), "ACME account created");
                Ok(account)
            })
            .await
    }

    /// One order for `name` by `tls.acme_challenge`; answers the new certificate's `notAfter`.
    async fn order(&self, name: &str) -> Result<i64, AcmeError> {
        let account = self.account().await?;
        let identifiers = [Identifier::Dns(name.to_owned())];
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut answers = Vec::new();
        let result = self.validate(name, &mut order, &mut answers).await;
        for file in answers {
            let _ = std::fs::remove_file(file);
        }
        result?;
        let key_pem = order.finalize().await?;
        let chain_pem = order
            .poll_certificate(&RetryPolicy::new().timeout(ORDER_PATIENCE))
            .await?;
        let path = store::save(&self.certs_dir, name, &chain_pem, &key_pem)?;
        Ok(store::read_pair(&path, &path)?.not_after)
    }

    /// Puts up the answers to `name`'s challenges (their files go into `answers`), tells the
    /// server, and waits until the order is ready; a refusal carries the server's reasons.
    async fn validate(
        &self,
        name: &str,
        order: &mut instant_acme::Order,
        answers: &mut Vec<PathBuf>,
    ) -> Result<(), AcmeError> {
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            match authorization.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Refused(format!("authorization is {other:?}")));
                }
            }
            let (kind, label) = match self.config.acme_challenge {
                AcmeChallenge::Http01 => (ChallengeType::Http01, "http-01"),
                AcmeChallenge::TlsAlpn01 => (ChallengeType::TlsAlpn01, "tls-alpn-01"),
            };
            let mut challenge = authorization.challenge(kind).ok_or_else(|| {
                AcmeError::Refused(format!(
                    "the server offers no {label} challenge (tls.acme_challenge)"
                ))
            })?;
            let answer = challenge.key_authorization();
            answers.push(match self.config.acme_challenge {
                AcmeChallenge::Http01 => {
                    if !super::is_challenge_token(&challenge.token) {
                        return Err(AcmeError::Refused(format!(
                            "the challenge token {:?} is not base64url",
                            challenge.token
                        )));
                    }
                    let file = self.challenges_dir.join(&challenge.token);
                    store::write_private(&file, answer.as_str().as_bytes())?;
                    file
                }
                AcmeChallenge::TlsAlpn01 => {
                    let (chain, key) = validation_certificate(name, answer.digest().as_ref())?;
                    let dir = store::tls_alpn_dir(&self.challenges_dir);
                    store::save(&dir, name, &chain, &key)?
                }
            });
            challenge.set_ready().await?;
        }
        let status = order
            .poll_ready(&RetryPolicy::new().timeout(ORDER_PATIENCE))
            .await?;
        if status == OrderStatus::Ready {
            return Ok(());
        }
        let mut reasons = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(authorization)) = authorizations.next().await {
            reasons.extend(
                authorization
                    .challenges
                    .iter()
                    .filter_map(|c| c.error.as_ref())
                    .map(|p| p.to_string()),
            );
        }
        if reasons.is_empty() {
            reasons.push(format!("order is {status:?}"));
        }
        Err(AcmeError::Refused(reasons.join("; ")))
    }
}

/// RFC 8737 §3's validation certificate for `name`: self-signed, `name` as its only
/// subjectAltName, and the critical `acmeIdentifier` extension holding `digest` (the SHA-256 of
/// the key authorization). Answers (certificate PEM, private key PEM).
fn validation_certificate(name: &str, digest: &[u8]) -> Result<(String, String), rcgen::Error> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}
