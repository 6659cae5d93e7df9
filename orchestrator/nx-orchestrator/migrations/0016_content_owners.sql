-- Which sandbox may use which stored content (attacker s7 F10). The content-addressed store
-- (<state_dir>/artifacts, blobs, bundles) keeps one file per digest for the whole host; these
-- rows say which sandboxes uploaded (or were pushed through a host-wide token) each one. A
-- token scoped to a sandbox sees, reads and runs only what its sandbox owns: any other digest
-- reads as missing, and uploading it (bytes checked against the digest) makes it owned.
-- `kind`: 'artifact' (a program, /v1/artifacts), 'blob' (a bundle's file, /v1/blobs),
-- 'bundle' (a bundle's id, /v1/bundles). No foreign key to sandboxes: a push creates its
-- sandbox, and a scoped token may upload before that; `nx sandbox rm` deletes the rows.
CREATE TABLE content_owners (
    sandbox     TEXT NOT NULL,
    kind        TEXT NOT NULL CHECK (kind IN ('artifact', 'blob', 'bundle')),
    sha256      TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (sandbox, kind, sha256)
);

-- Today's deployments keep working: each sandbox owns what its deployments run. A deployment's
-- `artifact` is a program's sha256 or a bundle's id (nothing here tells which, and the two
-- never name the same file), so both are granted. A bundle's files (blobs) are not: a scoped
-- token's next push of that bundle uploads them once more.
INSERT INTO content_owners (sandbox, kind, sha256)
SELECT DISTINCT d.sandbox, k.kind, d.artifact
FROM deployments d CROSS JOIN (VALUES ('artifact'), ('bundle')) AS k(kind)
ON CONFLICT DO NOTHING;
