-- A sandbox whose removal (`nx sandbox rm`) has begun (attacker s12 H5): its rows go last,
-- after its units, volumes, database, role, tablespace and disk are gone and its backups are
-- set aside. Marked, it takes no new deployment and no API call but `nx sandbox rm`, which
-- finishes the removal; so does nxd's start after a crash, with final backups when
-- `removing_backup` (the last `nx sandbox rm` did not say --no-backup).
ALTER TABLE sandboxes ADD COLUMN IF NOT EXISTS removing BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE sandboxes ADD COLUMN IF NOT EXISTS removing_backup BOOLEAN NOT NULL DEFAULT false;
