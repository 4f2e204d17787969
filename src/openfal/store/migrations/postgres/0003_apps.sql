-- Deployed apps (`openfal deploy`): each revision's code as a bundle (a tar.gz), and which
-- revision of each app is current. latest_revision is the highest number the app has had,
-- so that a number is never given twice, even after a rollback; its row is what concurrent
-- deploys of one app queue on.
CREATE TABLE deployed_apps (
    app_id text PRIMARY KEY,
    current_revision integer NOT NULL,
    latest_revision integer NOT NULL
);
CREATE TABLE app_revisions (
    app_id text NOT NULL,
    revision integer NOT NULL,
    ref text NOT NULL,
    digest text NOT NULL,
    size integer NOT NULL,
    created_at double precision NOT NULL,
    bundle bytea NOT NULL,
    PRIMARY KEY (app_id, revision)
);
-- Bundles are gzipped already: stored out of line without trying to compress them again.
ALTER TABLE app_revisions ALTER COLUMN bundle SET STORAGE EXTERNAL;
