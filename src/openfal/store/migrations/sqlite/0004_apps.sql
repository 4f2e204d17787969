-- Deployed apps (`openfal deploy`): each revision's code as a bundle (a tar.gz), and which
-- revision of each app is current. latest_revision is the highest number the app has had,
-- so that a number is never given twice, even after a rollback.
CREATE TABLE deployed_apps (
    app_id TEXT PRIMARY KEY,
    current_revision INTEGER NOT NULL,
    latest_revision INTEGER NOT NULL
);
-- The bundle last: reading the columns before it never reads the overflow pages holding it.
CREATE TABLE app_revisions (
    app_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    ref TEXT NOT NULL,
    digest TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    bundle BLOB NOT NULL,
    PRIMARY KEY (app_id, revision)
);
