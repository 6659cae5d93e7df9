-- Volumes: named filesystems of a sandbox that outlive its deployments (nx volume). Each is an
-- ext4 image <state_dir>/volumes/<sandbox>/<name>.img of size_mb; its group is
-- volumes::GID_BASE + id. A deployment lists the volumes it mounts (name and path).
CREATE TABLE volumes (
    id          BIGSERIAL PRIMARY KEY,
    sandbox     TEXT NOT NULL REFERENCES sandboxes(name),
    name        TEXT NOT NULL,
    size_mb     BIGINT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (sandbox, name)
);
ALTER TABLE deployments ADD COLUMN volumes JSONB NOT NULL DEFAULT '[]';
