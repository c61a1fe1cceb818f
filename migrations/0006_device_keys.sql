-- Device keys: one per M2M or Internet device registered for direct ingestion, whose uplinks
-- are signed with SHA-256(body || device secret). Independent of `devices` (a device may be
-- registered before its first uplink); the two meet on the normalised URN.
CREATE TABLE device_keys (
    id                   UUID PRIMARY KEY,
    -- senml::device_key of the URN, the form an uplink's bn is looked up by.
    urn_key              TEXT NOT NULL,
    -- As the operator spelled it.
    urn                  TEXT NOT NULL,
    kind                 TEXT NOT NULL CHECK (kind IN ('IMEI', 'DVNUUID')),
    -- XChaCha20-Poly1305 sealed device secrets; associated data = id.
    secret_sealed        BYTEA NOT NULL,
    previous_sealed      BYTEA,
    previous_expires_at  TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    removed_at           TIMESTAMPTZ
);
-- A removed registration stays as history; the URN can be registered again.
CREATE UNIQUE INDEX device_keys_urn_key ON device_keys (urn_key) WHERE removed_at IS NULL;

-- Every process keeps the device secrets in memory; this tells all of them to reload.
CREATE FUNCTION notify_device_keys_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('things_device_keys_changed', '');
    RETURN NULL;
END $$;
CREATE TRIGGER device_keys_changed
    AFTER INSERT OR UPDATE OR DELETE ON device_keys
    FOR EACH STATEMENT EXECUTE FUNCTION notify_device_keys_changed();
