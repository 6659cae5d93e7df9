# services.nx option values -> the settings of nxd's config file (TOML, one key per option;
# see modules/README.md). Plain Nix, no nixpkgs: the workspace's tests evaluate it offline
# and parse the result with nxd's own config parser.
cfg:
let
  # TOML has no null: an unset optional key is left out.
  withoutNulls = attrs:
    builtins.listToAttrs (builtins.filter (kv: kv.value != null)
      (map (name: { inherit name; value = attrs.${name}; }) (builtins.attrNames attrs)));
  # MemoryMax, CPUQuota, TasksMax, the sizes of /data and /tmp, RLIMIT_NOFILE and the log cap
  # of a deployment or of a task.
  limitsOf = l: {
    memory_max_mb = l.memoryMaxMb;
    cpu_quota_percent = l.cpuQuotaPercent;
    tasks_max = l.tasksMax;
    disk_mb = l.diskMb;
    tmp_mb = l.tmpMb;
    inherit (l) nofile;
    log_max_mb = l.logMaxMb;
  };
in
withoutNulls {
  state_dir = cfg.stateDir;
  api_listen = cfg.apiListen;
  api_max_connections = cfg.apiMaxConnections;
  api_max_connections_per_address = cfg.apiMaxConnectionsPerAddress;
  api_reserved_connections = cfg.apiReservedConnections;
  api_max_requests_per_token = cfg.apiMaxRequestsPerToken;
  api_head_timeout_secs = cfg.apiHeadTimeoutSecs;
  api_body_timeout_secs = cfg.apiBodyTimeoutSecs;
  api_send_timeout_secs = cfg.apiSendTimeoutSecs;
  metrics_listen = cfg.metricsListen;
  router_listen = cfg.routerListen;
  base_domain = cfg.baseDomain;
  token_file = cfg.tokenFile;
  database_url = cfg.databaseUrl;
  ports = { inherit (cfg.ports) start end; };
  sandbox = withoutNulls {
    uid_base = cfg.sandbox.uidBase;
    ready_timeout_secs = cfg.sandbox.readyTimeoutSecs;
    max_ready_timeout_secs = cfg.sandbox.maxReadyTimeoutSecs;
    health_path = cfg.sandbox.healthPath;
    health_interval_secs = cfg.sandbox.healthIntervalSecs;
    health_timeout_secs = cfg.sandbox.healthTimeoutSecs;
    health_failure_threshold = cfg.sandbox.healthFailureThreshold;
    preview_ttl_secs = cfg.sandbox.previewTtlSecs;
    restart_delay_secs = cfg.sandbox.restartDelaySecs;
    max_args_bytes = cfg.sandbox.maxArgsBytes;
    max_env_bytes = cfg.sandbox.maxEnvBytes;
    max_nofile = cfg.sandbox.maxNofile;
    max_log_mb = cfg.sandbox.maxLogMb;
    max_deployments = cfg.sandbox.maxDeployments;
    standby = cfg.sandbox.standby;
  };
  limits = limitsOf cfg.limits;
  logs = { inherit (cfg.logs) keep; };
  bundles = {
    max_mb = cfg.bundles.maxMb;
    max_files = cfg.bundles.maxFiles;
  };
  store = {
    max_owner_mb = cfg.store.maxOwnerMb;
    unused_grace_secs = cfg.store.unusedGraceSecs;
    max_image_unpacked_mb = cfg.store.maxImageUnpackedMb;
  };
  systemd = {
    inherit (cfg.systemd) mode slice;
    slice_tasks_max = cfg.systemd.sliceTasksMax;
    sandbox_tasks_max = cfg.systemd.sandboxTasksMax;
    tasks_slice_tasks_max = cfg.systemd.tasksSliceTasksMax;
    slice_memory_max_percent = cfg.systemd.sliceMemoryMaxPercent;
  };
  databases = withoutNulls {
    admin_url = cfg.databases.adminUrl;
    socket_dir = cfg.databases.socketDir;
    inherit (cfg.databases) port;
    backup_retention = cfg.databases.backupRetention;
    backup_interval_secs = cfg.databases.backupIntervalSecs;
    connection_limit_percent = cfg.databases.connectionLimitPercent;
    statement_timeout_secs = cfg.databases.statementTimeoutSecs;
    idle_in_transaction_timeout_secs = cfg.databases.idleInTransactionTimeoutSecs;
    restore_timeout_secs = cfg.databases.restoreTimeoutSecs;
    temp_file_limit_mb = cfg.databases.tempFileLimitMb;
    backend_memory_max_mb = cfg.databases.backendMemoryMaxMb;
    sandbox_memory_max_mb = cfg.databases.sandboxMemoryMaxMb;
    memory_max_mb = cfg.databases.memoryMaxMb;
    max_size_mb = cfg.databases.maxSizeMb;
    gate_uid = cfg.databases.gateUid;
  };
  tasks = withoutNulls {
    pool_size = cfg.tasks.poolSize;
    pool_max = cfg.tasks.poolMax;
    uid_base = cfg.tasks.uidBase;
    default_timeout_secs = cfg.tasks.defaultTimeoutSecs;
    max_timeout_secs = cfg.tasks.maxTimeoutSecs;
    max_concurrent_per_token = cfg.tasks.maxConcurrentPerToken;
    limits = limitsOf cfg.tasks.limits;
  };
  microvm = withoutNulls {
    kernel_dir = cfg.microvm.kernelDir;
    inherit (cfg.microvm) init vmm accel snapshot;
    pool_size = cfg.microvm.poolSize;
  };
  router = {
    trusted_proxies = cfg.router.trustedProxies;
    head_timeout_secs = cfg.router.headTimeoutSecs;
    idle_timeout_secs = cfg.router.idleTimeoutSecs;
    connect_timeout_secs = cfg.router.connectTimeoutSecs;
    upstream_read_timeout_secs = cfg.router.upstreamReadTimeoutSecs;
    max_body_mb = cfg.router.maxBodyMb;
    max_connections = cfg.router.maxConnections;
    max_connections_per_address = cfg.router.maxConnectionsPerAddress;
    access_log_sample = cfg.router.accessLogSample;
    log_max_mb = cfg.router.logMaxMb;
    memory_max_mb = cfg.router.memoryMaxMb;
  };
  sftp = withoutNulls {
    inherit (cfg.sftp) listen;
    max_upload_mb = cfg.sftp.maxUploadMb;
    max_open_handles = cfg.sftp.maxOpenHandles;
    max_connections = cfg.sftp.maxConnections;
    max_connections_per_address = cfg.sftp.maxConnectionsPerAddress;
    max_startups = cfg.sftp.maxStartups;
    login_grace_secs = cfg.sftp.loginGraceSecs;
  };
  tls = withoutNulls {
    https_listen = cfg.tls.httpsListen;
    inherit (cfg.tls) acme hsts;
    acme_directory_url = cfg.tls.acmeDirectoryUrl;
    acme_challenge = cfg.tls.acmeChallenge;
    acme_email = cfg.tls.acmeEmail;
    acme_ca_roots = cfg.tls.acmeCaRoots;
    acme_renew_before_days = cfg.tls.acmeRenewBeforeDays;
    acme_check_interval_secs = cfg.tls.acmeCheckIntervalSecs;
    cert_file = cfg.tls.certFile;
    key_file = cfg.tls.keyFile;
    redirect_http = cfg.tls.redirectHttp;
  };
  network = {
    inherit (cfg.network) subnet subnet6 allow;
    tcp_ports = { inherit (cfg.network.tcpPorts) start end; };
  };
  usage = withoutNulls {
    sample_interval_secs = cfg.usage.sampleIntervalSecs;
    retention_days = cfg.usage.retentionDays;
    inherit (cfg.usage) currency;
    price_cpu_hour = cfg.usage.priceCpuHour;
    price_memory_gib_hour = cfg.usage.priceMemoryGibHour;
    price_disk_gib_month = cfg.usage.priceDiskGibMonth;
    price_million_requests = cfg.usage.priceMillionRequests;
    price_egress_gib = cfg.usage.priceEgressGib;
  };
  volumes = {
    max_per_sandbox = cfg.volumes.maxPerSandbox;
    max_size_mb = cfg.volumes.maxSizeMb;
    backup_retention = cfg.volumes.backupRetention;
  };
}
