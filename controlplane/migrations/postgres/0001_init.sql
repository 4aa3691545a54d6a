-- The control plane's store. Resources are kept as encoded protobuf
-- (stoa.v1.Resource) beside the columns that queries need; one monotonic
-- revision is bumped by every change, in the change's own transaction.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE config_revision (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    revision BIGINT NOT NULL
);
INSERT INTO config_revision (id, revision) VALUES (1, 0);

CREATE TABLE resources (
    kind     TEXT   NOT NULL,
    name     TEXT   NOT NULL,
    tenant   TEXT   NOT NULL,
    body     BYTEA  NOT NULL,
    revision BIGINT NOT NULL,
    PRIMARY KEY (kind, name)
);
CREATE INDEX resources_by_tenant ON resources (kind, tenant);

-- What each resource points at; a resource cannot be deleted while pointed at.
CREATE TABLE resource_refs (
    kind     TEXT NOT NULL,
    name     TEXT NOT NULL,
    ref_kind TEXT NOT NULL,
    ref_name TEXT NOT NULL,
    PRIMARY KEY (kind, name, ref_kind, ref_name)
);
CREATE INDEX resource_refs_by_target ON resource_refs (ref_kind, ref_name);

-- One row per resource changed per revision: deltas are read from here.
CREATE TABLE changes (
    revision BIGINT NOT NULL,
    kind     TEXT   NOT NULL,
    name     TEXT   NOT NULL,
    op       TEXT   NOT NULL,
    PRIMARY KEY (revision, kind, name)
);

CREATE TABLE audit (
    id          BIGSERIAL PRIMARY KEY,
    at_ms       BIGINT NOT NULL,
    actor       TEXT   NOT NULL,
    source      TEXT   NOT NULL,
    action      TEXT   NOT NULL,
    kind        TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    before_json TEXT   NOT NULL,
    after_json  TEXT   NOT NULL,
    revision    BIGINT NOT NULL
);

CREATE TABLE gateways (
    gateway_id         TEXT PRIMARY KEY,
    version            TEXT    NOT NULL,
    address            TEXT    NOT NULL,
    control_plane      TEXT    NOT NULL,
    connected          BIGINT  NOT NULL,
    revision           BIGINT  NOT NULL,
    connected_at_ms    BIGINT  NOT NULL,
    last_seen_ms       BIGINT  NOT NULL,
    last_ack_revision  BIGINT  NOT NULL,
    last_ack_ms        BIGINT  NOT NULL,
    last_nack_revision BIGINT  NOT NULL,
    last_nack_ms       BIGINT  NOT NULL,
    last_nack          BYTEA   NOT NULL
);

-- Bearer tokens, as SHA-256 hashes: role 'admin' or 'gateway'.
CREATE TABLE tokens (
    hash       BYTEA PRIMARY KEY,
    name       TEXT   NOT NULL,
    role       TEXT   NOT NULL,
    created_ms BIGINT NOT NULL
);
