-- TCP services (nx push --tcp): host ports from network.tcp_ports that reach a deployment's
-- raw TCP port. A sandbox holds one for production (deployment NULL: it reaches whichever
-- deployment is promoted, so promote and rollback move it); each TCP deployment holds one of
-- its own (like its preview URL). A deployment is a TCP one exactly when it has a row.
CREATE TABLE tcp_ports (
    port       INTEGER PRIMARY KEY CHECK (port BETWEEN 1 AND 65535),
    sandbox    TEXT NOT NULL REFERENCES sandboxes(name) ON DELETE CASCADE,
    deployment TEXT UNIQUE REFERENCES deployments(id) ON DELETE CASCADE
);
CREATE UNIQUE INDEX tcp_ports_production ON tcp_ports (sandbox) WHERE deployment IS NULL;
