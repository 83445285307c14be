//! Time as the files in `state_dir` write it: RFC 3339, UTC, whole seconds.

use std::time::SystemTime;

use serde::{Deserialize, Deserializer, Serializer, de::Error};

pub(crate) fn serialize<S: Serializer>(time: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_seconds(*time))
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
    let text = String::deserialize(d)?;
    humantime::parse_rfc3339_weak(&text).map_err(D::Error::custom)
}

/// The same for the values of a map (`{"192.0.2.1": "2026-11-02T08:00:00Z"}`).
pub(crate) mod map {
    use std::{collections::BTreeMap, net::IpAddr, time::SystemTime};

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(crate) fn serialize<S: Serializer>(
        map: &BTreeMap<IpAddr, SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_map(
            map.iter()
                .map(|(k, t)| (k, humantime::format_rfc3339_seconds(*t).to_string())),
        )
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<IpAddr, SystemTime>, D::Error> {
        BTreeMap::<IpAddr, String>::deserialize(d)?
            .into_iter()
            .map(|(k, text)| {
                humantime::parse_rfc3339_weak(&text)
                    .map(|t| (k, t))
                    .map_err(D::Error::custom)
            })
            .collect()
    }
}

/// The same for `Option<SystemTime>` (`null` when absent).
pub(crate) mod option {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub(crate) fn serialize<S: Serializer>(
        time: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match time {
            Some(t) => s.collect_str(&humantime::format_rfc3339_seconds(*t)),
            None => s.serialize_none(),
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<SystemTime>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| humantime::parse_rfc3339_weak(&text).map_err(D::Error::custom))
            .transpose()
    }
}
