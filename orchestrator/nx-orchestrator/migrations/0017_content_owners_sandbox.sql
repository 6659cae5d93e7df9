-- A sandbox owns stored content only while it exists (review s8 #7): a row naming a sandbox
-- that does not exist (a root push admitted to a sandbox that the push then failed to make,
-- or an upload that raced `nx sandbox rm`) passed to the next sandbox made under that name,
-- which then read another tenant's files. Such rows go; from now on a sandbox's rows go with
-- it (ON DELETE CASCADE), and a grant to a sandbox that does not exist is refused.
DELETE FROM content_owners o
WHERE NOT EXISTS (SELECT 1 FROM sandboxes s WHERE s.name = o.sandbox);

ALTER TABLE content_owners
    ADD CONSTRAINT content_owners_sandbox_fkey
    FOREIGN KEY (sandbox) REFERENCES sandboxes(name) ON DELETE CASCADE;
