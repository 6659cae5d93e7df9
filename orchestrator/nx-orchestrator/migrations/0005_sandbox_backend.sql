-- The backend a push to the sandbox runs on when it names none.
ALTER TABLE sandboxes ADD COLUMN backend TEXT NOT NULL DEFAULT 'container';
