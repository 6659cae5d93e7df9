-- A deployment's tier (issue 19): 'ephemeral' (cattle, the default) or 'persistent' (a pet:
-- `nx push --persistent`, its microVM pinned to CPUs of its own).
ALTER TABLE deployments ADD COLUMN tier TEXT NOT NULL DEFAULT 'ephemeral'
    CHECK (tier IN ('ephemeral', 'persistent'));
