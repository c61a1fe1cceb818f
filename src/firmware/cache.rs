//! Firmware images in memory, per process and bounded, so that serving a part reads no image
//! from the database: images are immutable, so a cached one is never stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use sqlx::PgPool;
use uuid::Uuid;

/// Image bytes a process keeps at most (four images at the default --max-firmware).
pub const CACHE_BYTES: usize = 64 * 1024 * 1024;

/// An image and the header values every answer about it carries.
#[derive(Debug)]
pub struct Image {
    pub bytes: Bytes,
    pub crc32: u32,
    /// `"<sha-256 hex>"`: a strong validator, since an image never changes.
    pub etag: String,
    /// `sha-256=:<base64>:` (RFC 9530).
    pub repr_digest: String,
}

impl Image {
    pub fn new(bytes: Bytes, sha256: &[u8], crc32: u32) -> Image {
        Image {
            etag: format!("\"{}\"", hex::encode(sha256)),
            repr_digest: format!("sha-256=:{}:", STANDARD.encode(sha256)),
            bytes,
            crc32,
        }
    }
}

pub struct ImageCache {
    pool: PgPool,
    limit: usize,
    entries: Mutex<HashMap<Uuid, Arc<Image>>>,
    /// One load from the database at a time: many devices asking for an image not yet
    /// cached cause one read, not one each.
    loading: tokio::sync::Mutex<()>,
}

impl ImageCache {
    pub fn new(pool: PgPool, limit: usize) -> ImageCache {
        ImageCache {
            pool,
            limit,
            entries: Mutex::default(),
            loading: tokio::sync::Mutex::new(()),
        }
    }

    fn cached(&self, id: Uuid) -> Option<Arc<Image>> {
        self.entries.lock().ok()?.get(&id).cloned()
    }

    /// The image `id`, from memory or else from the database (`None` if it was removed).
    pub async fn get(&self, id: Uuid) -> Result<Option<Arc<Image>>, sqlx::Error> {
        if let Some(image) = self.cached(id) {
            return Ok(Some(image));
        }
        let _loading = self.loading.lock().await;
        if let Some(image) = self.cached(id) {
            return Ok(Some(image));
        }
        let Some((row, bytes)) = crate::store::firmware::image(&self.pool, id).await? else {
            return Ok(None);
        };
        let crc32 = u32::try_from(row.crc32).unwrap_or_else(|_| crc32fast::hash(&bytes));
        let image = Arc::new(Image::new(Bytes::from(bytes), &row.sha256, crc32));
        self.insert(id, image.clone());
        Ok(Some(image))
    }

    /// Keeps `image` unless it alone exceeds the bound, making room by dropping others.
    fn insert(&self, id: Uuid, image: Arc<Image>) {
        let size = image.bytes.len();
        if size > self.limit {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let mut used: usize = entries.values().map(|i| i.bytes.len()).sum();
        while used + size > self.limit {
            let Some(victim) = entries.keys().next().copied() else {
                break;
            };
            if let Some(gone) = entries.remove(&victim) {
                used -= gone.bytes.len();
            }
        }
        entries.insert(id, image);
    }
}
