//! Reading back the measurements a notification announced, for the live stream.

use sqlx::PgPool;

use super::measurements::{MeasurementRow, ROW_COLUMNS};

/// The channel the ingest transaction notifies on (`store::series_write`; a trigger did until
/// migration 0008, with the same payload).
pub const CHANNEL: &str = "things_measurements_inserted";

/// What one notification announces: the id range of one INSERT statement's rows and, when it
/// fit in the payload, the messages they belong to (stored in the same transaction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inserted {
    pub min_id: i64,
    pub max_id: i64,
    pub message_ids: Vec<i64>,
}

impl Inserted {
    /// Parses `min,max[,message,...]`; `None` for anything else.
    pub fn parse(payload: &str) -> Option<Inserted> {
        let mut numbers = payload.split(',').map(|p| p.trim().parse::<i64>());
        let min_id = numbers.next()?.ok()?;
        let max_id = numbers.next()?.ok()?;
        let message_ids = numbers.collect::<Result<Vec<_>, _>>().ok()?;
        (min_id <= max_id).then_some(Inserted {
            min_id,
            max_id,
            message_ids,
        })
    }
}

/// One newly stored measurement, with its device's normalised URN for filtering.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct LiveRow {
    pub urn_key: String,
    #[sqlx(flatten)]
    pub measurement: MeasurementRow,
}

/// The rows `inserted` announced, in id order. The id range alone may also cover rows of
/// other, concurrent statements; when the message ids are present, only rows written by the
/// transaction that wrote those messages (the same `xmin`) are taken. The BRIN index on
/// (time, id) finds the range: new rows sit at the end of their partitions.
pub async fn fetch(pool: &PgPool, inserted: &Inserted) -> Result<Vec<LiveRow>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT d.urn_key, {ROW_COLUMNS} \
         FROM measurements m JOIN series s ON s.id = m.series_id \
         JOIN devices d ON d.id = s.device_id \
         WHERE m.id BETWEEN $1 AND $2 \
           AND (cardinality($3::int8[]) = 0 \
                OR m.xmin IN (SELECT g.xmin FROM messages g WHERE g.id = ANY($3))) \
         ORDER BY m.id"
    )))
    .bind(inserted.min_id)
    .bind(inserted.max_id)
    .bind(&inserted.message_ids)
    .fetch_all(pool)
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(
            Inserted::parse("5,9,2,3"),
            Some(Inserted {
                min_id: 5,
                max_id: 9,
                message_ids: vec![2, 3]
            })
        );
        assert_eq!(
            Inserted::parse("5,9").unwrap().message_ids,
            Vec::<i64>::new()
        );
        assert_eq!(Inserted::parse("9,5"), None);
        assert_eq!(Inserted::parse(""), None);
        assert_eq!(Inserted::parse("5,x"), None);
    }
}
