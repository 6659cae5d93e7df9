# Defaults of services.nx, as data (no nixpkgs needed), so that host.nix and the workspace's
# config test read the same values. They equal nxd's own defaults (orchestrator/nxd.example.toml).
{
  stateDir = "/var/lib/nx";
  apiListen = "127.0.0.1:7700";
  apiMaxConnections = 4096;
  apiMaxConnectionsPerAddress = 256;
  apiReservedConnections = 16;
  apiMaxRequestsPerToken = 32;
  apiHeadTimeoutSecs = 10;
  apiBodyTimeoutSecs = 60;
  apiSendTimeoutSecs = 60;
  metricsListen = null;
  routerListen = "127.0.0.1:7780";
  baseDomain = "nx.localhost";
  tokenFile = null;
  databaseUrl = null;
  ports = {
    start = 20000;
    end = 20999;
  };
  sandbox = {
    uidBase = 200000;
    readyTimeoutSecs = 15;
    maxReadyTimeoutSecs = 600;
    healthPath = null;
    healthIntervalSecs = 10;
    healthTimeoutSecs = 2;
    healthFailureThreshold = 3;
    previewTtlSecs = 604800;
    restartDelaySecs = 1;
    maxArgsBytes = 131072;
    maxEnvBytes = 131072;
    maxNofile = 1048576;
    maxLogMb = 1024;
    maxDeployments = 100;
    standby = true;
  };
  limits = {
    memoryMaxMb = 512;
    cpuQuotaPercent = 100;
    tasksMax = 256;
    diskMb = 1024;
    tmpMb = 64;
    nofile = 65536;
    logMaxMb = 100;
  };
  logs.keep = 4;
  bundles = {
    maxMb = 2048;
    maxFiles = 100000;
  };
  store = {
    maxOwnerMb = 10240;
    unusedGraceSecs = 3600;
    maxImageUnpackedMb = 8192;
  };
  systemd = {
    mode = "auto";
    slice = "nx.slice";
    sliceTasksMax = 8192;
    sandboxTasksMax = 2048;
    tasksSliceTasksMax = 2048;
    sliceMemoryMaxPercent = 80;
  };
  databases = {
    adminUrl = null;
    socketDir = null;
    port = 5432;
    backupRetention = 7;
    backupIntervalSecs = 0;
    connectionLimitPercent = 25;
    statementTimeoutSecs = 300;
    idleInTransactionTimeoutSecs = 60;
    restoreTimeoutSecs = 600;
    tempFileLimitMb = 2048;
    backendMemoryMaxMb = 1024;
    sandboxMemoryMaxMb = 1536;
    memoryMaxMb = 4096;
    maxSizeMb = 10240;
    gateUid = 199999;
  };
  tasks = {
    poolSize = 2;
    poolMax = null;
    uidBase = 300000;
    defaultTimeoutSecs = 30;
    maxTimeoutSecs = 3600;
    maxConcurrentPerToken = 16;
    limits = {
      memoryMaxMb = 256;
      cpuQuotaPercent = 100;
      tasksMax = 64;
      diskMb = 1024;
      tmpMb = 64;
      nofile = 65536;
      logMaxMb = 100;
    };
  };
  microvm = {
    kernelDir = null;
    init = "/usr/lib/nx/nx-vm-init";
    vmm = "qemu";
    accel = "auto";
    poolSize = 0;
    snapshot = true;
  };
  router = {
    trustedProxies = [ ];
    headTimeoutSecs = 10;
    idleTimeoutSecs = 60;
    connectTimeoutSecs = 5;
    upstreamReadTimeoutSecs = 300;
    maxBodyMb = 1024;
    maxConnections = 16384;
    maxConnectionsPerAddress = 512;
    accessLogSample = 1.0;
    logMaxMb = 100;
    memoryMaxMb = 2048;
  };
  sftp = {
    listen = null;
    maxUploadMb = 1024;
    maxOpenHandles = 16;
    maxConnections = 256;
    maxConnectionsPerAddress = 16;
    maxStartups = 64;
    loginGraceSecs = 30;
  };
  tls = {
    httpsListen = null;
    acme = true;
    acmeDirectoryUrl = "https://acme-v02.api.letsencrypt.org/directory";
    acmeChallenge = "http-01";
    acmeEmail = null;
    acmeCaRoots = null;
    acmeRenewBeforeDays = 30;
    acmeCheckIntervalSecs = 3600;
    certFile = null;
    keyFile = null;
    redirectHttp = true;
    hsts = false;
  };
  network = {
    subnet = "10.213.0.0/16";
    subnet6 = "fd6e:7800:213::/64";
    allow = [ ];
    tcpPorts = {
      start = 30000;
      end = 30999;
    };
  };
  usage = {
    sampleIntervalSecs = 60;
    retentionDays = 90;
    currency = "USD";
    priceCpuHour = null;
    priceMemoryGibHour = null;
    priceDiskGibMonth = null;
    priceMillionRequests = null;
    priceEgressGib = null;
  };
  volumes = {
    maxPerSandbox = 10;
    maxSizeMb = 102400;
    backupRetention = 7;
  };
}
