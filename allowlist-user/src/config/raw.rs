//! The raw form, as serde reads it: every field a checked value, nothing tied
//! together yet.

use std::{collections::BTreeMap, ops::Range, path::PathBuf};

use serde::{
    Deserialize,
    de::{self},
};
use toml::Spanned;

use crate::sources::{
    format::{
        Format,
        json::{RecordFilter, Selector},
    },
    http::Proxy,
};

use super::{locate::*, values::*, *};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) interfaces: Option<NonEmpty<Spanned<Interface>>>,
    pub(super) ports: Option<NonEmpty<Port>>,
    #[serde(default)]
    pub(super) mode: Mode,
    pub(super) refresh: Option<Refresh>,
    pub(super) state_dir: Option<PathBuf>,
    pub(super) pin_dir: Option<PathBuf>,
    pub(super) metrics: Option<Listen>,
    pub(super) proxy: Option<Proxy>,
    #[serde(default)]
    pub(super) guards: Guards,
    #[serde(default)]
    pub(super) watch: Watch,
    #[serde(default)]
    pub(super) provider: Vec<Spanned<RawProvider>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawProvider {
    pub(super) name: ProviderName,
    pub(super) preset: Option<PresetRef>,
    #[serde(default)]
    pub(super) source: Vec<Spanned<RawSource>>,
    // Where a preset's document is fetched from and how (a mirror, a proxy that
    // re-serves it): the url source keys. The preset's selection stays.
    pub(super) url: Option<SourceUrl>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) timeout: Option<Timeout>,
    pub(super) retries: Option<Retries>,
    pub(super) max_bytes: Option<MaxBytes>,
    pub(super) insecure_http: Option<bool>,
    pub(super) proxy: Option<Proxy>,
    // What a preset decides itself: read only to be refused with a message.
    pub(super) items: Option<de::IgnoredAny>,
    pub(super) cidr: Option<de::IgnoredAny>,
    #[serde(rename = "where")]
    pub(super) filter: Option<de::IgnoredAny>,
    pub(super) format: Option<de::IgnoredAny>,
    pub(super) serial: Option<de::IgnoredAny>,
    #[serde(rename = "static")]
    pub(super) inline: Option<de::IgnoredAny>,
    pub(super) file: Option<de::IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    pub(super) url: Option<SourceUrl>,
    pub(super) file: Option<PathBuf>,
    #[serde(rename = "static")]
    pub(super) inline: Option<Spanned<Vec<Spanned<String>>>>,
    pub(super) dns: Option<DnsName>,
    pub(super) resolver: Option<Nameserver>,
    pub(super) dns_keep: Option<DnsKeep>,
    pub(super) format: Option<FormatName>,
    pub(super) items: Option<OneOrMany<String>>,
    pub(super) cidr: Option<FieldNames>,
    #[serde(rename = "where")]
    pub(super) filter: Option<BTreeMap<String, OneOrMany<Scalar>>>,
    pub(super) serial: Option<String>,
    pub(super) as_of: Option<String>,
    pub(super) reference: Option<String>,
    pub(super) timeout: Option<Timeout>,
    pub(super) max_bytes: Option<MaxBytes>,
    pub(super) insecure_http: Option<bool>,
    pub(super) ca_file: Option<PathBuf>,
    pub(super) retries: Option<Retries>,
    pub(super) proxy: Option<Proxy>,
    #[serde(default)]
    pub(super) force: bool,
}

impl RawSource {
    /// The format of a url or file source: named, or inferred from the URL path or
    /// file name `location`, with the JSON selection.
    pub(super) fn format(&self, location: &str, source: &Range<usize>) -> Result<Format, Problem> {
        let lower = location.to_ascii_lowercase();
        let name = match self.format {
            Some(name) => name,
            None if lower.ends_with(".json") => FormatName::Json,
            None if lower.ends_with(".txt") => FormatName::Text,
            None => {
                let message = format!(
                    "cannot infer the format of {location:?}: set format = \"json\" or \"text\""
                );
                return Err(Problem::key(Some(source.clone()), "format", message));
            }
        };
        if name == FormatName::Text {
            let json_only = [
                ("items", self.items.is_some()),
                ("cidr", self.cidr.is_some()),
                ("where", self.filter.is_some()),
                ("serial", self.serial.is_some()),
            ];
            return match json_only.iter().find(|(_, set)| *set) {
                Some(&(key, _)) => {
                    let message = "only applies to JSON sources";
                    Err(Problem::key(Some(source.clone()), key, message))
                }
                None => Ok(Format::Text),
            };
        }
        let items = match &self.items {
            None => vec![String::new()],
            Some(OneOrMany(items)) => (items.iter())
                .map(|path| if path == "." { "" } else { path }.to_owned())
                .collect(),
        };
        let filters = (self.filter.iter().flatten())
            .map(|(field, OneOrMany(values))| RecordFilter {
                field: field.clone(),
                any_of: values.iter().map(|Scalar(v)| v.clone()).collect(),
            })
            .collect();
        Ok(Format::Json(Selector {
            items,
            cidr: self
                .cidr
                .as_ref()
                .map_or_else(Vec::new, |FieldNames(c)| c.clone()),
            filters,
            serial: self.serial.clone(),
        }))
    }
}
