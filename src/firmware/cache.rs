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

/// The bound for a given `--max-firmware`: room for at least two of the largest images, so
/// that an image is never too large to be cached (every part would read it whole).
pub fn bound_for(max_firmware: usize) -> usize {
    CACHE_BYTES.max(max_firmware.saturating_mul(2))
}

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

#[derive(Default)]
struct Entries {
    images: HashMap<Uuid, (Arc<Image>, u64)>,
    clock: u64,
}

pub struct ImageCache {
    pool: PgPool,
    limit: usize,
    /// Each image with when it was last used (a tick of `clock`): the least recently used
    /// one makes room, so campaigns in progress keep theirs.
    entries: Mutex<Entries>,
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
        let mut entries = self.entries.lock().ok()?;
        entries.clock += 1;
        let now = entries.clock;
        let (image, used) = entries.images.get_mut(&id)?;
        *used = now;
        Some(image.clone())
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

    /// Keeps `image` unless it alone exceeds the bound, making room by dropping the least
    /// recently used others.
    fn insert(&self, id: Uuid, image: Arc<Image>) {
        let size = image.bytes.len();
        if size > self.limit {
            return;
        }
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        let mut used: usize = entries.images.values().map(|(i, _)| i.bytes.len()).sum();
        while used + size > self.limit {
            let Some(victim) = entries
                .images
                .iter()
                .min_by_key(|(_, (_, last))| *last)
                .map(|(id, _)| *id)
            else {
                break;
            };
            if let Some((gone, _)) = entries.images.remove(&victim) {
                used -= gone.bytes.len();
            }
        }
        entries.clock += 1;
        let now = entries.clock;
        entries.images.insert(id, (image, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(byte: u8) -> Arc<Image> {
        Arc::new(Image::new(Bytes::from(vec![byte; 10]), &[0; 32], 0))
    }

    #[tokio::test]
    async fn the_least_recently_used_image_makes_room() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@localhost/none")
            .unwrap();
        let cache = ImageCache::new(pool, 30);
        let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        for (n, id) in ids.iter().take(3).enumerate() {
            cache.insert(*id, image(n as u8));
        }
        // The first is used again, so the second is now the least recently used.
        assert!(cache.cached(ids[0]).is_some());
        cache.insert(ids[3], image(3));
        assert!(cache.cached(ids[1]).is_none(), "evicted");
        for id in [ids[0], ids[2], ids[3]] {
            assert!(cache.cached(id).is_some());
        }
        // An image over the bound is not kept, and evicts nothing.
        cache.insert(
            Uuid::new_v4(),
            Arc::new(Image::new(Bytes::from(vec![0; 31]), &[0; 32], 0)),
        );
        assert!(cache.cached(ids[0]).is_some());
        assert_eq!(bound_for(16 << 20), CACHE_BYTES);
        assert_eq!(bound_for(100 << 20), 200 << 20);
    }
}
