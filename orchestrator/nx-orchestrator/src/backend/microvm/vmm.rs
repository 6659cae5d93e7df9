//! VMM command lines for one guest: QEMU's `microvm` machine (run here, in the deployment's
//! network namespace, user-mode network with the deployment's port forwarded in from its own
//! address, the database forwarded out and, with `--egress public`, connections out), and Cloud
//! Hypervisor and Firecracker (on NixOS, from nixpkgs and microvm.nix, on a tap device that the
//! host's network config provides).

use serde::{Deserialize, Serialize};
use std::path::Path;

/// How the guest's CPU runs.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, strum::Display)]
#[serde(rename_all = "lowercase")]
#[strum(serialize_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization, /dev/kvm.
    Kvm,
    /// QEMU's software emulation.
    Tcg,
}

/// Where the guest finds the database: QEMU forwards this address to the host's socket.
pub const GUEST_DB_ADDR: &str = "10.0.2.100";
/// The uid (and gid) nx-vm-init runs the program as, inside the guest.
pub const GUEST_APP_UID: u32 = 1000;
/// The guest's own address on QEMU's user-mode network.
pub const GUEST_ADDR: &str = "10.0.2.15";

/// One guest.
pub struct Guest<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub memory_mb: u64,
    pub vcpus: u32,
    /// Where the VMM forwards from, to the same port in the guest (the deployment's own
    /// address and port, in its namespace). None: no network device (a task's guest, which has
    /// only its loopback).
    pub forward: Option<std::net::SocketAddr>,
    /// Whether the guest may open connections out (`--egress public`): QEMU opens them from
    /// the deployment's namespace, so the host's firewall applies its policy as to any
    /// deployment. Without it, user networking's `restrict=on`: nothing but the forwards.
    pub egress: bool,
    /// The host's PostgreSQL socket, reachable from the guest at GUEST_DB_ADDR:5432.
    pub database_socket: Option<&'a Path>,
    /// The host's TSC rate, so that a TCG guest skips calibrating it (seconds of boot).
    pub tsc_khz: Option<u64>,
    /// The tap device of Cloud Hypervisor and Firecracker guests.
    pub tap: &'a str,
    /// The guest's one disk (`/dev/vda`), if it has one.
    pub disk: Option<Disk<'a>>,
}

/// A raw virtio-blk disk: a pooled guest's task drive (read-only to the guest) or a
/// deployment's `/data` image (ext4).
#[derive(Debug, Clone, Copy)]
pub struct Disk<'a> {
    pub path: &'a Path,
    pub read_only: bool,
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

fn cmdline(guest: &Guest<'_>, extra: &str) -> String {
    // loglevel=3: the kernel's errors stay off the console, which is the program's output.
    let mut line = format!("console=ttyS0 panic=-1 quiet loglevel=3 {extra}");
    if let Some(khz) = guest.tsc_khz {
        line.push_str(&format!(" tsc_early_khz={khz}"));
    }
    line.trim_end().to_owned()
}

/// QEMU's seccomp filter (`-sandbox`, qemu(1)): the system calls of obsolete interfaces and of
/// resource control (scheduling, affinity) are refused, so that code that takes over the VMM
/// from inside the guest cannot use them.
const SANDBOX: &str = "on,obsolete=deny,resourcecontrol=deny";
/// Added to [`SANDBOX`] when the VMM runs no `cmd:` forward: the set*id calls (setsid(2)
/// among them) refused too. The database forward's `socat` does not start under it (measured:
/// every connection to the forward closed at once).
const NO_SET_ID: &str = ",elevateprivileges=deny";
/// Added after [`NO_SET_ID`] when the VMM runs no command at all: fork and exec refused.
const NO_SPAWN: &str = ",spawn=deny";

/// Lets the VMM whose `argv` [`qemu`] made start commands (a snapshot's `exec:` migration).
pub fn allow_spawn(argv: &mut [String]) {
    for arg in argv.iter_mut() {
        if let Some(kept) = arg.strip_suffix(NO_SPAWN) {
            *arg = kept.to_owned();
        }
    }
}

fn s(items: &[&str]) -> Vec<String> {
    items.iter().map(|i| i.to_string()).collect()
}

/// `qemu-system-x86_64 -M microvm`: the guest reboots to end (reboot=t with -no-reboot). Under
/// QEMU's seccomp filter ([`SANDBOX`]), which also refuses set*id, fork and exec unless the
/// guest reaches the database (QEMU runs `socat` for each connection; see [`allow_spawn`] for
/// the other commands).
pub fn qemu(guest: &Guest<'_>, accel: Accel) -> Vec<String> {
    let mut argv = s(&["qemu-system-x86_64", "-M", "microvm,rtc=on", "-accel"]);
    argv.push(match accel {
        // A small translation cache: TCG's default (1 GiB) would count against MemoryMax.
        Accel::Tcg => "tcg,tb-size=32".into(),
        Accel::Kvm => "kvm".into(),
    });
    argv.extend(s(&[
        "-cpu",
        if accel == Accel::Kvm { "host" } else { "max" },
    ]));
    argv.extend([
        "-m".into(),
        format!("{}M", guest.memory_mb),
        "-smp".into(),
        guest.vcpus.to_string(),
    ]);
    let sandbox = match guest.database_socket {
        Some(_) => SANDBOX.to_owned(),
        None => format!("{SANDBOX}{NO_SET_ID}{NO_SPAWN}"),
    };
    argv.extend(["-sandbox".into(), sandbox]);
    argv.extend(s(&[
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
    ]));
    argv.push(guest.kernel.display().to_string());
    argv.push("-initrd".into());
    argv.push(guest.initrd.display().to_string());
    argv.push("-append".into());
    argv.push(cmdline(guest, "reboot=t"));
    if let Some(disk) = guest.disk {
        // QEMU's option syntax doubles a comma inside a value.
        let file = disk.path.display().to_string().replace(',', ",,");
        argv.extend([
            "-drive".into(),
            format!(
                "file={file},format=raw,if=none,id=vda,readonly={}",
                on_off(disk.read_only)
            ),
            "-device".into(),
            "virtio-blk-device,drive=vda".into(),
        ]);
    }
    let Some(forward) = guest.forward else {
        return argv;
    };
    // restrict=on: the guest reaches nothing but the forwards below.
    let restrict = if guest.egress { "off" } else { "on" };
    let (ip, port) = (forward.ip(), forward.port());
    let mut netdev =
        format!("user,id=n0,restrict={restrict},hostfwd=tcp:{ip}:{port}-{GUEST_ADDR}:{port}");
    if let Some(socket) = guest.database_socket {
        netdev.push_str(&format!(
            ",guestfwd=tcp:{GUEST_DB_ADDR}:5432-cmd:socat STDIO UNIX-CONNECT:{}",
            socket.display()
        ));
    }
    argv.extend(["-netdev".into(), netdev]);
    argv.extend(s(&["-device", "virtio-net-device,netdev=n0"]));
    argv
}

/// A path as one word of a POSIX shell command (single-quoted; a `'` inside as `'\''`).
pub fn sh_quote(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}

/// Has the VMM of `argv` (the template's command line: the same machine, memory and devices)
/// restore a guest from a snapshot (see `snapshot`) instead of booting it: QEMU runs `cat` to
/// read it.
pub fn restore_from(argv: &mut Vec<String>, snapshot: &Path) {
    argv.extend([
        "-incoming".into(),
        format!("exec:cat {}", sh_quote(snapshot)),
    ]);
    allow_spawn(argv);
}

/// `cloud-hypervisor` with a direct kernel boot.
pub fn cloud_hypervisor(guest: &Guest<'_>) -> Vec<String> {
    let mut argv = s(&["cloud-hypervisor", "--kernel"]);
    argv.push(guest.kernel.display().to_string());
    argv.push("--initramfs".into());
    argv.push(guest.initrd.display().to_string());
    argv.push("--cmdline".into());
    argv.push(cmdline(guest, "reboot=k"));
    argv.extend([
        "--cpus".into(),
        format!("boot={}", guest.vcpus),
        "--memory".into(),
        format!("size={}M", guest.memory_mb),
        "--net".into(),
        format!("tap={}", guest.tap),
    ]);
    if let Some(disk) = guest.disk {
        argv.push("--disk".into());
        argv.push(format!(
            "path={},readonly={}",
            disk.path.display(),
            on_off(disk.read_only)
        ));
    }
    argv.extend(s(&["--serial", "tty", "--console", "off"]));
    argv
}

/// `firecracker --no-api --config-file <path>` and the config file's JSON.
pub fn firecracker(guest: &Guest<'_>, config_path: &Path) -> (Vec<String>, serde_json::Value) {
    let argv = vec![
        "firecracker".into(),
        "--no-api".into(),
        "--config-file".into(),
        config_path.display().to_string(),
    ];
    let config = serde_json::json!({
        "boot-source": {
            "kernel_image_path": guest.kernel,
            "initrd_path": guest.initrd,
            "boot_args": cmdline(guest, "reboot=k pci=off"),
        },
        "drives": guest.disk.map(|disk| serde_json::json!({
            "drive_id": "vda",
            "path_on_host": disk.path,
            "is_root_device": false,
            "is_read_only": disk.read_only,
        })).into_iter().collect::<Vec<_>>(),
        "machine-config": { "vcpu_count": guest.vcpus, "mem_size_mib": guest.memory_mb },
        "network-interfaces": [{ "iface_id": "eth0", "host_dev_name": guest.tap }],
    });
    (argv, config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guest<'a>(socket: Option<&'a Path>) -> Guest<'a> {
        Guest {
            kernel: Path::new("/k/vmlinux"),
            initrd: Path::new("/d/initrd"),
            memory_mb: 192,
            vcpus: 2,
            forward: Some("10.213.0.7:21001".parse().unwrap()),
            egress: false,
            database_socket: socket,
            tsc_khz: Some(2_600_000),
            tap: "nx21001",
            disk: None,
        }
    }

    fn after<'a>(argv: &'a [String], flag: &str) -> &'a str {
        let i = argv
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("{flag}"));
        &argv[i + 1]
    }

    #[test]
    fn qemu_boots_the_kernel_with_the_port_and_only_the_database_forwarded() {
        let socket = Path::new("/s/.s.PGSQL.5432");
        let argv = qemu(&guest(Some(socket)), Accel::Tcg);
        assert_eq!(argv[0], "qemu-system-x86_64");
        assert_eq!(after(&argv, "-M"), "microvm,rtc=on");
        assert_eq!(after(&argv, "-accel"), "tcg,tb-size=32");
        assert_eq!(after(&argv, "-m"), "192M");
        assert_eq!(after(&argv, "-smp"), "2");
        assert_eq!(after(&argv, "-kernel"), "/k/vmlinux");
        assert_eq!(after(&argv, "-initrd"), "/d/initrd");
        assert!(argv.contains(&"-no-reboot".to_string()));
        let append = after(&argv, "-append");
        assert!(append.contains("console=ttyS0") && append.contains("reboot=t"));
        assert!(append.contains("tsc_early_khz=2600000"));
        // socat runs for each connection to the database: spawning allowed.
        assert_eq!(after(&argv, "-sandbox"), SANDBOX);
        assert_eq!(
            after(&argv, "-netdev"),
            "user,id=n0,restrict=on,hostfwd=tcp:10.213.0.7:21001-10.0.2.15:21001,guestfwd=tcp:10.0.2.100:5432-cmd:socat STDIO UNIX-CONNECT:/s/.s.PGSQL.5432"
        );
        let open = qemu(
            &Guest {
                egress: true,
                ..guest(None)
            },
            Accel::Tcg,
        );
        assert!(after(&open, "-netdev").starts_with("user,id=n0,restrict=off,"));
        let kvm = qemu(&guest(None), Accel::Kvm);
        assert_eq!(after(&kvm, "-accel"), "kvm");
        assert_eq!(after(&kvm, "-cpu"), "host");
        assert!(!after(&kvm, "-netdev").contains("guestfwd"));
        // A task's guest: no network device at all.
        let task = qemu(
            &Guest {
                forward: None,
                ..guest(None)
            },
            Accel::Tcg,
        );
        assert!(!task
            .iter()
            .any(|a| a == "-netdev" || a.starts_with("virtio-net")));
        assert_eq!(
            after(&task, "-sandbox"),
            format!("{SANDBOX}{NO_SET_ID}{NO_SPAWN}")
        );
        // A disk: a raw virtio-blk device, read-only when asked.
        let with_disk = qemu(
            &Guest {
                disk: Some(Disk {
                    path: Path::new("/d/task,1.img"),
                    read_only: true,
                }),
                ..guest(None)
            },
            Accel::Tcg,
        );
        assert_eq!(
            after(&with_disk, "-drive"),
            "file=/d/task,,1.img,format=raw,if=none,id=vda,readonly=on"
        );
        assert_eq!(after(&with_disk, "-device"), "virtio-blk-device,drive=vda");
    }

    #[test]
    fn a_restored_guest_reads_its_snapshot_through_a_quoted_path() {
        let mut argv = qemu(&guest(None), Accel::Tcg);
        restore_from(
            &mut argv,
            Path::new("/var/lib/nx/microvm/snapshots/guest-192.snap"),
        );
        assert_eq!(
            argv[argv.len() - 2..],
            [
                "-incoming",
                "exec:cat '/var/lib/nx/microvm/snapshots/guest-192.snap'"
            ]
        );
        assert_eq!(after(&argv, "-sandbox"), format!("{SANDBOX}{NO_SET_ID}"));
        assert_eq!(sh_quote(Path::new("/a b/it's")), r"'/a b/it'\''s'");
    }

    #[test]
    fn cloud_hypervisor_and_firecracker_get_the_same_guest() {
        let argv = cloud_hypervisor(&guest(None));
        assert_eq!(after(&argv, "--kernel"), "/k/vmlinux");
        assert_eq!(after(&argv, "--initramfs"), "/d/initrd");
        assert_eq!(after(&argv, "--cpus"), "boot=2");
        assert_eq!(after(&argv, "--memory"), "size=192M");
        assert_eq!(after(&argv, "--net"), "tap=nx21001");
        assert!(after(&argv, "--cmdline").contains("console=ttyS0"));

        let (argv, config) = firecracker(&guest(None), Path::new("/d/fc.json"));
        assert_eq!(
            argv,
            ["firecracker", "--no-api", "--config-file", "/d/fc.json"]
        );
        assert_eq!(config["boot-source"]["kernel_image_path"], "/k/vmlinux");
        assert_eq!(config["boot-source"]["initrd_path"], "/d/initrd");
        assert_eq!(config["machine-config"]["vcpu_count"], 2);
        assert_eq!(config["machine-config"]["mem_size_mib"], 192);
        assert_eq!(config["network-interfaces"][0]["host_dev_name"], "nx21001");
    }
}
