-- Firmware over the air: firmware images, campaigns that set a desired version for devices
-- registered for the device doors, and one download (URL, token, progress) per device.

-- An image as uploaded: immutable, with its size and digests computed once at upload.
CREATE TABLE firmware (
    id UUID PRIMARY KEY,
    version TEXT NOT NULL UNIQUE,
    name TEXT,
    size BIGINT NOT NULL CHECK (size > 0),
    sha256 BYTEA NOT NULL CHECK (length(sha256) = 32),
    crc32 BIGINT NOT NULL CHECK (crc32 BETWEEN 0 AND 4294967295),
    image BYTEA NOT NULL CHECK (length(image) = size),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A campaign keeps what its notifications and reports need (the version, the base URL the
-- devices reach, the record name they report their version in), so every replica and the
-- CLI agree on them whatever their own flags. Its image may be removed once it is finished.
CREATE TABLE fota_campaigns (
    id UUID PRIMARY KEY,
    name TEXT,
    firmware_id UUID REFERENCES firmware (id) ON DELETE SET NULL,
    firmware_version TEXT NOT NULL,
    base_url TEXT NOT NULL,
    version_name TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    cancelled_at TIMESTAMPTZ
);

-- One device of a campaign. Its id is the unguessable UUID of the download URL; the bearer
-- token is kept only as its SHA-256 (every process holding the secret key derives it again).
CREATE TABLE fota_targets (
    id UUID PRIMARY KEY,
    campaign_id UUID NOT NULL REFERENCES fota_campaigns (id),
    device_key_id UUID NOT NULL REFERENCES device_keys (id),
    urn TEXT NOT NULL,
    token_hash BYTEA NOT NULL CHECK (length(token_hash) = 32),
    state TEXT NOT NULL CHECK (state IN
        ('pending', 'notified', 'downloading', 'downloaded', 'updated', 'failed', 'cancelled')),
    reported_version TEXT,
    failure TEXT,
    -- The uplink whose answer carried the url/token pack: a retry of it gets the same pack.
    -- No foreign key, so that messages can be partitioned and dropped by age.
    notified_message_id BIGINT,
    bytes_served BIGINT NOT NULL DEFAULT 0,
    parts INTEGER NOT NULL DEFAULT 0,
    -- Which bytes were served at least once: `downloaded` when it covers the whole image.
    covered INT8MULTIRANGE NOT NULL DEFAULT '{}',
    last_part_at TIMESTAMPTZ,
    -- The last transition or served part: --fota-timeout runs from here.
    progress_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    pending_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    notified_at TIMESTAMPTZ,
    downloading_at TIMESTAMPTZ,
    downloaded_at TIMESTAMPTZ,
    updated_at TIMESTAMPTZ,
    failed_at TIMESTAMPTZ,
    cancelled_at TIMESTAMPTZ
);
-- A device is in at most one unfinished campaign; its uplinks find it by this index.
CREATE UNIQUE INDEX fota_targets_open_idx ON fota_targets (device_key_id)
    WHERE state IN ('pending', 'notified', 'downloading', 'downloaded');
CREATE INDEX fota_targets_campaign_idx ON fota_targets (campaign_id);
CREATE INDEX fota_targets_message_idx ON fota_targets (notified_message_id)
    WHERE notified_message_id IS NOT NULL;
CREATE INDEX fota_targets_progress_idx ON fota_targets (progress_at)
    WHERE state IN ('pending', 'notified', 'downloading', 'downloaded');

-- Every process caches what its file server reads of a download; a cancellation must reach
-- them at once: the target's id, or '' for a whole campaign.
CREATE FUNCTION notify_fota_cancelled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('things_fota_cancelled', CASE TG_TABLE_NAME
        WHEN 'fota_targets' THEN NEW.id::text ELSE '' END);
    RETURN NULL;
END $$;
CREATE TRIGGER fota_targets_cancelled AFTER UPDATE OF state ON fota_targets
    FOR EACH ROW WHEN (NEW.state = 'cancelled' AND OLD.state <> 'cancelled')
    EXECUTE FUNCTION notify_fota_cancelled();
CREATE TRIGGER fota_campaigns_cancelled AFTER UPDATE OF cancelled_at ON fota_campaigns
    FOR EACH ROW WHEN (NEW.cancelled_at IS NOT NULL AND OLD.cancelled_at IS NULL)
    EXECUTE FUNCTION notify_fota_cancelled();
