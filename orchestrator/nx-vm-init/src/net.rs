//! lo and eth0 up, eth0 at 10.0.2.15/24 with a default route via 10.0.2.2: QEMU's user-mode
//! network, whose host side (in the deployment's network namespace) forwards the deployment's
//! port in and the database (10.0.2.100:5432) out, and, for a deployment with `--egress
//! public`, opens its connections out from that namespace, under the host's firewall.
//! Source: QEMU's documentation, "Network emulation" (user networking's addresses).

use std::time::{Duration, Instant};

const GUEST_ADDR: [u8; 4] = [10, 0, 2, 15];
const NETMASK: [u8; 4] = [255, 255, 255, 0];
/// User networking's gateway (the VMM's side).
const GATEWAY: [u8; 4] = [10, 0, 2, 2];
/// How long eth0 may take to appear once virtio_net is loaded.
const LINK_WAIT: Duration = Duration::from_secs(2);

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain C data (a name array and a union of integers and sockaddrs), for
    // which all zero bytes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn sockaddr(addr: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data; the kernel reads a
    // sockaddr whose family is AF_INET as a sockaddr_in (ip(7)).
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl(fd: i32, request: libc::Ioctl, req: &mut libc::ifreq, what: &str) -> Result<(), String> {
    // SAFETY: the SIOC[GS]IF* requests read and write one ifreq (netdevice(7)), which `req`
    // is, borrowed mutably for the call.
    if unsafe { libc::ioctl(fd, request, req as *mut libc::ifreq) } < 0 {
        return Err(format!("{what}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

fn up(fd: i32, name: &str) -> Result<(), String> {
    let mut req = ifreq(name);
    ioctl(
        fd,
        libc::SIOCGIFFLAGS as libc::Ioctl,
        &mut req,
        &format!("flags of {name}"),
    )?;
    // SAFETY: SIOCGIFFLAGS just filled the union's flags member.
    unsafe { req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short };
    ioctl(
        fd,
        libc::SIOCSIFFLAGS as libc::Ioctl,
        &mut req,
        &format!("{name} up"),
    )
}

/// The default route via user networking's gateway (SIOCADDRT, route(4)'s `struct rtentry`).
fn default_route(fd: i32) -> Result<(), String> {
    // SAFETY: rtentry is plain C data (sockaddrs, integers and a device-name pointer), for which
    // all zero bytes is a valid value: a null rt_dev lets the kernel pick the device.
    let mut route: libc::rtentry = unsafe { std::mem::zeroed() };
    route.rt_dst = sockaddr([0, 0, 0, 0]);
    route.rt_genmask = sockaddr([0, 0, 0, 0]);
    route.rt_gateway = sockaddr(GATEWAY);
    route.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    // SAFETY: SIOCADDRT reads one rtentry, which `route` is, borrowed mutably for the call.
    if unsafe {
        libc::ioctl(
            fd,
            libc::SIOCADDRT as libc::Ioctl,
            &mut route as *mut libc::rtentry,
        )
    } < 0
    {
        return Err(format!(
            "default route: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// lo, and eth0 when the guest has a network (a task has none).
pub fn configure(with_eth0: bool) -> Result<(), String> {
    // SAFETY: socket(2) takes no pointers; the fd is closed below on every path that ends well
    // (an error ends the guest's init anyway).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    up(fd, "lo")?;
    if !with_eth0 {
        // SAFETY: fd is the socket opened above, closed once.
        unsafe { libc::close(fd) };
        return Ok(());
    }
    let deadline = Instant::now() + LINK_WAIT;
    while !std::path::Path::new("/sys/class/net/eth0").exists() {
        if Instant::now() > deadline {
            return Err("no eth0: is virtio_net loaded and a virtio-net device attached?".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // The address and the netmask share the request's union: one ioctl each.
    for (request, value, what) in [
        (libc::SIOCSIFADDR, GUEST_ADDR, "eth0 address"),
        (libc::SIOCSIFNETMASK, NETMASK, "eth0 netmask"),
    ] {
        let mut req = ifreq("eth0");
        req.ifr_ifru.ifru_addr = sockaddr(value);
        ioctl(fd, request as libc::Ioctl, &mut req, what)?;
    }
    up(fd, "eth0")?;
    default_route(fd)?;
    // SAFETY: fd is the socket opened above, closed once.
    unsafe { libc::close(fd) };
    Ok(())
}
