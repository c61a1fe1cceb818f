//! The delivery as ingestion sees it: verified bytes ([`RawDelivery`]), the same with its
//! resolved SenML ([`Delivery`]), and where it ended up ([`StoreOutcome`]).
//!
//! The data types are declared by `store::deliveries`, whose batch transaction takes them
//! as its input and gives the outcome back: the store stays a leaf that knows nothing of
//! ingestion, and no second, mirrored set of row types has to be kept in step with these.
//! What ingestion does with them lives here, so that every door and the spool's replay
//! build a delivery the same way.

use crate::senml;

pub use crate::store::deliveries::{
    Delivery, DeviceDoor, DeviceReply, FotaNotice, RawDelivery, Receipt, ReplyDownlink, Sender,
    StoreOutcome,
};

impl Delivery {
    /// Resolves the SenML of a verified delivery. A body that is not a valid pack is no
    /// error here: it is kept with the reason, to be stored raw as quarantined, because KPN
    /// would only retry it and then drop it.
    ///
    /// A device signs for itself only: a pack from a device door with a record of another
    /// device is quarantined, so no device can write another's data.
    pub fn resolve(raw: RawDelivery) -> Delivery {
        let decoded = senml::resolve(&raw.body, raw.received_at)
            .map_err(|e| e.to_string())
            .and_then(|records| match &raw.sender {
                Sender::Device { urn_key, .. } => match records
                    .iter()
                    .position(|r| senml::device_key(&r.device) != *urn_key)
                {
                    Some(i) => Err(format!(
                        "record {i} names device {:?}, not the device that signed the pack",
                        records[i].device
                    )),
                    None => Ok(records),
                },
                Sender::Destination { .. } => Ok(records),
            });
        Delivery {
            raw,
            decoded,
            answers_device: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use chrono::Utc;
    use uuid::Uuid;

    use super::*;
    use crate::token::Token;

    fn raw(body: &'static str) -> RawDelivery {
        RawDelivery {
            sender: Sender::Destination {
                id: Uuid::new_v4(),
                bind_plug: None,
            },
            token: Token([7; 32]),
            received_at: Utc::now(),
            body: Bytes::from_static(body.as_bytes()),
            headers: Default::default(),
        }
    }

    #[test]
    fn a_pack_resolves_and_anything_else_keeps_its_reason() {
        let good = Delivery::resolve(raw(r#"[{"bn":"urn:dev:IMEI:1234:","n":"t","v":21.5}]"#));
        let records = good.decoded.expect("a valid pack");
        assert_eq!(records.len(), 1);
        assert_eq!(
            (records[0].device.as_str(), records[0].name.as_str()),
            ("urn:dev:IMEI:1234:", "t")
        );

        let bad = Delivery::resolve(raw("not json"));
        assert!(!bad.decoded.expect_err("not a pack").is_empty());
        assert_eq!(
            &bad.raw.body[..],
            b"not json",
            "the body is kept as it came"
        );
    }
}
