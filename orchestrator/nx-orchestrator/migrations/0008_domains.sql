-- Custom domains (`nx domain add`): each serves its sandbox's production deployment; one
-- sandbox per domain.
CREATE TABLE domains (
    name        TEXT PRIMARY KEY,
    sandbox     TEXT NOT NULL REFERENCES sandboxes(name) ON DELETE CASCADE,
    added_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX domains_sandbox ON domains (sandbox);
