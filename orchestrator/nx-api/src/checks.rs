//! The checks every request's program input and limits pass before nxd stores or starts
//! anything: a [`FieldError`] names the JSON field at fault (`limits.memory_max_mb`,
//! `args[2]`, `env.KEY`) and says what would be accepted.

use crate::kinds::{
    check_env_name, guest_memory_mb, BackendKind, Limits, GUEST_ROOM_MB, MIN_GUEST_MB,
    VMM_OVERHEAD_MB,
};
use std::collections::BTreeMap;

/// The smallest `MemoryMax` a deployment or task may ask for, in MiB: below it not even the
/// sandbox's own processes start.
pub const MIN_MEMORY_MB: u64 = 16;
/// The smallest `MemoryMax` of a microVM deployment or task, in MiB: its VMM's share and the
/// least RAM its guest boots in.
pub const MIN_MICROVM_MEMORY_MB: u64 = VMM_OVERHEAD_MB + MIN_GUEST_MB;
/// The smallest `TasksMax`: the launcher, bubblewrap and the program itself.
pub const MIN_TASKS: u64 = 4;
/// The longest single argument or environment string, in bytes: the kernel's
/// `MAX_ARG_STRLEN` (32 pages, see execve(2)), less its NUL.
pub const MAX_STRING_BYTES: usize = 32 * 4096 - 1;

/// A request field that cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// The field's JSON path, e.g. `limits.memory_max_mb`, `args[1]`, `env.KEY`.
    pub field: String,
    /// What is wrong and what would be accepted.
    pub problem: String,
}

fn fail<T>(field: impl Into<String>, problem: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError {
        field: field.into(),
        problem: problem.into(),
    })
}

/// What requests are held to: sizes from nxd's config, upper limits from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestBounds {
    /// All arguments together, in bytes (each counted with its NUL, as execve(2) does).
    pub max_args_bytes: usize,
    /// All `-e` variables together, in bytes (`KEY=value` and its NUL each).
    pub max_env_bytes: usize,
    /// The host's memory, in MiB.
    pub max_memory_mb: u64,
    /// The host's CPUs, in percent of one.
    pub max_cpu_quota_percent: u32,
    /// The most processes and threads one deployment or task may have: the host's `pid_max`,
    /// or less where nxd's config says (`systemd.sandbox_tasks_max`).
    pub max_tasks: u64,
    /// The largest open-files limit (`sandbox.max_nofile`).
    pub max_nofile: u64,
    /// The longest a deployment may take to become ready, in seconds
    /// (`sandbox.max_ready_timeout_secs`).
    pub max_ready_timeout_secs: u64,
    /// What the filesystem of nxd's state directory (which holds `/data`'s images and the
    /// logs) has free, in MiB (statvfs(3) `f_bavail`).
    pub disk_free_mb: u64,
    /// What nxd keeps free of it, in MiB: a `/data` or a log cap must fit in
    /// `disk_free_mb - disk_reserve_mb - disk_promised_mb`.
    pub disk_reserve_mb: u64,
    /// What the logs of the deployments already on this host may still write there, in MiB:
    /// each one's `limits.log_max_mb` less what its log files hold (0 where no deployment's
    /// disk is at stake, e.g. a sandbox's settings).
    pub disk_promised_mb: u64,
    /// The largest log cap a deployment may ask for (`limits.log_max_mb`), in MiB
    /// (`sandbox.max_log_mb`).
    pub max_log_mb: u64,
}

fn check_string(field: &str, value: &str) -> Result<(), FieldError> {
    if value.contains('\0') {
        return fail(
            field,
            "contains a NUL byte, which no program argument or environment value can hold",
        );
    }
    if value.len() > MAX_STRING_BYTES {
        return fail(
            field,
            format!(
                "{} bytes, above the kernel's {MAX_STRING_BYTES} for one argument or variable",
                value.len()
            ),
        );
    }
    Ok(())
}

/// An environment value is one line of text: a newline or another control character (tab
/// aside) would end it early where a tool reads variables a line each (Podman's `--env-file`:
/// a value `a\nLD_PRELOAD=...` set a second variable; attacker s9).
fn check_env_value(field: &str, value: &str) -> Result<(), FieldError> {
    match value.chars().find(|c| c.is_control() && *c != '\t') {
        Some(c) => fail(
            field,
            format!(
                "holds the control character U+{:04X}, which no environment value may: keep it to one line; pass multi-line values (keys, certificates) encoded (base64) or through a file in /data or the database",
                u32::from(c)
            ),
        ),
        None => Ok(()),
    }
}

/// Arguments and environment of a program: no NUL, no string the kernel would refuse, totals
/// within the bounds, variable names the shell's and not NX's own, values of one line.
pub fn check_program_input(
    args: &[String],
    env: &BTreeMap<String, String>,
    bounds: &RequestBounds,
) -> Result<(), FieldError> {
    for (i, arg) in args.iter().enumerate() {
        check_string(&format!("args[{i}]"), arg)?;
    }
    let args_bytes: usize = args.iter().map(|a| a.len() + 1).sum();
    if args_bytes > bounds.max_args_bytes {
        return fail(
            "args",
            format!(
                "{args_bytes} bytes in all, above this host's {} (sandbox.max_args_bytes); pass large input through the database or a file in /data",
                bounds.max_args_bytes
            ),
        );
    }
    for (name, value) in env {
        let field = format!("env.{}", name.replace('\0', "\\0"));
        check_env_name(name).or_else(|problem| fail(&field, problem))?;
        check_string(&field, value)?;
        check_env_value(&field, value)?;
    }
    let env_bytes: usize = env.iter().map(|(k, v)| k.len() + v.len() + 2).sum();
    if env_bytes > bounds.max_env_bytes {
        return fail(
            "env",
            format!(
                "{env_bytes} bytes in all, above this host's {} (sandbox.max_env_bytes)",
                bounds.max_env_bytes
            ),
        );
    }
    Ok(())
}

fn check_range(field: &str, value: u64, min: u64, max: u64, unit: &str) -> Result<(), FieldError> {
    if value < min || value > max {
        return fail(
            field,
            format!("{value} is out of range: give {min} to {max}{unit} on this host"),
        );
    }
    Ok(())
}

/// A deployment's limits on `backend`, within what the sandbox needs and the host has.
pub fn check_limits(
    limits: &Limits,
    backend: BackendKind,
    bounds: &RequestBounds,
) -> Result<(), FieldError> {
    check_memory(
        "limits.memory_max_mb",
        limits.memory_max_mb,
        backend,
        bounds,
    )?;
    check_range(
        "limits.cpu_quota_percent",
        u64::from(limits.cpu_quota_percent),
        1,
        u64::from(bounds.max_cpu_quota_percent),
        " percent of one CPU",
    )?;
    check_range(
        "limits.tasks_max",
        limits.tasks_max,
        MIN_TASKS,
        bounds.max_tasks,
        " processes and threads (systemd.sandbox_tasks_max: all of a sandbox's deployments together)",
    )?;
    check_sandbox_sizes(limits, backend, bounds)
}

/// The smallest `/data` image that holds an ext4 filesystem and some data, in MiB.
pub const MIN_DISK_MB: u64 = 16;
/// The largest `/data` image (ext4 with 4 KiB blocks ends at 16 TiB), in MiB.
pub const MAX_DISK_MB: u64 = 16 << 20;
/// The fewest open files a program may be limited to (its standard streams, a socket, ...).
pub const MIN_NOFILE: u64 = 64;

/// The sizes of a deployment's sandbox: `/data` 0 (none to write) or an image of 16 MiB or
/// more; `/tmp` at least 1 MiB and no more than [`Limits::tmp_max_mb`] on `backend` (`/tmp`
/// and `/dev/shm` are each a tmpfs of `tmp_mb`, RAM counted in `memory_max_mb`, so both full
/// still fit: review14 #3 and review15 #5, where both full was an OOM kill, not ENOSPC); the open-files limit
/// within `sandbox.max_nofile`; a log cap of 1 MiB to `sandbox.max_log_mb`; `/data` and the
/// log cap each within the host's free disk less its reserve and what other deployments' logs
/// may still write ([`check_room`]).
fn check_sandbox_sizes(
    limits: &Limits,
    backend: BackendKind,
    bounds: &RequestBounds,
) -> Result<(), FieldError> {
    if limits.disk_mb != 0 {
        check_range(
            "limits.disk_mb",
            limits.disk_mb,
            MIN_DISK_MB,
            MAX_DISK_MB,
            " MiB (or 0: no /data to write)",
        )?;
        check_room("limits.disk_mb", limits.disk_mb, bounds)?;
    }
    let why = match backend {
        BackendKind::Container => " MiB, half of limits.memory_max_mb (/tmp and /dev/shm are each a tmpfs of this size, both RAM counted in limits.memory_max_mb: both full must fit in it, or the program is killed for memory instead of getting ENOSPC; pass a smaller --tmp or a larger --memory)".to_owned(),
        BackendKind::Microvm => format!(
            " MiB in a microVM: half of its guest's RAM ({} MiB: limits.memory_max_mb less {VMM_OVERHEAD_MB} MiB for the VMM) less {GUEST_ROOM_MB} MiB for the guest's kernel and program (/tmp and /dev/shm are each a tmpfs of this size in the guest's RAM: both full must fit beside them, or the guest's OOM killer ends the program instead of it getting ENOSPC; pass a smaller --tmp or a larger --memory)",
            guest_memory_mb(limits.memory_max_mb)
        ),
    };
    check_range(
        "limits.tmp_mb",
        limits.tmp_mb,
        1,
        limits.tmp_max_mb(backend),
        &why,
    )?;
    check_range(
        "limits.nofile",
        limits.nofile,
        MIN_NOFILE,
        bounds.max_nofile,
        " open files",
    )?;
    check_range(
        "limits.log_max_mb",
        limits.log_max_mb,
        1,
        bounds.max_log_mb,
        " MiB (sandbox.max_log_mb)",
    )?;
    check_room("limits.log_max_mb", limits.log_max_mb, bounds)
}

/// Refuses `mb` of the host's disk (a `/data` image's size, a log cap) that the state
/// directory's filesystem cannot hold beside nxd's reserve and what the deployments' logs may
/// still write: a quota past what is free is no quota (attacker s8 F2: a 4 TiB `/data` was
/// accepted with 29 GB free; s9 F2b: log caps each within the free space added up past it).
fn check_room(field: &str, mb: u64, bounds: &RequestBounds) -> Result<(), FieldError> {
    let room = bounds
        .disk_free_mb
        .saturating_sub(bounds.disk_reserve_mb)
        .saturating_sub(bounds.disk_promised_mb);
    if mb > room {
        return fail(
            field,
            format!(
                "{mb} MiB does not fit on this host: the filesystem of nxd's state directory has {} MiB free, of which nxd keeps {} MiB in reserve and the logs of the deployments here may still write {} MiB (their caps, less what they hold); give at most {room} MiB, remove deployments you no longer need (nx rm), or ask the host's operator to free space",
                bounds.disk_free_mb, bounds.disk_reserve_mb, bounds.disk_promised_mb
            ),
        );
    }
    Ok(())
}

/// A readiness timeout a push or a sandbox's settings ask for (`ready_timeout_secs`): 1 s to
/// the host's `sandbox.max_ready_timeout_secs`; none asked for is fine.
pub fn check_ready_timeout(secs: Option<u64>, bounds: &RequestBounds) -> Result<(), FieldError> {
    match secs {
        Some(secs) => check_range(
            "ready_timeout_secs",
            secs,
            1,
            bounds.max_ready_timeout_secs,
            " s",
        ),
        None => Ok(()),
    }
}

/// A memory limit (`field` names it), within what the sandbox needs and the host has.
pub fn check_memory(
    field: &str,
    mb: u64,
    backend: BackendKind,
    bounds: &RequestBounds,
) -> Result<(), FieldError> {
    match backend {
        BackendKind::Container => check_range(field, mb, MIN_MEMORY_MB, bounds.max_memory_mb, " MiB"),
        BackendKind::Microvm => check_range(
            field,
            mb,
            MIN_MICROVM_MEMORY_MB,
            bounds.max_memory_mb,
            &format!(" MiB for a microVM ({VMM_OVERHEAD_MB} MiB for its VMM and at least {MIN_GUEST_MB} MiB of RAM for its guest, whose kernel does not boot in less: give --memory {MIN_MICROVM_MEMORY_MB} or more)"),
        ),
    }
}

/// A service name (`PushRequest.service`): a DNS label as RFC 1123 §2.1 has it, lower case:
/// 1-63 of `a-z`, `0-9` and `-`, neither first nor last a `-`; not `localhost`.
pub fn check_service_name(name: &str) -> Result<(), FieldError> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name != "localhost";
    if ok {
        Ok(())
    } else {
        fail(
            "service",
            format!("{name:?} is not a service name: use 1-63 lower-case letters, digits and '-' (not first or last), e.g. cache or api-v2; not localhost"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOUNDS: RequestBounds = RequestBounds {
        max_args_bytes: 100,
        max_env_bytes: 100,
        max_memory_mb: 1024,
        max_cpu_quota_percent: 200,
        max_tasks: 1000,
        max_nofile: 65_536,
        max_ready_timeout_secs: 600,
        disk_free_mb: 4096,
        disk_reserve_mb: 1024,
        disk_promised_mb: 0,
        max_log_mb: 2048,
    };

    fn field(r: Result<(), FieldError>) -> String {
        r.unwrap_err().field
    }

    #[test]
    fn each_bad_input_names_its_field() {
        let env = BTreeMap::new();
        assert_eq!(
            field(check_program_input(
                &["ok".into(), "a\0b".into()],
                &env,
                &BOUNDS
            )),
            "args[1]"
        );
        assert_eq!(
            field(check_program_input(&["x".repeat(100)], &env, &BOUNDS)),
            "args"
        );
        let env = BTreeMap::from([("KEY".to_string(), "a\0".to_string())]);
        assert_eq!(field(check_program_input(&[], &env, &BOUNDS)), "env.KEY");
        let env = BTreeMap::from([("KEY".to_string(), "a\nLD_PRELOAD=/x.so".to_string())]);
        assert_eq!(
            check_program_input(&[], &env, &BOUNDS).unwrap_err().to_string(),
            "env.KEY: holds the control character U+000A, which no environment value may: keep it to one line; pass multi-line values (keys, certificates) encoded (base64) or through a file in /data or the database"
        );
        let tab = BTreeMap::from([("KEY".to_string(), "a\tb".to_string())]);
        assert!(check_program_input(&[], &tab, &BOUNDS).is_ok());
        let env = BTreeMap::from([("NX_X".to_string(), "a".to_string())]);
        assert_eq!(field(check_program_input(&[], &env, &BOUNDS)), "env.NX_X");
        let zero = Limits {
            memory_max_mb: 0,
            ..Limits::default()
        };
        assert_eq!(
            field(check_limits(&zero, BackendKind::Container, &BOUNDS)),
            "limits.memory_max_mb"
        );
        let huge = Limits {
            tasks_max: 0,
            ..Limits::default()
        };
        assert_eq!(
            field(check_limits(&huge, BackendKind::Container, &BOUNDS)),
            "limits.tasks_max"
        );
        for (bad, name) in [
            (
                Limits {
                    disk_mb: 8,
                    ..Limits::default()
                },
                "limits.disk_mb",
            ),
            (
                Limits {
                    tmp_mb: 1024,
                    ..Limits::default()
                },
                "limits.tmp_mb",
            ),
            (
                Limits {
                    nofile: 1 << 20,
                    ..Limits::default()
                },
                "limits.nofile",
            ),
            (
                Limits {
                    log_max_mb: 0,
                    ..Limits::default()
                },
                "limits.log_max_mb",
            ),
        ] {
            assert_eq!(
                field(check_limits(&bad, BackendKind::Container, &BOUNDS)),
                name
            );
        }
        // Past the free space less the reserve (3072 MiB here): refused with the numbers.
        let too_large = Limits {
            disk_mb: 3073,
            ..Limits::default()
        };
        let refused = check_limits(&too_large, BackendKind::Container, &BOUNDS)
            .unwrap_err()
            .to_string();
        assert_eq!(
            refused,
            "limits.disk_mb: 3073 MiB does not fit on this host: the filesystem of nxd's state directory has 4096 MiB free, of which nxd keeps 1024 MiB in reserve and the logs of the deployments here may still write 0 MiB (their caps, less what they hold); give at most 3072 MiB, remove deployments you no longer need (nx rm), or ask the host's operator to free space"
        );
        // A log cap past sandbox.max_log_mb (2048 here) is refused naming the key.
        let log = Limits {
            log_max_mb: 2049,
            ..Limits::default()
        };
        assert_eq!(
            check_limits(&log, BackendKind::Container, &BOUNDS).unwrap_err().to_string(),
            "limits.log_max_mb: 2049 is out of range: give 1 to 2048 MiB (sandbox.max_log_mb) on this host"
        );
        // Within it, but past what other deployments' logs leave (4096 - 1024 - 1500 = 1572).
        let log = Limits {
            log_max_mb: 2048,
            ..Limits::default()
        };
        assert!(check_limits(&log, BackendKind::Container, &BOUNDS).is_ok());
        let promised = RequestBounds {
            disk_promised_mb: 1500,
            ..BOUNDS
        };
        let refused = check_limits(&log, BackendKind::Container, &promised)
            .unwrap_err()
            .to_string();
        assert!(
            refused.starts_with("limits.log_max_mb: 2048 MiB does not fit on this host")
                && refused.contains("may still write 1500 MiB")
                && refused.contains("give at most 1572 MiB"),
            "{refused}"
        );
        let fine = Limits {
            cpu_quota_percent: 200,
            disk_mb: 0,
            ..Limits::default()
        };
        assert!(check_limits(&fine, BackendKind::Container, &BOUNDS).is_ok());
        let fits = Limits {
            disk_mb: 3072,
            ..Limits::default()
        };
        assert!(check_limits(&fits, BackendKind::Container, &BOUNDS).is_ok());
        assert!(check_program_input(&["a".into()], &BTreeMap::new(), &BOUNDS).is_ok());
    }

    /// Review14 #3: `/tmp` and `/dev/shm` are each `tmp_mb` of RAM in `memory_max_mb`; a
    /// `--tmp` equal to `--memory` let both full reach MemoryMax (an OOM kill, not ENOSPC).
    #[test]
    fn tmp_is_at_most_half_the_memory_as_dev_shm_is_as_large_and_lowered_there_unasked() {
        let limits = |memory_max_mb, tmp_mb| Limits {
            memory_max_mb,
            tmp_mb,
            ..Limits::default()
        };
        let refused = check_limits(&limits(64, 64), BackendKind::Container, &BOUNDS)
            .unwrap_err()
            .to_string();
        assert!(
            refused.starts_with("limits.tmp_mb: 64 is out of range: give 1 to 32 MiB")
                && refused.contains("/dev/shm")
                && refused.contains("--tmp"),
            "{refused}"
        );
        assert_eq!(
            field(check_limits(
                &limits(64, 33),
                BackendKind::Container,
                &BOUNDS
            )),
            "limits.tmp_mb"
        );
        assert!(check_limits(&limits(64, 32), BackendKind::Container, &BOUNDS).is_ok());
        assert!(check_limits(&limits(16, 8), BackendKind::Container, &BOUNDS).is_ok());
        // A push that asks for no tmp gets the default (64) or half its memory, not a refusal.
        let asked = |memory_max_mb, tmp_mb| {
            crate::wire::LimitsOverride {
                memory_max_mb: Some(memory_max_mb),
                tmp_mb,
                ..Default::default()
            }
            .apply(Limits::default(), BackendKind::Container)
        };
        assert_eq!(asked(64, None).tmp_mb, 32);
        assert!(check_limits(&asked(64, None), BackendKind::Container, &BOUNDS).is_ok());
        assert_eq!(asked(512, None).tmp_mb, 64);
        assert_eq!(asked(64, Some(64)).tmp_mb, 64);
        assert_eq!(
            field(check_limits(
                &asked(64, Some(64)),
                BackendKind::Container,
                &BOUNDS
            )),
            "limits.tmp_mb"
        );
    }

    /// Review15 #5: a microVM's /tmp and /dev/shm are its guest's RAM, 64 MiB less than
    /// `memory_max_mb`, beside its kernel and program: `--memory 192` (a 128 MiB guest) got 64
    /// MiB of each, so filling them was the guest's OOM kill.
    #[test]
    fn a_microvms_tmp_is_at_most_half_its_guests_ram_less_the_kernels_room() {
        let limits = |memory_max_mb, tmp_mb| Limits {
            memory_max_mb,
            tmp_mb,
            ..Limits::default()
        };
        let vm = BackendKind::Microvm;
        assert_eq!(limits(192, 0).tmp_max_mb(vm), (128 - GUEST_ROOM_MB) / 2);
        assert_eq!(limits(192, 0).tmp_max_mb(BackendKind::Container), 96);
        assert_eq!(limits(512, 0).tmp_max_mb(vm), (448 - GUEST_ROOM_MB) / 2);
        let most = (128 - GUEST_ROOM_MB) / 2;
        let refused = check_limits(&limits(192, most + 1), vm, &BOUNDS)
            .unwrap_err()
            .to_string();
        assert!(
            refused.starts_with(&format!(
                "limits.tmp_mb: {} is out of range: give 1 to {most} MiB in a microVM",
                most + 1
            )) && refused.contains("guest's RAM (128 MiB")
                && refused.contains("--tmp"),
            "{refused}"
        );
        assert!(check_limits(&limits(192, most), vm, &BOUNDS).is_ok());
        assert!(check_limits(&limits(192, 96), BackendKind::Container, &BOUNDS).is_ok());
        // A guest of less than 128 MiB does not boot: refused, saying how much to give.
        let refused = check_limits(&limits(128, 8), vm, &BOUNDS)
            .unwrap_err()
            .to_string();
        assert!(
            refused.starts_with(
                "limits.memory_max_mb: 128 is out of range: give 192 to 1024 MiB for a microVM"
            ) && refused.contains("--memory 192"),
            "{refused}"
        );
        assert!(check_limits(&limits(128, 8), BackendKind::Container, &BOUNDS).is_ok());
        // One not asked for is lowered to the most, on each backend.
        let asked = |backend| {
            crate::wire::LimitsOverride {
                memory_max_mb: Some(192),
                ..Default::default()
            }
            .apply(Limits::default(), backend)
        };
        assert_eq!(asked(vm).tmp_mb, most);
        assert!(check_limits(&asked(vm), vm, &BOUNDS).is_ok());
        assert_eq!(asked(BackendKind::Container).tmp_mb, 64);
    }

    #[test]
    fn a_ready_timeout_is_within_one_second_and_the_hosts_maximum() {
        assert!(check_ready_timeout(None, &BOUNDS).is_ok());
        assert!(check_ready_timeout(Some(600), &BOUNDS).is_ok());
        let e = check_ready_timeout(Some(601), &BOUNDS).unwrap_err();
        assert_eq!(e.field, "ready_timeout_secs");
        assert!(e.problem.contains("give 1 to 600 s"), "{e}");
        assert!(check_ready_timeout(Some(0), &BOUNDS).is_err());
    }

    #[test]
    fn service_names_are_lower_case_dns_labels() {
        for good in ["cache", "api-v2", "a", "x1"] {
            assert!(check_service_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Cache",
            "-a",
            "a-",
            "a.b",
            "a_b",
            "localhost",
            &"a".repeat(64),
        ] {
            assert!(check_service_name(bad).is_err(), "{bad}");
        }
    }
}
