-- Deploy tokens: scoped to one sandbox (or, with sandbox NULL, to every sandbox) and to verbs.
-- Only the token's sha256 is kept; the token itself is printed once, when it is created.
CREATE TABLE deploy_tokens (
    id          TEXT PRIMARY KEY,
    sha256      TEXT NOT NULL UNIQUE,
    sandbox     TEXT REFERENCES sandboxes(name) ON DELETE CASCADE,
    verbs       TEXT[] NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at  TIMESTAMPTZ
);

-- Public keys that may upload to a sandbox over SFTP (the SSH user is the sandbox's name).
CREATE TABLE sandbox_keys (
    sandbox     TEXT NOT NULL REFERENCES sandboxes(name) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    public_key  TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    added_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sandbox, fingerprint)
);

-- A sandbox's deployment settings (env, args, limits): what an SFTP upload runs with, and
-- what `nx push` starts from.
ALTER TABLE sandboxes ADD COLUMN settings JSONB NOT NULL DEFAULT '{}';
