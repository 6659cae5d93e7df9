-- Services within a sandbox (nx push --service NAME): the sandbox's other deployments reach the
-- deployment as NAME (its sandbox's hosts file), and the firewall lets exactly them through.
CREATE TABLE deployment_services (
    deployment TEXT PRIMARY KEY REFERENCES deployments(id) ON DELETE CASCADE,
    name       TEXT NOT NULL
);
