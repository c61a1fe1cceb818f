//! Device URNs (`urn:dev:TYPE:ID:`, RFC 9039 style) as KPN puts them in `bn`.
//!
//! KPN identifies the device in the base name with a trailing colon, e.g.
//! `urn:dev:DEVEUI:0018B21000008C47:`, so that `bn` + `n` reads as
//! `urn:dev:DEVEUI:0018B21000008C47:temperature`. Different KPN sources spell
//! the same device in different case (DevEUI hex in upper or lower case), so
//! lookups go through [`device_key`] while the original spelling is kept for
//! display.

use std::fmt;

/// The case-insensitive scheme prefix of a device URN.
const PREFIX: &str = "urn:dev:";

/// The kind of device identifier carried in a device URN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// LoRaWAN device EUI (16 hex digits).
    DevEui,
    /// Cellular (M2M) device IMEI (15 digits).
    Imei,
    /// KPN Things "Internet device" UUID.
    DvnUuid,
    /// Any other URN type, or not a device URN at all.
    Other,
}

impl DeviceKind {
    /// The canonical spelling of the URN type, as used in [`device_key`]
    /// (`"other"` for everything KPN does not define).
    pub fn as_str(&self) -> &'static str {
        match self {
            DeviceKind::DevEui => "DEVEUI",
            DeviceKind::Imei => "IMEI",
            DeviceKind::DvnUuid => "DVNUUID",
            DeviceKind::Other => "other",
        }
    }

    /// Classifies a URN type segment, ignoring case.
    fn from_type(kind: &str) -> Self {
        if kind.eq_ignore_ascii_case("DEVEUI") {
            DeviceKind::DevEui
        } else if kind.eq_ignore_ascii_case("IMEI") {
            DeviceKind::Imei
        } else if kind.eq_ignore_ascii_case("DVNUUID") {
            DeviceKind::DvnUuid
        } else {
            DeviceKind::Other
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parts of a string that starts with `urn:dev:TYPE:ID:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DeviceUrn<'a> {
    /// The TYPE segment, as spelled in the input.
    pub(crate) kind: &'a str,
    /// The ID segment, as spelled in the input.
    pub(crate) id: &'a str,
    /// Byte length of `urn:dev:TYPE:ID:` including the trailing colon; what
    /// follows it is the measurement name.
    pub(crate) len: usize,
}

/// Recognises a leading `urn:dev:TYPE:ID:` (prefix matched ignoring case,
/// TYPE and ID non-empty and colon-free). Anything may follow the last colon.
pub(crate) fn parse_device_urn(s: &str) -> Option<DeviceUrn<'_>> {
    // `get` instead of slicing: a multi-byte character straddling byte 8
    // must mean "no match", not a panic.
    let scheme = s.get(..PREFIX.len())?;
    if !scheme.eq_ignore_ascii_case(PREFIX) {
        return None;
    }
    let rest = &s[PREFIX.len()..];
    let (kind, rest) = rest.split_once(':')?;
    let (id, _) = rest.split_once(':')?;
    if kind.is_empty() || id.is_empty() {
        return None;
    }
    Some(DeviceUrn {
        kind,
        id,
        len: PREFIX.len() + kind.len() + 1 + id.len() + 1,
    })
}

/// The kind of device named by `device`, read from the TYPE segment of
/// `urn:dev:TYPE:...` ignoring case; [`DeviceKind::Other`] if `device` is not
/// a device URN.
pub fn device_kind(device: &str) -> DeviceKind {
    let Some(scheme) = device.get(..PREFIX.len()) else {
        return DeviceKind::Other;
    };
    if !scheme.eq_ignore_ascii_case(PREFIX) {
        return DeviceKind::Other;
    }
    match device[PREFIX.len()..].split_once(':') {
        Some((kind, _)) => DeviceKind::from_type(kind),
        None => DeviceKind::Other,
    }
}

/// The normalised key under which a device is looked up.
///
/// For exactly `urn:dev:TYPE:ID:` (scheme in any case) this is
/// `urn:dev:` + TYPE upper-cased + `:` + ID + `:`, with the ID upper-cased
/// for DEVEUI (KPN's own spelling of the hex EUI) and lower-cased for every
/// other type (IMEIs are digits; UUIDs are case-insensitive and canonically
/// lower case). Anything else, including the empty string and URNs with text
/// after the device part, is returned verbatim: we cannot know what case
/// rules an unknown identifier follows, so we must not merge distinct ones.
pub fn device_key(device: &str) -> String {
    let Some(urn) = parse_device_urn(device).filter(|urn| urn.len == device.len()) else {
        return device.to_owned();
    };
    let mut key = String::with_capacity(device.len());
    key.push_str(PREFIX);
    key.extend(urn.kind.chars().map(|c| c.to_ascii_uppercase()));
    key.push(':');
    if DeviceKind::from_type(urn.kind) == DeviceKind::DevEui {
        key.extend(urn.id.chars().map(|c| c.to_ascii_uppercase()));
    } else {
        key.extend(urn.id.chars().map(|c| c.to_ascii_lowercase()));
    }
    key.push(':');
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_device_prefix_and_rest() {
        let urn = parse_device_urn("urn:dev:DEVEUI:0123456789ABCDEF:temperature");
        assert_eq!(
            urn,
            Some(DeviceUrn {
                kind: "DEVEUI",
                id: "0123456789ABCDEF",
                len: "urn:dev:DEVEUI:0123456789ABCDEF:".len(),
            })
        );
        // Empty rest is still a device URN.
        assert!(parse_device_urn("urn:dev:IMEI:123456789012345:").is_some());
        // Scheme is case-insensitive.
        assert!(parse_device_urn("URN:Dev:imei:1:x").is_some());
    }

    #[test]
    fn rejects_non_device_urns() {
        for s in [
            "",
            "urn:dev:",
            "urn:dev:ow:10e2073a01080063",
            "urn:dev::123:",
            "urn:dev:IMEI::",
            "urn:foo:IMEI:1:",
            "device-name",
            "urn:deé:IMEI:1:",
        ] {
            assert_eq!(parse_device_urn(s), None, "{s:?}");
        }
    }

    #[test]
    fn kind_is_read_case_insensitively() {
        assert_eq!(
            device_kind("urn:dev:DEVEUI:0123456789ABCDEF:"),
            DeviceKind::DevEui
        );
        assert_eq!(
            device_kind("urn:dev:deveui:0123456789abcdef:"),
            DeviceKind::DevEui
        );
        assert_eq!(
            device_kind("URN:DEV:Imei:123456789012345:"),
            DeviceKind::Imei
        );
        assert_eq!(
            device_kind("urn:dev:DVNUUID:3f2504e0-4f89-41d3-9a0c-0305e82c3301:"),
            DeviceKind::DvnUuid
        );
        assert_eq!(
            device_kind("urn:dev:mac:0024befffe804ff1:"),
            DeviceKind::Other
        );
        assert_eq!(device_kind("device-name"), DeviceKind::Other);
        assert_eq!(device_kind(""), DeviceKind::Other);
        assert_eq!(device_kind("urn:dev:IMEI"), DeviceKind::Other);
    }

    #[test]
    fn kind_strings() {
        assert_eq!(DeviceKind::DevEui.as_str(), "DEVEUI");
        assert_eq!(DeviceKind::Imei.as_str(), "IMEI");
        assert_eq!(DeviceKind::DvnUuid.as_str(), "DVNUUID");
        assert_eq!(DeviceKind::Other.as_str(), "other");
        assert_eq!(DeviceKind::Imei.to_string(), "IMEI");
    }

    #[test]
    fn deveui_key_is_upper_case() {
        let expected = "urn:dev:DEVEUI:0123456789ABCDEF:";
        assert_eq!(device_key("urn:dev:deveui:0123456789abcdef:"), expected);
        assert_eq!(device_key("urn:DEV:DEVEUI:0123456789ABCDEF:"), expected);
        assert_eq!(device_key("URN:dev:DevEui:0123456789aBcDeF:"), expected);
    }

    #[test]
    fn other_ids_are_lower_case() {
        assert_eq!(
            device_key("urn:dev:dvnuuid:3F2504E0-4F89-41D3-9A0C-0305E82C3301:"),
            "urn:dev:DVNUUID:3f2504e0-4f89-41d3-9a0c-0305e82c3301:"
        );
        assert_eq!(
            device_key("urn:dev:imei:123456789012345:"),
            "urn:dev:IMEI:123456789012345:"
        );
        assert_eq!(
            device_key("urn:dev:Mac:0024BEFFFE804FF1:"),
            "urn:dev:MAC:0024befffe804ff1:"
        );
    }

    #[test]
    fn non_urns_are_verbatim() {
        for s in [
            "",
            "device-name",
            "Device-Name",
            "urn:dev:ow:10e2073a01080063",
            "urn:dev:IMEI:123:temperature",
        ] {
            assert_eq!(device_key(s), s);
        }
    }
}
