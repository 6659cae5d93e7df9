-- What nxd does on its own to a deployment: its health check (the push's fields over its
-- sandbox's; nxd's [sandbox] fills the rest), its idle timeout (scale to zero), whether its
-- preview is kept past the sandbox's time to live (nx pin), and when the router last passed it
-- a request. Deployments from before have no row: no health check of their own, no idle
-- timeout, not pinned, no request seen.
CREATE TABLE deployment_upkeep (
    deployment        TEXT PRIMARY KEY REFERENCES deployments(id) ON DELETE CASCADE,
    health_check      JSONB NOT NULL DEFAULT '{}',
    idle_timeout_secs BIGINT,
    pinned            BOOLEAN NOT NULL DEFAULT false,
    last_request_at   TIMESTAMPTZ
);

-- 'idle': stopped by nxd after its idle timeout; the router starts it on the next request.
ALTER TABLE deployments DROP CONSTRAINT deployments_desired_check;
ALTER TABLE deployments ADD CONSTRAINT deployments_desired_check
    CHECK (desired IN ('running', 'stopped', 'idle'));
