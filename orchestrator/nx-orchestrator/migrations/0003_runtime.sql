-- The OCI runtime an image deployment runs under: runc, or gVisor's runsc.
ALTER TABLE deployments ADD COLUMN runtime TEXT NOT NULL DEFAULT 'runc';
