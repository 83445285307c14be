//! Values: each type checks one value. Their errors get the value's span from
//! toml_edit, so they name the line, column and field like every other error.

use std::{fmt, marker::PhantomData, net::SocketAddr, time::Duration};

use ipnet::IpNet;
use reqwest::Url;
use serde::{
    Deserialize, Deserializer,
    de::{self, IntoDeserializer, MapAccess, SeqAccess, Visitor, value::MapAccessDeserializer},
};

use crate::sources::{
    http::Proxy,
    presets::{self, Preset},
};

use super::*;

/// Reads an `R` and checks it into a `T` inside the deserializer's newtype hook, where
/// toml_edit gives an error the value's span, in a list as in a table (a plain
/// `#[serde(try_from)]` on a list item would get the whole list's span).
pub(super) fn checked<'de, R, T, D>(
    d: D,
    check: impl FnOnce(R) -> Result<T, String>,
) -> Result<T, D::Error>
where
    R: Deserialize<'de>,
    D: Deserializer<'de>,
{
    struct Check<R, F>(F, PhantomData<R>);
    impl<'de, R, T, F> Visitor<'de> for Check<R, F>
    where
        R: Deserialize<'de>,
        F: FnOnce(R) -> Result<T, String>,
    {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a value")
        }
        fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
            (self.0)(R::deserialize(d)?).map_err(de::Error::custom)
        }
    }
    d.deserialize_newtype_struct("checked", Check(check, PhantomData))
}

/// Newtypes that check one value as serde reads it: `Name(Kept) from Raw = check;`.
macro_rules! checked {
    ($($(#[$doc:meta])* $name:ident($kept:ty) from $raw:ty = $check:expr;)*) => {$(
        $(#[$doc])*
        pub(super) struct $name(pub(super) $kept);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                checked::<$raw, _, _>(d, $check).map($name)
            }
        }

        impl From<$name> for $kept {
            fn from(value: $name) -> $kept {
                value.0
            }
        }
    )*};
}

checked! {
    /// A TCP port.
    Port(u16) from i64 = |n| match u16::try_from(n) {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("{n} is not a TCP port (1..=65535)")),
    };
    /// Attempts after the first one.
    Retries(u32) from i64 = |n| match u32::try_from(n) {
        Ok(retries) if retries <= 20 => Ok(retries),
        _ => Err(format!("{n} is not a retry count (0..=20)")),
    };
    /// The most a document may weigh.
    MaxBytes(u64) from i64 = |n| match u64::try_from(n) {
        Ok(bytes) if bytes > 0 => Ok(bytes),
        _ => Err(format!("{n} is not a positive byte count")),
    };
    /// The watch's recording rate per CPU.
    WatchRate(u32) from i64 = |n| match u32::try_from(n) {
        Ok(rate) if (1..=MAX_WATCH_RATE).contains(&rate) => Ok(rate),
        Ok(0) => Err("0 records nothing: to turn the watch off, set enabled = false".to_owned()),
        _ => Err(format!("{n} is not a rate between 1 and {MAX_WATCH_RATE} records per second")),
    };
    /// A fraction between 0 and 1.
    Fraction(f64) from f64 = |x| match x {
        x if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(format!("{x} is not a fraction between 0 and 1")),
    };
    /// The refresh interval: [`MIN_REFRESH`] or longer.
    Refresh(Duration) from String = |text| match duration(&text)? {
        d if d < MIN_REFRESH => Err(format!("{text:?} is shorter than the minimum of 1s")),
        d => Ok(d),
    };
    /// A request timeout, longer than 0s.
    Timeout(Duration) from String = |text| match duration(&text)? {
        d if d.is_zero() => Err("must be longer than 0s".to_owned()),
        d => Ok(d),
    };
    /// The metrics listener's address and port.
    Listen(SocketAddr) from String = |text| text.parse().map_err(|_| {
        format!("{text:?} is not an address and port such as \"127.0.0.1:9975\"")
    });
    /// A source URL: https, or http (which the source must accept with `insecure_http`).
    SourceUrl(Url) from String = |text| {
        let url = Url::parse(&text).map_err(|err| format!("{text:?} is not a URL: {err}"))?;
        match url.scheme() {
            _ if url.host_str().is_none_or(str::is_empty) => Err("the URL has no host".to_owned()),
            "https" | "http" => Ok(url),
            other => Err(format!("unsupported scheme {other:?}: use https")),
        }
    };
    /// A network interface's name, as the kernel allows it.
    IfName(String) from String = interface_name;
    /// A provider's name: it names state files and metric labels.
    ProviderName(String) from String = |name| {
        let allowed = |c: char| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-');
        if name.is_empty() || !name.chars().all(allowed) {
            return Err(format!(
                "{name:?} is not a valid provider name: use lowercase letters, digits, '_' and '-'"
            ));
        }
        Ok(name)
    };
    /// A built-in provider, by name.
    PresetRef(&'static Preset) from String = |name| presets::find(&name).ok_or_else(|| {
        if let Some(why) = presets::retired(&name) {
            return format!("preset {name:?} was removed: {why}");
        }
        let known = presets::names().join(", ");
        format!("unknown preset {name:?}; known presets: {known}")
    });
    /// How long a `dns` source keeps an address it no longer sees, longer than 0s.
    DnsKeep(Duration) from String = |text| match duration(&text)? {
        d if d.is_zero() => Err("must be longer than 0s".to_owned()),
        d => Ok(d),
    };
    /// How long a denied source is kept after it was last seen: longer than 0s, at
    /// most [`MAX_DENIED_KEEP`].
    DeniedKeep(Duration) from String = |text| match duration(&text)? {
        d if d.is_zero() => Err("must be longer than 0s".to_owned()),
        d if d > MAX_DENIED_KEEP => Err(format!(
            "{text:?} is longer than the maximum of 366 days (addresses of strangers are not kept longer)"
        )),
        d => Ok(d),
    };
    /// The DNS server a `dns` source asks: an address with a port, or an address
    /// (port 53).
    Nameserver(SocketAddr) from String = |text| {
        (text.parse::<SocketAddr>())
            .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
            .map_err(|_| format!("{text:?} is not an address such as \"127.0.0.1:5353\" or \"192.0.2.53\""))
    };
    /// A DNS name whose A and AAAA records are the list.
    DnsName(String) from String = dns_name;
    /// Record fields that may hold the prefix (`cidr`): one or more, none empty.
    FieldNames(Vec<String>) from OneOrMany<String> = |OneOrMany(names)| {
        if names.iter().any(String::is_empty) {
            return Err("field names can't be empty".to_owned());
        }
        Ok(names)
    };
}

/// A prefix length of an address family of `BITS` bits.
pub(super) struct PrefixLen<const BITS: u8>(pub(super) u8);

impl<'de, const BITS: u8> Deserialize<'de> for PrefixLen<BITS> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |n: i64| match u8::try_from(n) {
            Ok(len) if len <= BITS => Ok(PrefixLen(len)),
            _ => Err(format!("{n} is not a prefix length (0..={BITS})")),
        })
    }
}

impl<const BITS: u8> From<PrefixLen<BITS>> for u8 {
    fn from(len: PrefixLen<BITS>) -> u8 {
        len.0
    }
}

impl<'de> Deserialize<'de> for Proxy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        checked(d, |text: String| Proxy::parse(&text))
    }
}

/// For `deserialize_with` on a field that [`Config`] keeps in its plain type `U`:
/// reads the checking type `T`.
pub(super) fn via<'de, T: Deserialize<'de> + Into<U>, U, D: Deserializer<'de>>(
    d: D,
) -> Result<U, D::Error> {
    T::deserialize(d).map(Into::into)
}

pub(super) fn interface_name(name: String) -> Result<String, String> {
    match name.len() {
        1..=15 if !name.contains(['/', ' ', '\0']) => Ok(name),
        _ => Err(format!("{name:?} is not a valid interface name")),
    }
}

/// A host name as DNS knows it: dot-separated labels of 1 to 63 letters, digits,
/// `-` or `_`, 253 characters at most; a final dot is allowed.
pub(super) fn dns_name(name: String) -> Result<String, String> {
    if name.parse::<std::net::IpAddr>().is_ok() || name.parse::<IpNet>().is_ok() {
        return Err(format!(
            "{name:?} is an address, not a name: list it with `static`"
        ));
    }
    let bare = name.strip_suffix('.').unwrap_or(&name);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && (label.chars()).all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    };
    if bare.is_empty() || bare.len() > 253 || !bare.split('.').all(label_ok) {
        return Err(format!(
            "{name:?} is not a DNS name such as \"out.adyen.com\""
        ));
    }
    Ok(name.to_ascii_lowercase())
}

pub(super) fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|err| format!("{text:?} is not a duration such as \"30s\" or \"1h\" ({err})"))
}

/// A value or a non-empty list of them (`items = "prefixes"` or
/// `items = ["prefixes", "ipv6_prefixes"]`), read as cargo reads its string-or-list
/// keys.
pub(super) struct OneOrMany<T>(pub(super) Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct OneOrManyVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for OneOrManyVisitor<T> {
            type Value = Vec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let mut all = Vec::new();
                while let Some(one) = seq.next_element()? {
                    all.push(one);
                }
                if all.is_empty() {
                    return Err(de::Error::custom("the list is empty"));
                }
                Ok(all)
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
                T::deserialize(v.into_deserializer()).map(|one| vec![one])
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<T>, E> {
                T::deserialize(v.into_deserializer()).map(|one| vec![one])
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Vec<T>, E> {
                T::deserialize(v.into_deserializer()).map(|one| vec![one])
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Vec<T>, E> {
                T::deserialize(v.into_deserializer()).map(|one| vec![one])
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Vec<T>, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map)).map(|one| vec![one])
            }
        }
        d.deserialize_any(OneOrManyVisitor(PhantomData))
            .map(OneOrMany)
    }
}

/// A value a `where` filter compares a record's field with.
pub(super) struct Scalar(pub(super) serde_json::Value);

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl Visitor<'_> for ScalarVisitor {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(v.into()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar(v.into()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar(v.into()))
            }
        }
        d.deserialize_any(ScalarVisitor)
    }
}

impl<'de> Deserialize<'de> for Interface {
    /// A name (`"eth0"`, mode `auto`) or a table (`{ name = "eth0", mode = "skb" }`),
    /// read as cargo reads its string-or-table keys.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct InterfaceTable {
            name: IfName,
            #[serde(default)]
            mode: AttachMode,
        }
        struct InterfaceVisitor;
        impl<'de> Visitor<'de> for InterfaceVisitor {
            type Value = Interface;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an interface name or a table { name = \"eth0\", mode = \"auto\" }")
            }
            fn visit_str<E: de::Error>(self, name: &str) -> Result<Interface, E> {
                let name = interface_name(name.to_owned()).map_err(E::custom)?;
                let mode = AttachMode::Auto;
                Ok(Interface { name, mode })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Interface, A::Error> {
                let table = InterfaceTable::deserialize(MapAccessDeserializer::new(map))?;
                let (IfName(name), mode) = (table.name, table.mode);
                Ok(Interface { name, mode })
            }
        }
        d.deserialize_any(InterfaceVisitor)
    }
}

/// A list that can't be empty.
pub(super) struct NonEmpty<T>(pub(super) Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for NonEmpty<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match Vec::deserialize(d)? {
            list if list.is_empty() => Err(de::Error::custom("the list is empty")),
            list => Ok(NonEmpty(list)),
        }
    }
}

/// How a url or file source's document is read.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum FormatName {
    Json,
    Text,
}
