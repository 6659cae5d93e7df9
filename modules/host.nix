# services.nx: the NX daemon on a NixOS host. nxd reads one config file, rendered from these
# options by ./nxd-config.nix (the mapping is in ./README.md).
{ config, lib, pkgs, ... }:
let
  cfg = config.services.nx;
  defaults = import ./nxd-defaults.nix;
  # The local cluster as the nx role, by peer authentication: for nxd (the nx user) and for the
  # pg_dump and pg_restore units it starts (root), as nxd's embedded cluster does.
  localUrl = "postgres://nx@localhost/nx?host=/run/postgresql";
  settings = import ./nxd-config.nix (cfg // {
    databaseUrl = if cfg.database.createLocally then localUrl else cfg.database.url;
    databases = cfg.databases // (lib.optionalAttrs cfg.database.createLocally {
      adminUrl = localUrl;
      socketDir = "/run/postgresql";
    });
  });
  configFile = (pkgs.formats.toml { }).generate "nxd.toml" settings;
  inherit (lib) mkOption mkEnableOption mkIf types;
  port = types.ints.between 1 65535;
  listenPort = addr: lib.toInt (lib.last (lib.splitString ":" addr));
  routerPort = listenPort cfg.routerListen;
  # The lowest port the router binds: HTTP, or HTTPS when that is lower.
  lowestRouterPort =
    if cfg.tls.httpsListen == null then routerPort
    else lib.min routerPort (listenPort cfg.tls.httpsListen);
  # The microvm backend: QEMU always (nxd's KVM/TCG probe and tasks boot QEMU guests), the
  # deployments' VMM, and socat (QEMU's guestfwd to the database). nxd finds them on its PATH, the
  # deployments' units on /run/current-system/sw/bin.
  microvmEnabled = cfg.microvm.kernelDir != null;
  vmmPackages = lib.unique ([ pkgs.qemu_kvm pkgs.socat ] ++ {
    qemu = [ ];
    cloud-hypervisor = [ pkgs.cloud-hypervisor ];
    firecracker = [ pkgs.firecracker ];
  }.${cfg.microvm.vmm});
  # MemoryMax, CPUQuota, TasksMax, /data and /tmp sizes, RLIMIT_NOFILE, log cap of a deployment or of a task.
  limitsOptions = d: what: {
    memoryMaxMb = mkOption { type = types.ints.positive; default = d.memoryMaxMb; description = "Default MemoryMax of ${what}, MiB (a microVM's at least 192: 64 for its VMM, 128 of RAM for its guest, whose kernel boots in no less)."; };
    cpuQuotaPercent = mkOption { type = types.ints.positive; default = d.cpuQuotaPercent; description = "Default CPUQuota of ${what}, percent of one CPU."; };
    tasksMax = mkOption { type = types.ints.positive; default = d.tasksMax; description = "Default TasksMax of ${what}."; };
    diskMb = mkOption { type = types.ints.unsigned; default = d.diskMb; description = "Default size of /data of ${what}, MiB (its own filesystem image; writes past it get ENOSPC; at most the free disk less nxd's reserve); 0: no /data to write (read-only, empty). A task has no /data."; };
    tmpMb = mkOption { type = types.ints.positive; default = d.tmpMb; description = "Default size of /tmp and of /dev/shm of ${what}, MiB (each a tmpfs, counted in its memory; writes past it get ENOSPC; a push's --tmp is at most half its memory, a microVM's half of its guest's RAM (memory less 64 MiB) less 80 MiB for the guest's kernel and program, and one without --tmp gets this or that most, whichever is less)."; };
    nofile = mkOption { type = types.ints.positive; default = d.nofile; description = "Default RLIMIT_NOFILE of ${what}."; };
    logMaxMb = mkOption { type = types.ints.positive; default = d.logMaxMb; description = "Default cap of the log of ${what} on disk, MiB, rotated files included. A task's output streams to its caller instead."; };
  };
in
{
  # Counted log follows only until session 13; it now counts every request under way.
  imports = [
    (lib.mkRenamedOptionModule [ "services" "nx" "apiMaxStreamsPerToken" ] [ "services" "nx" "apiMaxRequestsPerToken" ])
  ];
  options.services.nx = {
    enable = mkEnableOption "nxd, the NX daemon";
    package = mkOption {
      type = types.package;
      description = "The package that provides nxd (and nx).";
    };
    stateDir = mkOption {
      type = types.path;
      default = defaults.stateDir;
      description = "Artifacts, deployments' data, the embedded manager's files. Not under /tmp, /run or /var/log.";
    };
    apiListen = mkOption {
      type = types.str;
      default = defaults.apiListen;
      description = "Address of the JSON API that `nx` uses.";
    };
    apiMaxConnections = mkOption {
      type = types.ints.positive;
      default = defaults.apiMaxConnections;
      description = "Open API connections beyond this are closed as soon as they are accepted; open ones keep working.";
    };
    apiMaxConnectionsPerAddress = mkOption {
      type = types.ints.positive;
      default = defaults.apiMaxConnectionsPerAddress;
      description = "Of apiMaxConnections, the most one peer (an IPv4 address, or an IPv6 /64) may hold open; beyond it its new connections are closed as soon as they are accepted (at or above apiMaxConnections: no share of its own).";
    };
    apiReservedConnections = mkOption {
      type = types.ints.unsigned;
      default = defaults.apiReservedConnections;
      description = "Of apiMaxConnections, this many are kept for the root token (as PostgreSQL's superuser_reserved_connections): a connection accepted while no more are free serves only the root token's requests; others get 503 and the connection is closed. Below apiMaxConnections.";
    };
    apiMaxRequestsPerToken = mkOption {
      type = types.ints.positive;
      default = defaults.apiMaxRequestsPerToken;
      description = "The most requests one deploy token may have under way at once, on every route (an upload whose body is coming, a log read or follow, a task's events, until the answer is sent); beyond it, 429 (tasks also have tasks.maxConcurrentPerToken). The root token has no such cap.";
    };
    apiHeadTimeoutSecs = mkOption {
      type = types.ints.positive;
      default = defaults.apiHeadTimeoutSecs;
      description = "Seconds a client has to send a request's head once nxd starts reading it (a new connection, or one idle between requests); then the connection is closed.";
    };
    apiBodyTimeoutSecs = mkOption {
      type = types.ints.positive;
      default = defaults.apiBodyTimeoutSecs;
      description = "Seconds a request's body may send nothing while nxd waits for it; then the request ends with 408, its connection is closed and an upload's temp file goes.";
    };
    apiSendTimeoutSecs = mkOption {
      type = types.ints.positive;
      default = defaults.apiSendTimeoutSecs;
      description = "Seconds an answer (a log, a download) may wait for the client to take any of it; then it is dropped and the connection closed, giving its token's request back.";
    };
    metricsListen = mkOption {
      type = types.nullOr types.str;
      default = defaults.metricsListen;
      example = "127.0.0.1:9770";
      description = "Address where GET /metrics (Prometheus text format) answers without a token; keep it on loopback or a network only Prometheus reaches. Null: the series are only on the API, for the root token.";
    };
    routerListen = mkOption {
      type = types.str;
      default = defaults.routerListen;
      description = "Address of the router (preview and production URLs).";
    };
    baseDomain = mkOption {
      type = types.str;
      default = defaults.baseDomain;
      description = "URLs are <deployment>.<sandbox>.<baseDomain> and <sandbox>.<baseDomain>.";
    };
    tokenFile = mkOption {
      type = types.nullOr types.str;
      default = defaults.tokenFile;
      example = "/run/keys/nx-token";
      description = "The API token file (mode 0600, owned by nx). A path, never the secret: it stays out of the store. Null: nxd creates <stateDir>/token.";
    };
    ports = {
      start = mkOption { type = port; default = defaults.ports.start; description = "First port handed to a deployment."; };
      end = mkOption { type = port; default = defaults.ports.end; description = "Last port handed to a deployment."; };
    };
    sandbox = {
      uidBase = mkOption { type = types.ints.unsigned; default = defaults.sandbox.uidBase; description = "Deployment uid = uidBase + (port - ports.start)."; };
      readyTimeoutSecs = mkOption { type = types.ints.positive; default = defaults.sandbox.readyTimeoutSecs; description = "Time a deployment has to become ready (accept connections, or answer the health path) when neither its push (nx push --ready-timeout) nor its sandbox (nx sandbox set --ready-timeout) says."; };
      maxReadyTimeoutSecs = mkOption { type = types.ints.positive; default = defaults.sandbox.maxReadyTimeoutSecs; description = "The longest readiness timeout a push or a sandbox's settings may ask for; longer ones get a 400."; };
      healthPath = mkOption { type = types.nullOr types.str; default = defaults.sandbox.healthPath; description = "Health check path of a deployment whose push (nx push --health-path) and sandbox name none: if set, ready needs GET healthPath below 400, and failing it healthFailureThreshold times in a row restarts the deployment."; };
      healthIntervalSecs = mkOption { type = types.ints.positive; default = defaults.sandbox.healthIntervalSecs; description = "Seconds between a deployment's health checks, unless its push (nx push --health-interval) or sandbox (nx sandbox set --health-interval) says."; };
      healthTimeoutSecs = mkOption { type = types.ints.positive; default = defaults.sandbox.healthTimeoutSecs; description = "Seconds a health check's answer may take (at most the interval), unless the push or sandbox says."; };
      healthFailureThreshold = mkOption { type = types.ints.between 1 100; default = defaults.sandbox.healthFailureThreshold; description = "Failed health checks in a row that restart a deployment, unless its push or sandbox says."; };
      previewTtlSecs = mkOption { type = types.ints.unsigned; default = defaults.sandbox.previewTtlSecs; description = "A preview (not production, not pinned with nx pin) with no request for this many seconds is removed, unless its sandbox says (nx sandbox set --preview-ttl); 0: never."; };
      restartDelaySecs = mkOption { type = types.ints.unsigned; default = defaults.sandbox.restartDelaySecs; description = "RestartSec of Restart=on-failure."; };
      maxArgsBytes = mkOption { type = types.ints.positive; default = defaults.sandbox.maxArgsBytes; description = "A deployment's or task's arguments, all together, in bytes (each with its NUL); larger requests get a 400."; };
      maxEnvBytes = mkOption { type = types.ints.positive; default = defaults.sandbox.maxEnvBytes; description = "A deployment's or task's -e variables, all together, in bytes (KEY=value and a NUL each); larger requests get a 400."; };
      maxNofile = mkOption { type = types.ints.positive; default = defaults.sandbox.maxNofile; description = "The largest open-files limit (RLIMIT_NOFILE, nx push --nofile) a deployment may ask for; larger requests get a 400."; };
      maxLogMb = mkOption { type = types.ints.positive; default = defaults.sandbox.maxLogMb; description = "The largest log cap (limits.log_max_mb, nx push --log-max) a deployment may ask for, in MiB: its log and rotated files on the state directory's disk; larger requests get a 400. limits.logMaxMb must not be above it."; };
      maxDeployments = mkOption { type = types.ints.positive; default = defaults.sandbox.maxDeployments; description = "The most deployments one sandbox may have (running, stopped or failed: each holds a slot of ports until nx rm); a push past it gets a 409 naming the sandbox's oldest deployments to remove."; };
      standby = mkOption { type = types.bool; default = defaults.sandbox.standby; description = "Keep a deployment started ahead of each sandbox's next push (needs microvm.init, nx-vm-init): a push of a single static binary with the sandbox's defaults takes it and starts without a unit start, network namespace, /data mount or sandbox set-up to wait for."; };
    };
    limits = limitsOptions defaults.limits "a deployment";
    tasks = {
      poolSize = mkOption { type = types.ints.unsigned; default = defaults.tasks.poolSize; description = "Task units started ahead (the warm pool): the fewest it keeps."; };
      poolMax = mkOption { type = types.nullOr types.ints.unsigned; default = defaults.tasks.poolMax; example = 8; description = "The most task units the pool keeps when tasks come faster than it refills: each task that finds it empty makes it keep one more, up to this; after 30 s with none, one fewer, down to poolSize. Below poolSize it counts as poolSize. Null: 4 times poolSize (8 for the default 2; poolSize = 0 then means every task starts cold)."; };
      uidBase = mkOption { type = types.ints.unsigned; default = defaults.tasks.uidBase; description = "Tasks run as uids uidBase .. uidBase + 65535, in turn."; };
      defaultTimeoutSecs = mkOption { type = types.ints.positive; default = defaults.tasks.defaultTimeoutSecs; description = "A task's timeout when the request names none."; };
      maxTimeoutSecs = mkOption { type = types.ints.positive; default = defaults.tasks.maxTimeoutSecs; description = "The longest timeout a request may ask for."; };
      maxConcurrentPerToken = mkOption { type = types.ints.positive; default = defaults.tasks.maxConcurrentPerToken; description = "The most tasks one deploy token (or the root token) runs at once; one more gets HTTP 429 until one of them ends. Times tasks.limits.tasksMax it is what one caller may hold of systemd.tasksSliceTasksMax (16 x 64 = 1024 of 2048 by default): keep it below that, so one caller leaves room for the others' tasks."; };
      limits = limitsOptions defaults.tasks.limits "a task";
    };
    router = {
      trustedProxies = mkOption { type = types.listOf types.str; default = defaults.router.trustedProxies; description = "CIDRs (e.g. a CDN's published ranges) whose X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Forwarded, X-Real-IP and X-Request-Id are kept and appended to; from other peers they are replaced."; };
      headTimeoutSecs = mkOption { type = types.ints.positive; default = defaults.router.headTimeoutSecs; description = "A request head must arrive within this many seconds of its first byte."; };
      idleTimeoutSecs = mkOption { type = types.ints.positive; default = defaults.router.idleTimeoutSecs; description = "Idle keep-alive connections are closed after this many seconds (new ones that send nothing after headTimeoutSecs)."; };
      connectTimeoutSecs = mkOption { type = types.ints.positive; default = defaults.router.connectTimeoutSecs; description = "Connecting to a deployment may take this many seconds (then 502)."; };
      upstreamReadTimeoutSecs = mkOption { type = types.ints.positive; default = defaults.router.upstreamReadTimeoutSecs; description = "Longest wait for a deployment's next bytes: its response head, a streamed body, a WebSocket (then 504)."; };
      maxBodyMb = mkOption { type = types.ints.positive; default = defaults.router.maxBodyMb; description = "Largest request body in MiB (413 beyond)."; };
      maxConnections = mkOption { type = types.ints.positive; default = defaults.router.maxConnections; description = "Open client connections beyond this are closed as soon as they are accepted; open ones keep working."; };
      maxConnectionsPerAddress = mkOption { type = types.ints.positive; default = defaults.router.maxConnectionsPerAddress; description = "Of those, one client's (an IPv4 address, an IPv6 /64): its further connections are closed as soon as they are accepted, so that one client cannot take every connection."; };
      accessLogSample = mkOption { type = types.numbers.between 0 1; default = defaults.router.accessLogSample; description = "Share of requests written to the access log; responses of 500 and up are always logged."; };
      logMaxMb = mkOption { type = types.ints.positive; default = defaults.router.logMaxMb; description = "The most the router's log (<stateDir>/router/router.log and its rotated files together) holds, in MiB; it rotates like a deployment's log, at logMaxMb / (logs.keep + 1)."; };
      memoryMaxMb = mkOption { type = types.ints.unsigned; default = defaults.router.memoryMaxMb; description = "The router unit's MemoryMax, in MiB (0: none): past it the kernel ends the router and systemd starts it again, rather than it taking the host's memory."; };
    };
    network = {
      subnet = mkOption { type = types.str; default = defaults.network.subnet; description = "IPv4 network (a /20 or larger) of the deployments' addresses, each deployment in a network namespace of its own: the first address is the gateway on the host (nx0), the lower half holds deployments pushed with --egress none, the upper half those with --egress public. Must not overlap a network the host uses."; };
      subnet6 = mkOption { type = types.str; default = defaults.network.subnet6; description = "IPv6 network (a ULA /64 is the custom; /112 or larger) of the deployments' addresses, laid out as subnet (lower half --egress none, upper half --egress public, masqueraded behind the host's address); the gateway is fe80::1 on each deployment's link. Used where the host has IPv6 and net.ipv6.conf.all.forwarding is 1 (the module sets it), else deployments get IPv4 only. Must not overlap a network the host uses."; };
      allow = mkOption { type = types.listOf types.str; default = defaults.network.allow; description = "Private CIDRs (RFC 1918, CGNAT, link-local, ULA) that deployments with --egress public may reach nevertheless, e.g. [ \"10.20.0.0/16\" \"fd12::/64\" ]. Cloud metadata (169.254.169.254/32, fd00:ec2::254/128) only if listed exactly."; };
      tcpPorts = {
        start = mkOption { type = port; default = defaults.network.tcpPorts.start; description = "First host port of TCP services (nx push --tcp): a sandbox's production and each TCP deployment get one, DNATed by nxd's nftables table on every address of the host; keep the range clear of the host's own services."; };
        end = mkOption { type = port; default = defaults.network.tcpPorts.end; description = "Last host port of TCP services (inclusive)."; };
      };
    };
    usage = {
      sampleIntervalSecs = mkOption { type = types.ints.positive; default = defaults.usage.sampleIntervalSecs; description = "Seconds between usage samples of every deployment (CPU time, memory held, bytes on /data, requests, response bytes), stored in nxd's database for nx usage."; };
      retentionDays = mkOption { type = types.ints.positive; default = defaults.usage.retentionDays; description = "Days usage samples are kept; older ones are deleted."; };
      currency = mkOption { type = types.str; default = defaults.usage.currency; description = "The currency the usage prices are in (a label nx usage shows with costs)."; };
      priceCpuHour = mkOption { type = types.nullOr types.float; default = defaults.usage.priceCpuHour; description = "Price of one CPU-hour, in usage.currency (nx usage). Null: costs nothing."; };
      priceMemoryGibHour = mkOption { type = types.nullOr types.float; default = defaults.usage.priceMemoryGibHour; description = "Price of one GiB of memory held for an hour, in usage.currency (nx usage). Null: costs nothing."; };
      priceDiskGibMonth = mkOption { type = types.nullOr types.float; default = defaults.usage.priceDiskGibMonth; description = "Price of one GiB on /data for a month (730 hours), in usage.currency (nx usage). Null: costs nothing."; };
      priceMillionRequests = mkOption { type = types.nullOr types.float; default = defaults.usage.priceMillionRequests; description = "Price of a million requests through the router, in usage.currency (nx usage). Null: costs nothing."; };
      priceEgressGib = mkOption { type = types.nullOr types.float; default = defaults.usage.priceEgressGib; description = "Price of one GiB of response bodies sent to clients, in usage.currency (nx usage). Null: costs nothing."; };
    };
    volumes = {
      maxPerSandbox = mkOption { type = types.ints.unsigned; default = defaults.volumes.maxPerSandbox; description = "Volumes one sandbox may have (nx volume create, which a deploy token with --can push may call); 0: none."; };
      maxSizeMb = mkOption { type = types.ints.between 16 16777216; default = defaults.volumes.maxSizeMb; description = "The largest volume, in MiB (its quota). A volume is also refused when it is larger than the space left on the state directory's filesystem less 1 GiB."; };
      backupRetention = mkOption { type = types.ints.positive; default = defaults.volumes.backupRetention; description = "Backups kept per volume on the host (nx volume backup, the final one of nx sandbox rm); older ones are deleted."; };
    };
    microvm = {
      kernelDir = mkOption { type = types.nullOr types.str; default = defaults.microvm.kernelDir; description = "The guest kernel: vmlinux and modules/ (with order). Null: no microvm backend."; };
      init = mkOption { type = types.str; default = defaults.microvm.init; description = "nx-vm-init, the guest's PID 1 (a static binary of the workspace)."; };
      vmm = mkOption { type = types.enum [ "qemu" "cloud-hypervisor" "firecracker" ]; default = defaults.microvm.vmm; description = "The VMM; cloud-hypervisor and firecracker use the tap devices of microvm.nix's host networking."; };
      accel = mkOption { type = types.enum [ "auto" "kvm" "tcg" ]; default = defaults.microvm.accel; description = "auto probes KVM and TCG once and keeps the faster one that boots."; };
      poolSize = mkOption { type = types.ints.unsigned; default = defaults.microvm.poolSize; description = "Guests booted ahead for microVM tasks of tasks.limits' memory: each waits for one task and is destroyed after it; refilled in the background; each holds its memory while it waits. 0 (the default): every microVM task boots cold; set 1 or more on hosts that run microVM tasks."; };
      snapshot = mkOption { type = types.bool; default = defaults.microvm.snapshot; description = "The task pool restores its guests from a snapshot of one booted, waiting guest (QEMU migration to a file, made once per nxd start and guest size) instead of booting each; false: each is booted. QEMU only."; };
    };
    bundles = {
      maxMb = mkOption { type = types.ints.positive; default = defaults.bundles.maxMb; description = "The most a bundle (nx push ./dir or app.tar.gz) may hold, all files together and the largest one, MiB."; };
      maxFiles = mkOption { type = types.ints.positive; default = defaults.bundles.maxFiles; description = "Files, links and directories in one bundle (its paths are at most 64 components deep)."; };
    };
    store = {
      maxOwnerMb = mkOption { type = types.ints.positive; default = defaults.store.maxOwnerMb; description = "The most stored content (programs, bundles' files) one owner (a sandbox; a token for every sandbox that may not push) may hold, MiB, its uploads under way included (each reserves its Content-Length); an upload past it gets 507."; };
      unusedGraceSecs = mkOption { type = types.ints.positive; default = defaults.store.unusedGraceSecs; description = "Seconds after its last use (an upload, a push or task naming it) that stored content no deployment runs is deleted."; };
      maxImageUnpackedMb = mkOption { type = types.ints.positive; default = defaults.store.maxImageUnpackedMb; description = "The most an image's layers may hold unpacked (gunzipped: what podman load writes to the state directory's disk), MiB; a larger image, or one growing past 64 times its archive's size (at least 256 MiB), is refused with 422 before anything is stored."; };
    };
    logs.keep = mkOption { type = types.ints.unsigned; default = defaults.logs.keep; description = "Rotated log files kept per deployment beside output.log, by the router beside router.log and by the database gate beside gate.log (each rotates at limits.logMaxMb, or router.logMaxMb, / (keep + 1)); 0: emptied when full."; };
    sftp = {
      listen = mkOption { type = types.nullOr types.str; default = defaults.sftp.listen; example = "0.0.0.0:2222"; description = "Where the SFTP upload server listens (the SSH user is the sandbox's name; keys from `nx keys add`). Null: no SFTP server."; };
      maxUploadMb = mkOption { type = types.ints.positive; default = defaults.sftp.maxUploadMb; description = "The largest SFTP upload, MiB; a larger one is refused while it arrives."; };
      maxOpenHandles = mkOption { type = types.ints.positive; default = defaults.sftp.maxOpenHandles; description = "Files one SFTP session may hold open at once; beyond it an open is refused until one is closed."; };
      maxConnections = mkOption { type = types.ints.positive; default = defaults.sftp.maxConnections; description = "SFTP connections open at once; one more is closed as it is accepted."; };
      maxConnectionsPerAddress = mkOption { type = types.ints.positive; default = defaults.sftp.maxConnectionsPerAddress; description = "SFTP connections one client (an IPv4 address, an IPv6 /64) may hold open."; };
      maxStartups = mkOption { type = types.ints.positive; default = defaults.sftp.maxStartups; description = "Of sftp.maxConnections, those not authenticated yet (OpenSSH's MaxStartups); when as many are open, a new one takes the place of the oldest of the client holding the most, so that a flood without a key never holds every connection. At most sftp.maxConnections."; };
      loginGraceSecs = mkOption { type = types.ints.positive; default = defaults.sftp.loginGraceSecs; description = "Seconds an SFTP connection may take to authenticate before it is closed (OpenSSH's LoginGraceTime)."; };
      openFirewall = mkOption { type = types.bool; default = false; description = "Open sftp.listen's port in the firewall."; };
    };
    tls = {
      httpsListen = mkOption { type = types.nullOr types.str; default = defaults.tls.httpsListen; example = "0.0.0.0:443"; description = "The router's HTTPS listener (HTTP/2 and HTTP/1.1 through ALPN). Null: no HTTPS."; };
      acme = mkOption { type = types.bool; default = defaults.tls.acme; description = "Order certificates by ACME (acmeChallenge) for production hosts and custom domains that certFile does not cover."; };
      acmeDirectoryUrl = mkOption { type = types.str; default = defaults.tls.acmeDirectoryUrl; description = "The ACME server's directory URL (https)."; };
      acmeChallenge = mkOption { type = types.enum [ "http-01" "tls-alpn-01" ]; default = defaults.tls.acmeChallenge; description = "The ACME challenge nxd answers: http-01 on the router's HTTP listener (port 80 must reach it) or tls-alpn-01 (RFC 8737) on its HTTPS listener alone."; };
      acmeEmail = mkOption { type = types.nullOr types.str; default = defaults.tls.acmeEmail; description = "Contact address of the ACME account. Null: none."; };
      acmeCaRoots = mkOption { type = types.nullOr types.str; default = defaults.tls.acmeCaRoots; description = "A PEM root trusted for the ACME server itself instead of the system's roots (test servers). Null: the system's roots."; };
      acmeRenewBeforeDays = mkOption { type = types.ints.unsigned; default = defaults.tls.acmeRenewBeforeDays; description = "A certificate is renewed when it expires within this many days."; };
      acmeCheckIntervalSecs = mkOption { type = types.ints.positive; default = defaults.tls.acmeCheckIntervalSecs; description = "How often nxd looks for names that need a certificate or a renewal (also at once when routes change)."; };
      certFile = mkOption { type = types.nullOr types.str; default = defaults.tls.certFile; description = "A fixed certificate chain (PEM), served for the names it covers (e.g. a Cloudflare Origin CA or wildcard certificate). Goes with keyFile."; };
      keyFile = mkOption { type = types.nullOr types.str; default = defaults.tls.keyFile; description = "The private key (PEM) of certFile; readable by the nx user only."; };
      redirectHttp = mkOption { type = types.bool; default = defaults.tls.redirectHttp; description = "Redirect plain HTTP (308) to HTTPS for names that have a certificate; ACME challenges stay on HTTP."; };
      hsts = mkOption { type = types.bool; default = defaults.tls.hsts; description = "Send Strict-Transport-Security (one year) on HTTPS responses."; };
    };
    systemd = {
      mode = mkOption {
        type = types.enum [ "auto" "system" "embedded" ];
        default = "system";
        description = "On NixOS nxd drives the host's systemd over the system bus.";
      };
      slice = mkOption { type = types.str; default = defaults.systemd.slice; description = "Parent slice of every deployment unit."; };
      sliceTasksMax = mkOption { type = types.ints.positive; default = defaults.systemd.sliceTasksMax; description = "TasksMax of that slice: the processes and threads of all deployments and tasks together (keep it below the kernel's pid_max)."; };
      sandboxTasksMax = mkOption { type = types.ints.positive; default = defaults.systemd.sandboxTasksMax; description = "TasksMax of each sandbox's own slice inside that one (nx-<sandbox>.slice): the processes and threads of all of a sandbox's deployments together, and the most a push may ask for (--tasks). Two sandboxes at it, every task at tasksSliceTasksMax and one more deployment at limits.tasksMax fit in sliceTasksMax (nxd refuses less), so that fork bombs in two sandboxes leave room for the others' pushes and tasks."; };
      tasksSliceTasksMax = mkOption { type = types.ints.positive; default = defaults.systemd.tasksSliceTasksMax; description = "TasksMax of the slice every task (nx run-task) runs in, inside that one (nx-run_task.slice): the processes and threads of all tasks together. Below sliceTasksMax, so that concurrent tasks at their limit leave room for deployments and pushes; at least tasks.limits.tasksMax."; };
      sliceMemoryMaxPercent = mkOption { type = types.ints.between 1 100; default = defaults.systemd.sliceMemoryMaxPercent; description = "MemoryMax of that slice, in percent of the host's memory."; };
    };
    database = {
      createLocally = mkOption {
        type = types.bool;
        default = true;
        description = "Use the host's services.postgresql: a superuser role and a database `nx` (ensureUsers/ensureDatabases) for nxd's state and the sandboxes' roles and databases, and 20 connection slots reserved for superusers.";
      };
      url = mkOption {
        type = types.nullOr types.str;
        default = defaults.databaseUrl;
        description = "With createLocally = false: PostgreSQL 14+ for nxd's state (null: nxd runs its own cluster).";
      };
    };
    databases = {
      adminUrl = mkOption { type = types.nullOr types.str; default = defaults.databases.adminUrl; description = "With createLocally = false: a superuser connection to the cluster of the sandboxes' roles and databases."; };
      socketDir = mkOption { type = types.nullOr types.str; default = defaults.databases.socketDir; description = "With adminUrl: that cluster's unix socket directory."; };
      port = mkOption { type = port; default = defaults.databases.port; description = "That cluster's port (names its socket)."; };
      backupRetention = mkOption { type = types.ints.positive; default = defaults.databases.backupRetention; description = "Backups kept per sandbox."; };
      backupIntervalSecs = mkOption { type = types.ints.unsigned; default = 86400; description = "Scheduled backups of every sandbox; 0 turns them off."; };
      connectionLimitPercent = mkOption { type = types.ints.between 1 100; default = defaults.databases.connectionLimitPercent; description = "Each sandbox role's CONNECTION LIMIT, in percent of the cluster's slots not reserved for superusers (at least 1)."; };
      statementTimeoutSecs = mkOption { type = types.ints.unsigned; default = defaults.databases.statementTimeoutSecs; description = "statement_timeout of sandbox roles, in seconds; 0: none."; };
      idleInTransactionTimeoutSecs = mkOption { type = types.ints.unsigned; default = defaults.databases.idleInTransactionTimeoutSecs; description = "idle_in_transaction_session_timeout of sandbox roles, in seconds (nxd ends a session past it even if the session lifted it); 0: none."; };
      restoreTimeoutSecs = mkOption { type = types.ints.unsigned; default = defaults.databases.restoreTimeoutSecs; description = "The longest nxd's restore of a dump (nx db restore, a --db-branch copy through pg_dump | pg_restore) may run, in seconds: past it its session is ended and the restore fails, nothing swapped (the dump's SQL is its tenant's and may sleep); 0: none."; };
      tempFileLimitMb = mkOption { type = types.ints.unsigned; default = defaults.databases.tempFileLimitMb; description = "temp_file_limit of sandbox roles, in MiB (superuser-only: a role cannot lift it); 0: none."; };
      backendMemoryMaxMb = mkOption { type = types.ints.unsigned; default = defaults.databases.backendMemoryMaxMb; description = "nxd ends a tenant's backend whose memory (anonymous, and the dynamic shared memory of its parallel queries) passes this, in MiB (embedded cluster only); 0: none."; };
      sandboxMemoryMaxMb = mkOption { type = types.ints.unsigned; default = defaults.databases.sandboxMemoryMaxMb; description = "nxd ends a sandbox role's largest backends while its backends together hold more memory (as for backendMemoryMaxMb) than this, in MiB (embedded cluster only; all tenants' together: 3/4 of memoryMaxMb); 0: none."; };
      memoryMaxMb = mkOption { type = types.ints.unsigned; default = defaults.databases.memoryMaxMb; description = "MemoryMax of the embedded cluster's unit (nx-postgres.service), in MiB; 0: none. The cluster's own /dev/shm (its dynamic shared memory) is a tmpfs of half of it (2048 MiB for 0)."; };
      maxSizeMb = mkOption { type = types.ints.unsigned; default = defaults.databases.maxSizeMb; description = "Each new sandbox's databases (production's, its preview branches', kept ones) live on a disk of their own of this size, in MiB (a sparse ext4 image, embedded cluster only): a write past it fails in that session with 'No space left on device'; 0: no cap."; };
      gateUid = mkOption { type = types.ints.between 1000 4294967294; default = defaults.databases.gateUid; description = "The uid and gid the database gate (nx-db-gate.service, each sandbox's socket in front of PostgreSQL) runs as when nxd runs as root: no deployment's, task's or host user's, and not mapped by the cluster's pg_ident.conf, so its connections can never be a superuser's. With nxd as another user the gate runs as nxd's user."; };
    };
    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "Open the router's ports, HTTP and tls.httpsListen (nxd's API itself stays closed; with HTTPS on, remote nx reaches it at https://api.<baseDomain>).";
    };
  };

  config = mkIf cfg.enable {
    users.users.nx = {
      isSystemUser = true;
      group = "nx";
      home = cfg.stateDir;
      # /dev/kvm is root:kvm; nxd's probe boots a guest with it.
      extraGroups = lib.optional microvmEnabled "kvm";
    };
    users.groups.nx = { };

    services.postgresql = mkIf cfg.database.createLocally {
      enable = true;
      ensureDatabases = [ "nx" ];
      ensureUsers = [{
        name = "nx";
        ensureDBOwnership = true;
        # databases.admin_url is a superuser connection: nxd creates each sandbox's role and
        # database, revokes CONNECT on postgres, template1 and nx from PUBLIC, and takes the
        # slots reserved for superusers, so tenants cannot starve it.
        ensureClauses.superuser = true;
      }];
      # As nxd's embedded cluster (RESERVED_FOR_NXD in nx-orchestrator/src/embedded_db.rs):
      # nxd's pools, pg_dump and pg_restore.
      settings.superuser_reserved_connections = lib.mkDefault 20;
      # nx by peer; the sandboxes' roles (nx_*, nxb_*) by password through the socket.
      authentication = lib.mkBefore ''
        local all nx peer map=nx
        local all /^nxb?_ scram-sha-256
      '';
      identMap = ''
        nx nx nx
        nx root nx
      '';
    };

    # The OS files a sandbox sees (HOST_FILES in nx-orchestrator's backend/container/host_files.rs)
    # are bound read-only without /nix/store, so on NixOS they must be files, not links into the
    # store: the CA bundle is copied into /etc, and the time zones get the usual path.
    environment.etc."ssl/certs/ca-certificates.crt".mode = "0444";
    systemd.tmpfiles.rules = [ "L+ /usr/share/zoneinfo - - - - ${pkgs.tzdata}/share/zoneinfo" ];

    # The tenants' slice under its caps and a low CPU weight; nxd and PostgreSQL in nxd.slice,
    # which gets 50 times its CPU under contention (nxd sets the same on its embedded manager).
    systemd.slices.nx = {
      description = "NX deployments";
      sliceConfig = {
        MemoryAccounting = true;
        TasksAccounting = true;
        CPUWeight = 20;
        TasksMax = cfg.systemd.sliceTasksMax;
        MemoryMax = "${toString cfg.systemd.sliceMemoryMaxPercent}%";
      };
    };
    systemd.slices.nxd = {
      description = "NX control plane";
      sliceConfig.CPUWeight = 1000;
    };
    systemd.services.postgresql.serviceConfig.Slice = lib.mkIf cfg.database.createLocally "nxd.slice";

    # nxd starts transient units as the nx user: allow exactly that, for NX's own unit names
    # (nx-*: deployments; nxt-*: tasks; nxdb-*: pg_dump and pg_restore).
    security.polkit.enable = true;
    security.polkit.extraConfig = ''
      polkit.addRule(function(action, subject) {
        if (subject.user == "nx" &&
            (action.id == "org.freedesktop.systemd1.manage-units") &&
            /^nx(t|db)?-[A-Za-z0-9_-]+\.service$/.test(action.lookup("unit") || "")) {
          return polkit.Result.YES;
        }
      });
    '';

    systemd.services.nxd = {
      description = "NX daemon";
      wantedBy = [ "multi-user.target" ];
      after = [ "network.target" ] ++ lib.optional cfg.database.createLocally "postgresql.service";
      requires = lib.optional cfg.database.createLocally "postgresql.service";
      # bubblewrap and util-linux: the sandboxes; PostgreSQL's tools: pg_dump and pg_restore;
      # e2fsprogs: mkfs.ext4 makes each deployment's /data image; nftables: the egress policy;
      # conntrack-tools: a removed deployment's tracked connections are forgotten.
      path = [ pkgs.bubblewrap config.services.postgresql.package pkgs.util-linux pkgs.e2fsprogs pkgs.nftables pkgs.conntrack-tools ]
        ++ lib.optionals microvmEnabled vmmPackages;
      serviceConfig = {
        ExecStart = "${cfg.package}/bin/nxd --config ${configFile}";
        Slice = "nxd.slice";
        User = "nx";
        Group = "nx";
        StateDirectory = lib.removePrefix "/var/lib/" cfg.stateDir;
        StateDirectoryMode = "0711";
        Restart = "on-failure";
        # Deployments are units of their own: stopping nxd must not stop them.
        KillMode = "process";
        # Data dirs belong to each deployment's uid: nxd needs to chown them, nothing more.
        # CAP_NET_ADMIN: nx0 (the deployments' gateway) and the nftables table `inet nx`.
        AmbientCapabilities = [ "CAP_CHOWN" "CAP_FOWNER" "CAP_NET_ADMIN" ];
        CapabilityBoundingSet = [ "CAP_CHOWN" "CAP_FOWNER" "CAP_NET_ADMIN" ];
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ReadWritePaths = [ cfg.stateDir ];
        ProtectHome = true;
        PrivateTmp = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectControlGroups = true;
        RestrictAddressFamilies = [ "AF_UNIX" "AF_INET" "AF_INET6" "AF_NETLINK" ];
        RestrictNamespaces = true;
        LockPersonality = true;
        SystemCallArchitectures = "native";
      };
    };

    environment.systemPackages = lib.optionals microvmEnabled vmmPackages;
    boot.kernelModules = lib.optionals microvmEnabled [ "kvm-intel" "kvm-amd" "tun" "vhost_net" ];

    # The router is a unit of its own (nx-router.service, started by nxd as the nx user), with no
    # capabilities: a port below 1024 must be open to unprivileged users. The sysctl is per
    # network namespace: it opens the host's ports from routerPort up, not the deployments'.
    boot.kernel.sysctl."net.ipv4.ip_unprivileged_port_start" =
      lib.mkIf (lowestRouterPort < 1024) (lib.mkDefault lowestRouterPort);

    # Pseudo-terminals: each deployment and each task has a devpts instance of its own holding at
    # most 64 (MAX_PTYS in pts_mount.rs), but every instance other than the host's draws from one
    # pool of kernel.pty.max less kernel.pty.reserve (the kernel's 4096 less 1024: 3072, 48
    # sandboxes that each take all they may). Sized for 1024 such sandboxes at once, 64 x 1024,
    # plus the reserve the host's own /dev/pts keeps; a terminal costs memory only while open.
    boot.kernel.sysctl."kernel.pty.max" = lib.mkDefault (64 * 1024 + 1024);

    # Deployments reach the internet (with --egress public) through the host: nxd's table
    # `inet nx` masquerades them.
    boot.kernel.sysctl."net.ipv4.ip_forward" = lib.mkDefault 1;
    # And their IPv6 (network.subnet6). A forwarding host ignores router advertisements where
    # accept_ra is 1; NixOS' dhcpcd and systemd-networkd take them in user space, so the
    # host keeps its IPv6 default route (nxd itself sets accept_ra=2 where it turns this on).
    boot.kernel.sysctl."net.ipv6.conf.all.forwarding" = lib.mkDefault 1;
    # nxd loads `inet nx` when it starts; a firewall reload that flushed the whole ruleset
    # would drop the deployments' egress policy with it. (NixOS then flushes its own tables.)
    networking.nftables.flushRuleset = lib.mkDefault false;
    # DNS inside (egress public): the deployments ask their gateway, whose port 53 nxd's table
    # forwards to the host's resolver; on a loopback resolver (systemd-resolved) that is the
    # host's input, which NixOS' firewall closes unless the nx-* links may reach port 53.
    networking.firewall.interfaces.${if config.networking.nftables.enable then "nx*" else "nx+"} = {
      allowedUDPPorts = [ 53 ];
      allowedTCPPorts = [ 53 ];
    };

    networking.firewall.allowedTCPPorts = lib.optional cfg.openFirewall routerPort
      ++ lib.optional (cfg.openFirewall && cfg.tls.httpsListen != null) (listenPort cfg.tls.httpsListen)
      ++ lib.optional (cfg.sftp.openFirewall && cfg.sftp.listen != null) (listenPort cfg.sftp.listen);
  };
}
