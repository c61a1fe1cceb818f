-- Destinations: one per KPN Things destination ("plug"). The plug is NULL while a
-- destination is pending: the first delivery that verifies against its secret binds it.
CREATE TABLE destinations (
    id                   UUID PRIMARY KEY,
    plug                 UUID,
    name                 TEXT NOT NULL,
    -- XChaCha20-Poly1305 sealed shared secrets; associated data = id.
    secret_sealed        BYTEA NOT NULL,
    previous_sealed      BYTEA,
    previous_expires_at  TIMESTAMPTZ,
    response_code        SMALLINT NOT NULL DEFAULT 200 CHECK (response_code BETWEEN 200 AND 299),
    -- Static headers KPN is configured to send, required on every delivery: {"name": "value"}.
    required_headers     JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    removed_at           TIMESTAMPTZ
);
CREATE UNIQUE INDEX destinations_plug_key ON destinations (plug) WHERE removed_at IS NULL;
CREATE UNIQUE INDEX destinations_name_key ON destinations (name) WHERE removed_at IS NULL;

-- Every process keeps the secrets in memory; this tells all of them to reload.
CREATE FUNCTION notify_destinations_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('things_destinations_changed', '');
    RETURN NULL;
END $$;
CREATE TRIGGER destinations_changed
    AFTER INSERT OR UPDATE OR DELETE ON destinations
    FOR EACH STATEMENT EXECUTE FUNCTION notify_destinations_changed();

-- A value sealed with the secret key, so that a wrong key is caught at start.
CREATE TABLE secret_key_check (
    id      SMALLINT PRIMARY KEY CHECK (id = 1),
    sealed  BYTEA NOT NULL
);

CREATE TABLE devices (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    urn_key     TEXT NOT NULL UNIQUE,   -- normalised for matching
    urn         TEXT NOT NULL,          -- spelled as first seen
    kind        TEXT NOT NULL,          -- DEVEUI, IMEI, DVNUUID or other
    first_seen  TIMESTAMPTZ NOT NULL,
    last_seen   TIMESTAMPTZ NOT NULL
);

-- One row per accepted delivery, with the body exactly as received.
CREATE TABLE messages (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    destination_id  UUID NOT NULL REFERENCES destinations (id),
    token           BYTEA NOT NULL CHECK (length(token) = 32),
    received_at     TIMESTAMPTZ NOT NULL,
    body            BYTEA NOT NULL,
    headers         JSONB NOT NULL DEFAULT '{}'::jsonb,
    status          TEXT NOT NULL CHECK (status IN ('stored', 'quarantined')),
    decode_error    TEXT,
    device_id       BIGINT REFERENCES devices (id),
    record_count    INTEGER NOT NULL DEFAULT 0,
    -- A retry of the same delivery carries the same token: store it once.
    CONSTRAINT messages_delivery_key UNIQUE (destination_id, token)
);
CREATE INDEX messages_received_idx ON messages (received_at DESC, id DESC);
CREATE INDEX messages_quarantined_idx ON messages (id DESC) WHERE status = 'quarantined';

-- One row per resolved SenML record. Exactly one of the value columns is set, unless the
-- record carries only a sum.
CREATE TABLE measurements (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id     BIGINT NOT NULL REFERENCES devices (id),
    time          TIMESTAMPTZ NOT NULL,
    name          TEXT NOT NULL,
    unit          TEXT,
    value         DOUBLE PRECISION,
    string_value  TEXT,
    bool_value    BOOLEAN,
    data_value    BYTEA,
    sum           DOUBLE PRECISION,
    message_id    BIGINT NOT NULL REFERENCES messages (id)
);
CREATE INDEX measurements_device_name_time_idx ON measurements (device_id, name, time DESC, id DESC);
CREATE INDEX measurements_device_time_idx ON measurements (device_id, time DESC, id DESC);
CREATE INDEX measurements_time_idx ON measurements (time DESC, id DESC);
CREATE INDEX measurements_message_idx ON measurements (message_id);

-- The newest value of every (device, name), kept up to date on ingest for dashboards.
CREATE TABLE latest_values (
    device_id     BIGINT NOT NULL REFERENCES devices (id),
    name          TEXT NOT NULL,
    time          TIMESTAMPTZ NOT NULL,
    unit          TEXT,
    value         DOUBLE PRECISION,
    string_value  TEXT,
    bool_value    BOOLEAN,
    data_value    BYTEA,
    sum           DOUBLE PRECISION,
    message_id    BIGINT NOT NULL REFERENCES messages (id),
    PRIMARY KEY (device_id, name)
);

CREATE TABLE api_keys (
    id            UUID PRIMARY KEY,
    name          TEXT NOT NULL,
    key_hash      BYTEA NOT NULL UNIQUE,  -- SHA-256 of the key; the key itself is never stored
    scopes        TEXT[] NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ
);
CREATE UNIQUE INDEX api_keys_name_key ON api_keys (name) WHERE revoked_at IS NULL;
