-- Each deployment runs in a network namespace of its own: the port its program listens on
-- by itself (NULL: the allocated one, given as PORT), and whether it may connect out.
ALTER TABLE deployments ADD COLUMN listen_port INTEGER;
ALTER TABLE deployments ADD COLUMN egress TEXT NOT NULL DEFAULT 'none';
