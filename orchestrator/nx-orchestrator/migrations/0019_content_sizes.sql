-- The bytes each owner of stored content holds (attacker s10 F2): a sandbox (or a token for
-- every sandbox that may not push) may hold at most `store.max_owner_mb` MiB, counted as the
-- sum of `size` over its rows; an upload past it gets 507. A bundle's row counts 0 (its files
-- are blobs, counted in their own rows). Rows from before this migration count 0 until the
-- content is uploaded or pushed again, or nxd's collection deletes it unused.
ALTER TABLE content_owners ADD COLUMN IF NOT EXISTS size BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_content_owners ADD COLUMN IF NOT EXISTS size BIGINT NOT NULL DEFAULT 0;
