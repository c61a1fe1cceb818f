-- The downlink outbox: one row per command for a device, from the moment it is accepted by our
-- API until KPN took it (accepted), we gave up (failed) or the user withdrew it (cancelled).
-- Workers in every replica claim due rows with FOR UPDATE SKIP LOCKED; a row being sent
-- carries a lease, so a process that dies mid-send does not strand it.
CREATE TABLE downlinks (
    id               UUID PRIMARY KEY,
    -- Insertion order, for keyset pagination (ids are random).
    seq              BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    device_id        BIGINT NOT NULL REFERENCES devices (id),
    -- LoRaWAN FPort; NULL for devices without ports (the call then carries none).
    port             SMALLINT CHECK (port BETWEEN 1 AND 223),
    -- Lower-case hex when the command was given as a payload, for display.
    payload_hex      TEXT,
    -- The SenML pack sent to KPN, exactly as sent (text, so key order is kept).
    body             TEXT NOT NULL,
    idempotency_key  TEXT UNIQUE,
    -- SHA-256 of what was asked, so a reused Idempotency-Key with other content is refused.
    request_hash     BYTEA NOT NULL,
    status           TEXT NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'sending', 'accepted', 'failed', 'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- While sending: when another worker may take the row over.
    lease_until      TIMESTAMPTZ,
    last_error       TEXT,
    kpn_status       SMALLINT,
    kpn_response     TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at      TIMESTAMPTZ
);
-- Only unfinished rows are ever claimed: the index stays small however many are done.
CREATE INDEX downlinks_due_idx ON downlinks (next_attempt_at) WHERE status = 'queued';
CREATE INDEX downlinks_lease_idx ON downlinks (lease_until) WHERE status = 'sending';
CREATE INDEX downlinks_device_idx ON downlinks (device_id, seq DESC);
CREATE INDEX downlinks_status_idx ON downlinks (status, seq DESC);

-- Wakes the workers of every replica when something is queued.
CREATE FUNCTION notify_downlinks_queued() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('things_downlinks_queued', '');
    RETURN NULL;
END $$;
CREATE TRIGGER downlinks_queued
    AFTER INSERT ON downlinks
    FOR EACH STATEMENT EXECUTE FUNCTION notify_downlinks_queued();
