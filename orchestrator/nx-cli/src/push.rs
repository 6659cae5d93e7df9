//! `nx push`: verify locally, ask nxd for the deployment by the file's hash, and upload the file
//! (with a progress bar) only when nxd answers that it lacks it; nxd waits until it is ready.

use crate::client::Client;
use crate::{digests, output};
use anyhow::Context;
use nx_api::names::SandboxName;
use nx_api::volumes::{VolumeMount, VolumeSource};
use nx_api::{LimitsOverride, PushRequest, TcpRequest};
use nx_artifact::{image, verify};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct PushArgs {
    /// The binary: a Linux ELF executable for the host's architecture; or a bundle: a
    /// directory or a .tar / .tar.gz / .tgz archive of the program and its files, run
    /// read-only at /app (only the files nxd lacks are uploaded).
    #[arg(required_unless_present = "image", conflicts_with = "image")]
    binary: Option<PathBuf>,
    /// For a bundle: the program to run, relative to its top. Default: `entry` in its
    /// nx-bundle.toml, else its only executable at the top.
    #[arg(long, value_name = "PATH")]
    entry: Option<String>,
    /// For a bundle: argv[0] of the program (a multi-call binary picks its applet by it).
    /// Default: the entry's file name.
    #[arg(long, value_name = "NAME")]
    argv0: Option<String>,
    /// An image archive instead of a binary (`docker save`, `podman save`, an OCI archive, or
    /// `nix build .#sandbox-image`), run by Podman.
    #[arg(long, value_name = "ARCHIVE")]
    image: Option<PathBuf>,
    /// The sandbox to deploy into (created on first push): a-z, 0-9 and '-', at most 63.
    #[arg(long, short)]
    sandbox: String,
    /// Environment variable for the program, K=V; repeatable. `$NAME` or `${NAME}` in V is
    /// NX's variable (PORT, DATABASE_URL, PG*, NX_DATA_DIR, ...) or another of yours, `$$` a
    /// `$` (quote them for your shell: -e ATUIN_DB_URI='$DATABASE_URL').
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    env: Vec<String>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Run against a copy of production's database, made for this deployment and dropped
    /// with it.
    #[arg(long)]
    db_branch: bool,
    /// Where it runs: container (bubblewrap, or Podman for an image) or microvm (a static binary
    /// as the only program of a VM). Default: the sandbox's (`nx sandbox create --backend`),
    /// container for a new sandbox.
    #[arg(long, value_parser = ["container", "microvm"])]
    backend: Option<String>,
    /// For an image: the OCI runtime, runc (default) or runsc (gVisor: the program's system
    /// calls go to a user-space kernel; needs `runsc` on the host).
    #[arg(long, value_parser = ["runc", "runsc"], requires = "image")]
    runtime: Option<String>,
    /// How long the program may take to become ready (accept connections on $PORT), e.g.
    /// 60s or 2m; default: the sandbox's (`nx sandbox set --ready-timeout`), else nxd's
    /// (15 s unless configured); at most nxd's sandbox.max_ready_timeout_secs.
    #[arg(long, value_name = "DURATION", value_parser = whole_seconds)]
    ready_timeout: Option<u64>,
    /// The port the program listens on by itself (1-65535); it also gets it as PORT.
    /// Default: nxd picks one and passes it as PORT. Every deployment has its own network
    /// namespace, so two deployments may both listen on 8080.
    #[arg(long, value_name = "PORT", value_parser = parse_port)]
    port: Option<u16>,
    /// Connections out of the deployment's network namespace: none (only the router reaches
    /// in) or public (the internet through NAT; never the host, cloud metadata, private
    /// ranges or other deployments, unless nxd's network.allow lists them). Default: the
    /// sandbox's (`nx sandbox set --egress`), else none.
    #[arg(long, value_parser = EGRESS)]
    egress: Option<String>,
    /// Its port speaks raw TCP (Redis, NATS, MQTT), not HTTP: reach it at a host port of nxd's
    /// network.tcp_ports (`nx status` shows tcp://HOST:PORT for production and for this
    /// deployment) instead of a URL. `--tcp=PORT` asks for that host port for the sandbox's
    /// production (when it has none yet); plain `--tcp`: nxd picks a free one.
    #[arg(long, value_name = "HOST_PORT", num_args = 0..=1, require_equals = true, default_missing_value = "any", value_parser = parse_tcp)]
    tcp: Option<TcpRequest>,
    /// Declare it a service of its sandbox named NAME (lower case, digits, '-'): the
    /// sandbox's other deployments reach it as NAME on its port (NAME:$PORT); no other
    /// sandbox reaches it. A newer push of the same NAME takes the name over once it runs,
    /// unless production holds it.
    #[arg(long, value_name = "NAME")]
    service: Option<String>,
    #[command(flatten)]
    upkeep: crate::upkeep::UpkeepArgs,
    /// Mount the sandbox's volume NAME (`nx volume create`) read-write at PATH, e.g.
    /// files:/srv/files; repeatable. Its files outlive every deployment. Until this deployment
    /// is promoted it mounts an empty filesystem of the volume's size (or see --volume-branch,
    /// --volume-live); promoted, it restarts on production's volume itself.
    #[arg(long = "volume", value_name = "NAME:/PATH", value_parser = parse_volume)]
    volumes: Vec<VolumeMount>,
    /// Mount a copy of production's volume files, made now for this preview and deleted with
    /// it (or at its promotion): it sees production's files, its writes stay out of production.
    #[arg(long, requires = "volumes", conflicts_with = "volume_live")]
    volume_branch: bool,
    /// Mount production's live volumes even though this deployment is a preview: its writes
    /// are production's files at once.
    #[arg(long, requires = "volumes")]
    volume_live: bool,
    /// A pet, not cattle (microvm backend only): a long-lived guest whose VMM is pinned to CPUs
    /// of its own (systemd CPUAffinity, as many as --cpu gives it vCPUs, spread over the
    /// host's CPUs) and that has no memory balloon. `nx status` shows its tier and CPUs.
    #[arg(long)]
    persistent: bool,
    /// Arguments for the program; `$NAME` and `${NAME}` become the value of the program's
    /// variable NAME (`$PORT` its port), `$$` a `$` (quote them for your shell: '$PORT').
    #[arg(last = true)]
    args: Vec<String>,
}

// `--memory`, `--cpu`, `--tasks`: a deployment's limits; unset ones come from the sandbox's
// settings (`nx sandbox set`), else from nxd's `[limits]`.
// (Not a doc comment: see `defer` in main.rs.)
#[derive(clap::Args)]
pub struct LimitArgs {
    /// Memory limit in MiB (systemd MemoryMax); a microVM's at least 192 (64 for its VMM, 128
    /// of RAM for its guest).
    #[arg(long, value_name = "MIB")]
    memory: Option<u64>,
    /// CPU quota in percent of one CPU (systemd CPUQuota).
    #[arg(long, value_name = "PERCENT")]
    cpu: Option<u32>,
    /// Process and thread limit (systemd TasksMax).
    #[arg(long, value_name = "N")]
    tasks: Option<u64>,
    /// Size of /data in MiB (its own filesystem: writes past it get ENOSPC; at most the
    /// host's free disk less nxd's reserve); 0: no /data to write (read-only, empty).
    #[arg(long, value_name = "MIB")]
    disk: Option<u64>,
    /// Size of /tmp in MiB, and of /dev/shm beside it (each a tmpfs: RAM counted in --memory,
    /// so at most half of --memory; in a microVM at most half of the guest's RAM, --memory
    /// less 64, less 80 for its kernel and program: 24 for --memory 192; writes past it get
    /// ENOSPC). Default: nxd's limits.tmp_mb (64), or that most where it is less.
    #[arg(long, value_name = "MIB")]
    tmp: Option<u64>,
    /// Open-files limit (RLIMIT_NOFILE) of the program; default 65536, at most nxd's
    /// sandbox.max_nofile.
    #[arg(long, value_name = "N")]
    nofile: Option<u64>,
    /// The most the deployment's log takes on disk, in MiB, rotated files included.
    #[arg(long, value_name = "MIB")]
    log_max: Option<u64>,
}

impl LimitArgs {
    pub fn overrides(&self) -> LimitsOverride {
        LimitsOverride {
            memory_max_mb: self.memory,
            cpu_quota_percent: self.cpu,
            tasks_max: self.tasks,
            disk_mb: self.disk,
            tmp_mb: self.tmp,
            nofile: self.nofile,
            log_max_mb: self.log_max,
        }
    }
}

/// A duration (`humantime`: 30s, 2m, 1h) in whole seconds, rounded up, for the API's `*_secs`
/// fields.
pub fn whole_seconds(text: &str) -> Result<u64, String> {
    let d = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    Ok(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

/// `--tcp` (`any`: nxd picks) or `--tcp=PORT`, a port of the host (nxd checks it against its
/// `network.tcp_ports`), not the program's.
fn parse_tcp(s: &str) -> Result<TcpRequest, String> {
    if s == "any" {
        return Ok(TcpRequest::default());
    }
    match s.parse::<u16>() {
        Ok(port) if port > 0 => Ok(TcpRequest {
            host_port: Some(port),
        }),
        _ => Err(format!(
            "{s:?} is not a port: give the host port clients connect to, one of nxd's network.tcp_ports (30000-30999 unless configured), or --tcp alone and nxd picks one"
        )),
    }
}

fn parse_volume(s: &str) -> Result<VolumeMount, String> {
    VolumeMount::parse(s).map_err(|e| e.problem)
}

/// A port a program can listen on: 1-65535.
fn parse_port(s: &str) -> Result<u16, String> {
    match s.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        Ok(_) => Err(format!("{s} is not a port: give 1-65535")),
        Err(_) => Err(format!(
            "{s:?} is not a number: give the port the program listens on, 1-65535"
        )),
    }
}

pub fn parse_env(pairs: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    pairs
        .iter()
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("--env {pair:?} is not K=V"))?;
            nx_api::check_env_name(k).map_err(anyhow::Error::msg)?;
            Ok((k.to_owned(), v.to_owned()))
        })
        .collect()
}

/// What [`uploading_on_404`] shows on stderr while it uploads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shown {
    /// Nothing (`--json`).
    Nothing,
    /// A progress bar on a terminal, nothing else (`nx run-task`: its stderr is the task's).
    Bar,
    /// A line saying that it uploads, and the bar (`nx push`).
    LineAndBar,
}

/// Runs `call`, a request that names a local `file` by its sha256 (`sha`), and, when nxd
/// answers 404 and does not hold that file (then asked by hash), uploads it (showing what
/// `shown` says) and runs `call` again: a file nxd holds already costs no request of its own.
/// Returns `call`'s answer and whether the file was uploaded. Errors: `call`'s (a 404 about
/// something else as the second call answers it), the question's, the upload's.
pub async fn uploading_on_404<T, F, Fut>(
    client: &Client,
    file: &Path,
    sha: &str,
    shown: Shown,
    mut call: F,
) -> anyhow::Result<(T, bool)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    match call().await {
        Err(e) if status(&e) == Some(404) => {}
        answer => return Ok((answer?, false)),
    }
    match client.artifact(sha).await {
        // Stored meanwhile (another push of the same file at once, a CI matrix's): asked
        // again; a 404 then is about something else.
        Ok(_) => return Ok((call().await?, false)),
        Err(e) if e.status() == Some(404) => {}
        Err(e) => return Err(e.into()),
    }
    if shown == Shown::LineAndBar {
        eprintln!("nxd does not have {} yet: uploading it", &sha[..12]);
    }
    let (body, size, bar) = crate::client::upload_body(file, shown == Shown::Nothing).await?;
    let stored = client.upload_artifact(sha, body, size).await;
    bar.finish_and_clear();
    stored?;
    Ok((call().await?, true))
}

/// The HTTP status of an error nxd answered with.
fn status(e: &anyhow::Error) -> Option<u16> {
    e.downcast_ref::<crate::client::ClientError>()
        .and_then(crate::client::ClientError::status)
}

pub async fn run(client: &Client, args: PushArgs, json: bool) -> anyhow::Result<()> {
    let sandbox = SandboxName::parse(&args.sandbox)?;
    let env = parse_env(&args.env)?;
    let bundle_path = args
        .binary
        .as_deref()
        .filter(|p| nx_artifact::bundle::is_bundle_path(p));
    if bundle_path.is_none() && (args.entry.is_some() || args.argv0.is_some()) {
        anyhow::bail!("--entry and --argv0 are for bundles: push a directory or a .tar.gz");
    }
    if let Some(path) = bundle_path {
        let choices = nx_artifact::bundle::BundleChoices {
            entry: args.entry.clone(),
            argv0: args.argv0.clone(),
        };
        let (id, sent) = crate::bundle::store(client, path, &choices, json).await?;
        if !json {
            eprintln!(
                "bundle {}: sent {} of {} files ({} of {} bytes); starting a deployment of {sandbox}...",
                &id[..12],
                sent.files,
                sent.of_files,
                sent.bytes,
                sent.of_bytes
            );
        }
        let view = start(client, &request(&args, sandbox, id, env)).await?;
        return output::pushed(&view, sent.files > 0, Some(&sent), json);
    }
    // Checked and hashed, or known from an earlier push of the file unchanged (crate::digests);
    // nxd is asked for the push at once (see uploading_on_404).
    let (file, sha) = match (&args.binary, &args.image) {
        (Some(binary), _) => (
            binary,
            digests::checked_sha256(binary, |bytes, meta| {
                Ok(verify::verify_mapped(binary, bytes, meta).map(drop)?)
            })?,
        ),
        (None, Some(image)) => (
            image,
            digests::checked_sha256(image, |bytes, _| Ok(image::verify_image(bytes).map(drop)?))?,
        ),
        (None, None) => unreachable!("clap requires one"),
    };
    if !json {
        eprintln!("starting a deployment of {} in {sandbox}...", &sha[..12]);
    }
    let request = request(&args, sandbox, sha.clone(), env);
    let shown = if json {
        Shown::Nothing
    } else {
        Shown::LineAndBar
    };
    let (view, uploaded) =
        uploading_on_404(client, file, &sha, shown, || start(client, &request)).await?;
    output::pushed(&view, uploaded, None, json)
}

/// Asks nxd to start the deployment of an uploaded artifact. nxd records the deployment before
/// it starts it, so when nxd stops answering now the deployment may exist: the error says so
/// and how to look, so that the user does not push again blind.
async fn start(client: &Client, request: &PushRequest) -> anyhow::Result<nx_api::DeploymentView> {
    client.push(request).await.map_err(|e| {
        crate::client::cut_off(e, || format!(
            "nxd stopped answering while it started the deployment; it may have been made and may be running: look with `nx status {}` once nxd answers",
            request.sandbox
        ))
    })
}

/// What `--egress` takes (nx_api::Egress).
pub const EGRESS: [&str; 2] = ["none", "public"];

fn request(
    args: &PushArgs,
    sandbox: SandboxName,
    artifact: String,
    env: BTreeMap<String, String>,
) -> PushRequest {
    PushRequest {
        sandbox,
        artifact,
        env,
        args: args.args.clone(),
        limits: args.limits.overrides(),
        db_branch: args.db_branch,
        runtime: args
            .runtime
            .as_deref()
            .and_then(|r| r.parse().ok())
            .unwrap_or_default(),
        backend: args.backend.as_deref().and_then(|b| b.parse().ok()),
        ready_timeout_secs: args.ready_timeout,
        port: args.port,
        egress: args.egress.as_deref().and_then(|e| e.parse().ok()),
        health_check: args.upkeep.health_check(),
        idle_timeout_secs: args.upkeep.idle_timeout_secs(),
        volumes: args.volumes.clone(),
        tcp: args.tcp.clone(),
        service: args.service.clone(),
        volume_source: match (args.volume_branch, args.volume_live) {
            (true, _) => VolumeSource::Branch,
            (_, true) => VolumeSource::Live,
            _ => VolumeSource::Empty,
        },
        persistent: args.persistent,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tcp_takes_a_host_port_and_says_so_when_it_is_not_one() {
        let e = super::parse_tcp("abc").unwrap_err();
        assert!(
            e.contains("host port clients connect to") && e.contains("network.tcp_ports"),
            "{e}"
        );
        for bad in ["0", "70000", "-1", ""] {
            assert!(super::parse_tcp(bad).is_err(), "{bad}");
        }
        assert_eq!(super::parse_tcp("30100").unwrap().host_port, Some(30100));
        assert_eq!(super::parse_tcp("any").unwrap().host_port, None);
    }
}
