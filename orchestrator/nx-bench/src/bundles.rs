//! Bundles: `nx push ./dir` of a 200 MiB bundle (the static sample app and 50 files of 4 MiB of
//! random bytes) with every file new, against a re-push with one file changed and a re-push with
//! nothing changed; bytes sent as `nx --json push` reports them (`sent`), and the time to a
//! ready deployment.

use nx_testkit::Host;
use rand::RngCore;
use std::path::Path;
use std::time::{Duration, Instant};

/// Files besides the program, and the size of each.
pub const FILES: usize = 50;
pub const FILE_MIB: usize = 4;

/// One kind of push, measured over the rounds.
#[derive(Default)]
pub struct Kind {
    pub times: Vec<Duration>,
    /// Bytes the CLI uploaded, per round.
    pub sent: Vec<u64>,
}

pub struct Figures {
    pub full: Kind,
    pub one_changed: Kind,
    pub unchanged: Kind,
}

fn random_file(path: &Path) -> anyhow::Result<()> {
    let mut bytes = vec![0u8; FILE_MIB << 20];
    rand::thread_rng().fill_bytes(&mut bytes);
    std::fs::write(path, bytes)?;
    Ok(())
}

/// Pushes `dir` and removes the deployment again; (time to ready, bytes sent).
fn push(host: &Host, dir: &Path) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let out = host.nx_json(&[
        "push",
        dir.to_str().expect("utf-8"),
        "--entry",
        "server",
        "--sandbox",
        "bundles",
    ]);
    let took = started.elapsed();
    let sent = out["sent"]["bytes"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no bytes sent in {out}"))?;
    host.nx_json(&["rm", out["deployment"]["id"].as_str().unwrap_or_default()]);
    Ok((took, sent))
}

/// `rounds` of: every file new, then one changed, then none.
pub fn run_rounds(host: &Host, rounds: usize) -> anyhow::Result<Figures> {
    let dir = host.path("bench-bundle");
    std::fs::create_dir_all(dir.join("assets"))?;
    std::fs::copy(nx_testkit::sample_app(), dir.join("server"))?;
    let mut figures = Figures {
        full: Kind::default(),
        one_changed: Kind::default(),
        unchanged: Kind::default(),
    };
    for _ in 0..rounds {
        for i in 0..FILES {
            random_file(&dir.join(format!("assets/{i:02}.bin")))?;
        }
        for (kind, change) in [
            (&mut figures.full, false),
            (&mut figures.one_changed, true),
            (&mut figures.unchanged, false),
        ] {
            if change {
                random_file(&dir.join("assets/07.bin"))?;
            }
            let (took, sent) = push(host, &dir)?;
            kind.times.push(took);
            kind.sent.push(sent);
        }
    }
    Ok(figures)
}
