-- A deployment whose removal (`nx rm`) has begun (tester s22 F2): its record goes last, after
-- its routes, unit and files; nxd's start finishes a removal a crash cut short.
ALTER TABLE deployments ADD COLUMN IF NOT EXISTS removing BOOLEAN NOT NULL DEFAULT false;
