-- What a deploy token for every sandbox that may not push (say `--can tasks`) uploaded
-- (attacker s8 F12). Such a token had the host's view of the store, given to every-sandbox
-- tokens because those that may push can put any stored program in any sandbox anyway, and
-- so ran another tenant's program or bundle by naming its digest in a task. Now it sees, and
-- runs, only what it uploaded itself: these rows, gone with the token (`nx token rm`).
-- `kind` as in content_owners.
CREATE TABLE token_content_owners (
    token       TEXT NOT NULL REFERENCES deploy_tokens(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('artifact', 'blob', 'bundle')),
    sha256      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (token, kind, sha256)
);
