//! Custom domains (`nx domain`): table `domains`, one sandbox per domain. A domain serves its
//! sandbox's production deployment (its route is the production route under another name)
//! and gets a certificate like a production host.

use crate::api::domains::{check_domain, CertificateState, CertificateStatus, DomainView};
use crate::error::Error;
use crate::names::SandboxName;
use crate::router::{Route, RouteTable};
use crate::Orchestrator;

/// (domain, sandbox) rows.
async fn rows(
    pool: &sqlx::PgPool,
    sandbox: Option<&SandboxName>,
) -> Result<Vec<(String, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT name, sandbox FROM domains WHERE $1::text IS NULL OR sandbox = $1 ORDER BY name",
    )
    .bind(sandbox.map(SandboxName::as_str))
    .fetch_all(pool)
    .await
}

/// The routes of `domains`: each a copy of its sandbox's production route in `table`, under
/// the domain's name (a sandbox without production has none).
pub fn routes(table: &RouteTable, domains: &[(String, String)], base_domain: &str) -> Vec<Route> {
    domains
        .iter()
        .filter_map(|(domain, sandbox)| {
            let production = format!("{sandbox}.{}", base_domain.to_ascii_lowercase());
            table
                .routes
                .iter()
                .find(|r| r.host == production)
                .map(|r| Route {
                    host: domain.clone(),
                    ..r.clone()
                })
        })
        .collect()
}

impl Orchestrator {
    /// Every custom domain, for `rebuild_routes`.
    pub(crate) async fn domain_rows(&self) -> Result<Vec<(String, String)>, Error> {
        Ok(rows(self.state.pool(), None)
            .await
            .map_err(crate::state::StateError::from)?)
    }

    fn domain_view(&self, domain: String, sandbox: String) -> DomainView {
        let base = self.config.base_domain.to_ascii_lowercase();
        let certificate = match &self.certificates {
            None => CertificateStatus::of(CertificateState::Off),
            Some(acme) => acme.statuses().remove(&domain).unwrap_or(CertificateStatus {
                error: Some(format!(
                    "sandbox {sandbox} has no production deployment yet: `nx promote {sandbox} <deployment>`"
                )),
                ..CertificateStatus::of(CertificateState::Pending)
            }),
        };
        DomainView {
            dns_record: format!(
                "{domain}. CNAME {sandbox}.{base}. (or A/AAAA records with this host's addresses)"
            ),
            domain,
            sandbox,
            certificate,
        }
    }

    /// Adds `domain` to `sandbox` (again: nothing changes). Errors: `Invalid` (not a domain
    /// name, or NX's own base domain), `NotFound` (no sandbox), `Conflict` (another sandbox
    /// holds it).
    #[tracing::instrument(skip(self))]
    pub async fn add_domain(
        &self,
        sandbox: &SandboxName,
        domain: &str,
    ) -> Result<DomainView, Error> {
        let domain = check_domain(domain)?;
        let base = self.config.base_domain.to_ascii_lowercase();
        if domain == base || domain.ends_with(&format!(".{base}")) {
            return Err(Error::Invalid(format!(
                "domain: {domain} is under this host's base_domain {base}, whose names NX gives itself ({sandbox}.{base} is the production URL already); add a domain of your own"
            )));
        }
        self.existing(sandbox).await?;
        let _guard = self.changes.lock().await;
        let holder: (String,) = sqlx::query_as(
            "INSERT INTO domains (name, sandbox) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET name = EXCLUDED.name RETURNING sandbox",
        )
        .bind(&domain)
        .bind(sandbox.as_str())
        .fetch_one(self.state.pool())
        .await
        .map_err(crate::state::StateError::from)?;
        if holder.0 != sandbox.as_str() {
            return Err(Error::Conflict(format!(
                "domain {domain} belongs to sandbox {}; `nx domain rm {domain}` there first",
                holder.0
            )));
        }
        tracing::info!(domain, "custom domain added");
        self.rebuild_routes().await?;
        Ok(self.domain_view(domain, sandbox.to_string()))
    }

    /// The custom domains of `sandbox`, or of every sandbox, with their certificates.
    pub async fn domains(&self, sandbox: Option<&SandboxName>) -> Result<Vec<DomainView>, Error> {
        if let Some(sandbox) = sandbox {
            self.existing(sandbox).await?;
        }
        let rows = rows(self.state.pool(), sandbox)
            .await
            .map_err(crate::state::StateError::from)?;
        Ok(rows
            .into_iter()
            .map(|(domain, sandbox)| self.domain_view(domain, sandbox))
            .collect())
    }

    /// Removes a custom domain (its stored certificate stays until it expires). Errors:
    /// `NotFound`.
    #[tracing::instrument(skip(self))]
    pub async fn remove_domain(&self, domain: &str) -> Result<(), Error> {
        let domain = check_domain(domain)?;
        let _guard = self.changes.lock().await;
        let done = sqlx::query("DELETE FROM domains WHERE name = $1")
            .bind(&domain)
            .execute(self.state.pool())
            .await
            .map_err(crate::state::StateError::from)?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound(format!(
                "no custom domain {domain}; `nx domain ls` lists them"
            )));
        }
        tracing::info!(domain, "custom domain removed");
        self.rebuild_routes().await
    }
}
