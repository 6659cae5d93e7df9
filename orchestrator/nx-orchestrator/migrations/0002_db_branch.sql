-- Deployments that run against their own copy of the sandbox's database.
ALTER TABLE deployments ADD COLUMN db_branch BOOLEAN NOT NULL DEFAULT false;
