-- nxd's state: sandboxes, their deployments, and the history of promotions (for rollback).
CREATE TABLE sandboxes (
    name        TEXT PRIMARY KEY,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE deployments (
    id          TEXT PRIMARY KEY,
    sandbox     TEXT NOT NULL REFERENCES sandboxes(name),
    artifact    TEXT NOT NULL,
    port        INTEGER NOT NULL UNIQUE,
    uid         BIGINT NOT NULL,
    env         JSONB NOT NULL,
    args        JSONB NOT NULL,
    limits      JSONB NOT NULL,
    desired     TEXT NOT NULL CHECK (desired IN ('running', 'stopped')),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX deployments_sandbox ON deployments(sandbox);

-- The newest row of a sandbox is its promoted deployment; rollback deletes it.
CREATE TABLE promotions (
    seq         BIGSERIAL PRIMARY KEY,
    sandbox     TEXT NOT NULL REFERENCES sandboxes(name),
    deployment  TEXT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX promotions_sandbox ON promotions(sandbox, seq DESC);
