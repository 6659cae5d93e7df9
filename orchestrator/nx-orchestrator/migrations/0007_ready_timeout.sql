-- Seconds a deployment has to become ready, from its push or its sandbox's settings; NULL
-- (deployments from before): nxd's sandbox.ready_timeout_secs.
ALTER TABLE deployments ADD COLUMN ready_timeout_secs BIGINT;
