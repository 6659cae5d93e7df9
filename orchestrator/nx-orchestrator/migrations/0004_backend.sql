-- The backend a deployment runs on: container (bubblewrap or Podman) or microvm.
ALTER TABLE deployments ADD COLUMN backend TEXT NOT NULL DEFAULT 'container';
