-- Usage samples (`nx usage`): what one deployment used between two of nxd's samples (every
-- usage.sample_interval_secs). No foreign key: a removed deployment's usage is still
-- attributed to its sandbox until the samples pass usage.retention_days.
CREATE TABLE usage_samples (
    at               TIMESTAMPTZ NOT NULL,
    deployment       TEXT NOT NULL,
    sandbox          TEXT NOT NULL,
    cpu_seconds      DOUBLE PRECISION NOT NULL,
    memory_gib_hours DOUBLE PRECISION NOT NULL,
    disk_bytes       BIGINT NOT NULL,
    disk_gib_hours   DOUBLE PRECISION NOT NULL,
    requests         BIGINT NOT NULL,
    bytes_out        BIGINT NOT NULL
);
CREATE INDEX usage_samples_at ON usage_samples (at);
CREATE INDEX usage_samples_sandbox_at ON usage_samples (sandbox, at);
