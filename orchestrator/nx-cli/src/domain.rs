//! `nx domain`: custom domains that serve a sandbox's production deployment over HTTPS.

use crate::client::Client;
use crate::output::print_json;
use nx_api::domains::{AddDomain, CertificateState, DomainView};
use nx_api::names::SandboxName;

#[derive(clap::Subcommand)]
#[command(defer = true)]
pub enum DomainCommand {
    /// Serve a sandbox's production deployment at a domain of your own; prints the DNS record
    /// to create and the certificate's state.
    Add { sandbox: String, domain: String },
    /// List custom domains (of one sandbox) with their certificates.
    Ls { sandbox: Option<String> },
    /// Stop serving a custom domain.
    Rm { domain: String },
}

/// "valid until 2027-01-31", "failed (reason), next attempt in 120 s", ...
fn certificate(view: &DomainView) -> String {
    let c = &view.certificate;
    let date = |secs: i64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0) as u64),
        )
        .to_string()
    };
    let mut text = match c.state {
        CertificateState::Valid => format!(
            "certificate valid until {}",
            c.not_after.map_or("?".into(), date)
        ),
        CertificateState::Pending => "certificate pending".into(),
        CertificateState::Failed => "certificate FAILED".into(),
        CertificateState::Fixed => "served with the fixed certificate (tls.cert_file)".into(),
        CertificateState::Off => "no certificate: HTTPS or ACME is off on this host".into(),
    };
    if let Some(error) = &c.error {
        text.push_str(&format!(": {error}"));
    }
    if let Some(at) = c.next_attempt {
        text.push_str(&format!(" (next attempt {})", date(at)));
    }
    text
}

pub async fn run(client: &Client, cmd: DomainCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        DomainCommand::Add { sandbox, domain } => {
            let sandbox = SandboxName::parse(&sandbox)?;
            let view = client.add_domain(&sandbox, &AddDomain { domain }).await?;
            if json {
                return print_json(&view);
            }
            println!(
                "{} serves {}'s production deployment",
                view.domain, view.sandbox
            );
            println!("create this DNS record: {}", view.dns_record);
            println!("{}", certificate(&view));
        }
        DomainCommand::Ls { sandbox } => {
            let sandbox = sandbox.as_deref().map(SandboxName::parse).transpose()?;
            let views = client.domains(sandbox.as_ref()).await?;
            if json {
                return print_json(&views);
            }
            for view in &views {
                println!("{} {} {}", view.domain, view.sandbox, certificate(view));
            }
        }
        DomainCommand::Rm { domain } => {
            let done = client.remove_domain(&domain).await?;
            if json {
                return print_json(&done);
            }
            println!("{} removed", done.removed);
        }
    }
    Ok(())
}
