//! JSON documents: a path to the records, the field holding the prefix, and a filter.
//!
//! The selection covers every published shape we know of:
//! - an array of records: Intercom `ip_ranges[].range` filtered on `service`,
//!   Atlassian `items[].cidr` filtered on the array field `direction`;
//! - an array of strings: Stripe `WEBHOOKS`, GitHub `hooks`, Zendesk `ips.egress.all`,
//!   PagerDuty's top-level array (path `""` or `"."`);
//! - several paths concatenated: Datadog `webhooks.prefixes_ipv4` + `prefixes_ipv6`,
//!   AWS `prefixes` + `ipv6_prefixes`;
//! - alternative field names for the prefix: Google `ipv4Prefix` / `ipv6Prefix`;
//! - a prefix field holding an array of prefixes: Salesforce `prefixes[].ip_prefix`.

use serde::Serialize;
use serde_json::Value;

use super::{Parsed, SourceError, json_kind};

/// Which parts of a JSON document hold the prefixes.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct Selector {
    /// Dotted paths to arrays; their items are concatenated. `""` or `"."` is the
    /// document itself.
    pub items: Vec<String>,
    /// The record field holding the prefix; the first one present wins. Empty: the
    /// items are strings.
    pub cidr: Vec<String>,
    /// Every filter must match a record for it to be selected.
    #[serde(rename = "where")]
    pub filters: Vec<RecordFilter>,
    /// A dotted path to the provider's version of the document, if any.
    pub serial: Option<String>,
}

/// A record matches when the field (a dotted path inside the record) is a scalar equal
/// to one of `any_of`, or an array containing one of them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordFilter {
    pub field: String,
    pub any_of: Vec<Value>,
}

impl RecordFilter {
    fn matches(&self, record: &Value) -> bool {
        match lookup(record, &self.field) {
            Ok(Value::Array(values)) => values.iter().any(|v| self.any_of.contains(v)),
            Ok(value) => self.any_of.contains(value),
            Err(_) => false,
        }
    }
}

/// Shows a path the way the configuration spells it (`.` for the document itself).
pub(crate) fn display_path(path: &str) -> &str {
    if path.is_empty() { "." } else { path }
}

fn segments(path: &str) -> impl Iterator<Item = &str> {
    path.split('.').filter(|s| !s.is_empty())
}

/// Follows a dotted path; numeric segments index arrays. On failure, returns the
/// segment that was missing.
fn lookup<'v>(root: &'v Value, path: &str) -> Result<&'v Value, String> {
    let mut value = root;
    for segment in segments(path) {
        let next = match value {
            Value::Object(map) => map.get(segment),
            Value::Array(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        };
        value = next.ok_or_else(|| segment.to_owned())?;
    }
    Ok(value)
}

/// Reads the selected entries (and the serial) of a JSON document.
pub(crate) fn parse(
    selector: &Selector,
    body: &[u8],
    source_id: &str,
) -> Result<Parsed, SourceError> {
    let document: Value = serde_json::from_slice(body).map_err(|err| SourceError::InvalidJson {
        source_id: source_id.to_owned(),
        detail: err.to_string(),
    })?;
    let mut entries = Vec::new();
    for path in &selector.items {
        let shown = display_path(path).to_owned();
        let items = lookup(&document, path).map_err(|missing| SourceError::PathNotFound {
            source_id: source_id.to_owned(),
            path: shown.clone(),
            missing,
        })?;
        let items = items.as_array().ok_or_else(|| SourceError::NotAnArray {
            source_id: source_id.to_owned(),
            path: shown.clone(),
            found: json_kind(items),
        })?;
        for (index, item) in items.iter().enumerate() {
            let at = Item {
                source_id,
                path: &shown,
                index,
            };
            item_entries(selector, item, &at, &mut entries)?;
        }
    }
    let serial = selector
        .serial
        .as_deref()
        .and_then(|path| lookup(&document, path).ok())
        .and_then(|value| match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    Ok(Parsed { entries, serial })
}

/// Where an item is, for errors about it.
struct Item<'a> {
    source_id: &'a str,
    path: &'a str,
    index: usize,
}

/// The entries one item gives: itself (a string), or its prefix field(s); none
/// when the filters do not select it.
fn item_entries(
    selector: &Selector,
    item: &Value,
    at: &Item<'_>,
    entries: &mut Vec<String>,
) -> Result<(), SourceError> {
    let bad_item = |found, expected| SourceError::BadItem {
        source_id: at.source_id.to_owned(),
        path: at.path.to_owned(),
        index: at.index,
        found,
        expected,
    };
    if selector.cidr.is_empty() {
        if !selector.filters.is_empty() && !selector.filters.iter().all(|f| f.matches(item)) {
            return Ok(());
        }
        let entry = item
            .as_str()
            .ok_or_else(|| bad_item(json_kind(item), "a string"))?;
        entries.push(entry.to_owned());
        return Ok(());
    }
    if !item.is_object() {
        return Err(bad_item(json_kind(item), "an object"));
    }
    if !selector.filters.iter().all(|f| f.matches(item)) {
        return Ok(());
    }
    let field = selector
        .cidr
        .iter()
        .find_map(|name| item.get(name).filter(|v| !v.is_null()))
        .ok_or_else(|| SourceError::MissingField {
            source_id: at.source_id.to_owned(),
            path: at.path.to_owned(),
            index: at.index,
            fields: selector
                .cidr
                .iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(" or "),
        })?;
    // A prefix, or an array of them (Salesforce's `ip_prefix: ["a/b", ...]`).
    let prefixes = match field {
        Value::Array(values) => values.as_slice(),
        one => std::slice::from_ref(one),
    };
    for prefix in prefixes {
        let entry = prefix.as_str().ok_or_else(|| {
            bad_item(
                json_kind(prefix),
                "a string prefix field or an array of them",
            )
        })?;
        entries.push(entry.to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sel(items: &[&str], cidr: &[&str], filters: &[(&str, &[&str])]) -> Selector {
        Selector {
            items: items.iter().map(|s| s.to_string()).collect(),
            cidr: cidr.iter().map(|s| s.to_string()).collect(),
            filters: filters
                .iter()
                .map(|(field, values)| RecordFilter {
                    field: field.to_string(),
                    any_of: values.iter().map(|v| json!(v)).collect(),
                })
                .collect(),
            serial: None,
        }
    }

    fn entries(selector: &Selector, doc: Value) -> Vec<String> {
        parse(selector, doc.to_string().as_bytes(), "p/0")
            .unwrap()
            .entries
    }

    #[test]
    fn intercom_selects_outbound_only() {
        let doc = json!({
            "ip_ranges": [
                {"range": "34.231.68.152/32", "region": "US", "service": "INTERCOM-OUTBOUND"},
                {"range": "3.5.0.0/16", "region": "US", "service": "INTERCOM-GENERAL"},
                {"range": "34.197.76.213/32", "region": "US", "service": "INTERCOM-OUTBOUND"},
                {"range": "52.0.0.0/15", "region": "US", "service": "INTERCOM-ENDPOINTS"},
                {"range": "44.0.0.0/16", "region": "US"}
            ],
            "date": "2025-07-25"
        });
        let mut s = sel(
            &["ip_ranges"],
            &["range"],
            &[("service", &["INTERCOM-OUTBOUND"])],
        );
        s.serial = Some("date".into());
        let parsed = parse(&s, doc.to_string().as_bytes(), "intercom/intercom-us").unwrap();
        assert_eq!(parsed.entries, ["34.231.68.152/32", "34.197.76.213/32"]);
        assert_eq!(parsed.serial.as_deref(), Some("2025-07-25"));
    }

    #[test]
    fn stripe_webhooks_array_of_bare_ips() {
        let doc = json!({"API": ["3.18.12.63"], "WEBHOOKS": ["3.18.12.63", "3.130.192.231", "13.235.14.237"]});
        assert_eq!(
            entries(&sel(&["WEBHOOKS"], &[], &[]), doc),
            ["3.18.12.63", "3.130.192.231", "13.235.14.237"]
        );
    }

    #[test]
    fn github_meta_hooks_only_not_actions() {
        let actions: Vec<String> = (0..5500)
            .map(|i| format!("4.{}.{}.0/24", i / 256, i % 256))
            .collect();
        let doc = json!({
            "verifiable_password_authentication": false,
            "ssh_key_fingerprints": {"SHA256_ED25519": "+DiY3wvvV6TuJJhbpZisF/zLDA0zPMSvHdkr4UvCOqU"},
            "hooks": ["192.30.252.0/22", "185.199.108.0/22", "140.82.112.0/20", "143.55.64.0/20", "2a0a:a440::/29", "2606:50c0::/32"],
            "web": ["192.30.252.0/22"],
            "actions": actions,
            "domains": {"website": ["*.github.com"]}
        });
        let got = entries(&sel(&["hooks"], &[], &[]), doc);
        assert_eq!(got.len(), 6);
        assert!(got.contains(&"2606:50c0::/32".to_owned()));
        assert!(!got.iter().any(|e| e.starts_with("4.")));
    }

    #[test]
    fn atlassian_array_fields_contain_egress() {
        let doc = json!({
            "creationDate": "2026-11-02T00:00:00.000000",
            "syncToken": 1762041600,
            "items": [
                {"network": "13.52.5.0", "mask_len": 25, "cidr": "13.52.5.0/25", "mask": "255.255.255.128",
                 "region": ["us-west-1"], "product": ["jira", "confluence"], "direction": ["egress"]},
                {"cidr": "104.192.136.0/21", "region": ["global"], "product": ["bitbucket"], "direction": ["ingress", "egress"]},
                {"cidr": "185.166.140.0/22", "region": ["global"], "product": ["jira"], "direction": ["ingress"]},
                {"cidr": "2401:1d80:3000::/36", "region": ["global"], "product": ["jira"], "direction": ["egress"]}
            ]
        });
        let mut s = sel(&["items"], &["cidr"], &[("direction", &["egress"])]);
        s.serial = Some("syncToken".into());
        let parsed = parse(&s, doc.to_string().as_bytes(), "a/0").unwrap();
        assert_eq!(
            parsed.entries,
            ["13.52.5.0/25", "104.192.136.0/21", "2401:1d80:3000::/36"]
        );
        assert_eq!(parsed.serial.as_deref(), Some("1762041600"));
        // Two filters: direction contains egress and product contains jira or confluence.
        let s = sel(
            &["items"],
            &["cidr"],
            &[
                ("direction", &["egress"]),
                ("product", &["jira", "confluence"]),
            ],
        );
        assert_eq!(entries(&s, doc), ["13.52.5.0/25", "2401:1d80:3000::/36"]);
    }

    #[test]
    fn pagerduty_top_level_array() {
        let doc = json!(["44.242.69.192", "52.89.71.166", "54.213.187.133"]);
        for root in ["", "."] {
            assert_eq!(
                entries(&sel(&[root], &[], &[]), doc.clone()),
                ["44.242.69.192", "52.89.71.166", "54.213.187.133"]
            );
        }
    }

    #[test]
    fn datadog_two_paths_concatenated() {
        let doc = json!({
            "version": 74,
            "modified": "2026-10-30-15-00-00",
            "agents": {"prefixes_ipv4": ["3.233.144.0/20"], "prefixes_ipv6": ["2600:1f18:24e6:b900::/56"]},
            "webhooks": {"prefixes_ipv4": ["3.233.144.0/20", "54.89.233.0/24"], "prefixes_ipv6": ["2600:1f18:24e6:b900::/56"]}
        });
        let mut s = sel(
            &["webhooks.prefixes_ipv4", "webhooks.prefixes_ipv6"],
            &[],
            &[],
        );
        s.serial = Some("version".into());
        let parsed = parse(&s, doc.to_string().as_bytes(), "d/0").unwrap();
        assert_eq!(
            parsed.entries,
            [
                "3.233.144.0/20",
                "54.89.233.0/24",
                "2600:1f18:24e6:b900::/56"
            ]
        );
        assert_eq!(parsed.serial.as_deref(), Some("74"));
    }

    #[test]
    fn zendesk_nested_path() {
        let doc = json!({"ips": {"ingress": {"all": ["1.1.1.1"]}, "egress": {"all": ["216.198.0.0/18", "104.18.0.0/20"]}}});
        assert_eq!(
            entries(&sel(&["ips.egress.all"], &[], &[]), doc),
            ["216.198.0.0/18", "104.18.0.0/20"]
        );
    }

    #[test]
    fn aws_two_paths_two_field_names_and_filters() {
        let doc = json!({
            "syncToken": "1762070593",
            "createDate": "2026-11-02-08-03-13",
            "prefixes": [
                {"ip_prefix": "3.2.34.0/26", "region": "af-south-1", "service": "AMAZON", "network_border_group": "af-south-1"},
                {"ip_prefix": "3.5.140.0/22", "region": "ap-northeast-2", "service": "EC2", "network_border_group": "ap-northeast-2"},
                {"ip_prefix": "13.34.37.64/27", "region": "eu-west-1", "service": "EC2", "network_border_group": "eu-west-1"}
            ],
            "ipv6_prefixes": [
                {"ipv6_prefix": "2a05:d07a:a000::/40", "region": "eu-west-1", "service": "EC2", "network_border_group": "eu-west-1"},
                {"ipv6_prefix": "2600:1f14::/35", "region": "us-west-2", "service": "S3", "network_border_group": "us-west-2"}
            ]
        });
        let s = sel(
            &["prefixes", "ipv6_prefixes"],
            &["ip_prefix", "ipv6_prefix"],
            &[
                ("service", &["EC2"]),
                ("region", &["eu-west-1", "ap-northeast-2"]),
            ],
        );
        assert_eq!(
            entries(&s, doc),
            ["3.5.140.0/22", "13.34.37.64/27", "2a05:d07a:a000::/40"]
        );
    }

    #[test]
    fn google_cloud_alternative_field_names() {
        let doc = json!({
            "syncToken": "1762066800000",
            "creationTime": "2026-11-02T00:00:00.000000",
            "prefixes": [
                {"ipv4Prefix": "34.1.208.0/20", "service": "Google Cloud", "scope": "africa-south1"},
                {"ipv6Prefix": "2600:1900:8000::/44", "service": "Google Cloud", "scope": "africa-south1"},
                {"ipv4Prefix": "34.35.0.0/16", "service": "Google Cloud", "scope": "us-east1"}
            ]
        });
        let s = sel(
            &["prefixes"],
            &["ipv4Prefix", "ipv6Prefix"],
            &[("scope", &["africa-south1"])],
        );
        assert_eq!(entries(&s, doc), ["34.1.208.0/20", "2600:1900:8000::/44"]);
    }

    #[test]
    fn salesforce_prefix_fields_hold_arrays() {
        let doc = json!({
            "syncToken": "1738496063",
            "createDate": "2025-02-02-11-34-23",
            "prefixes": [
                {"region": "ap-northeast-1", "provider": "aws", "ip_prefix": ["192.0.2.0/25"]},
                {"region": "eu-west-1", "provider": "aws", "ip_prefix": ["198.51.100.0/24", "2001:db8:5::/48"]},
                {"region": "us-east-1", "provider": "aws", "ip_prefix": "203.0.113.0/24"}
            ]
        });
        let all = sel(&["prefixes"], &["ip_prefix"], &[]);
        assert_eq!(
            entries(&all, doc.clone()),
            [
                "192.0.2.0/25",
                "198.51.100.0/24",
                "2001:db8:5::/48",
                "203.0.113.0/24"
            ]
        );
        let eu = sel(&["prefixes"], &["ip_prefix"], &[("region", &["eu-west-1"])]);
        assert_eq!(entries(&eu, doc), ["198.51.100.0/24", "2001:db8:5::/48"]);
        let bad = json!({"prefixes": [{"ip_prefix": ["192.0.2.0/25", 7]}]});
        let err = parse(&all, bad.to_string().as_bytes(), "s/0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "source s/0: `prefixes[0]` is a number, expected a string prefix field or an array of them"
        );
    }

    #[test]
    fn scalar_filter_values_other_than_strings() {
        let doc = json!({"r": [{"c": "192.0.2.0/25", "active": true, "n": 1}, {"c": "192.0.2.128/25", "active": false, "n": 2}]});
        let s = Selector {
            items: vec!["r".into()],
            cidr: vec!["c".into()],
            filters: vec![RecordFilter {
                field: "active".into(),
                any_of: vec![json!(true)],
            }],
            serial: None,
        };
        assert_eq!(entries(&s, doc.clone()), ["192.0.2.0/25"]);
        let s = Selector {
            filters: vec![RecordFilter {
                field: "n".into(),
                any_of: vec![json!(2)],
            }],
            ..s
        };
        assert_eq!(entries(&s, doc), ["192.0.2.128/25"]);
    }

    #[test]
    fn errors_name_the_source_and_the_path() {
        let doc =
            json!({"ip_ranges": [{"range": "192.0.2.1/32"}, {"region": "US"}], "x": {"y": 1}});
        let body = doc.to_string();
        let err = parse(
            &sel(&["ip_ranges"], &["range"], &[]),
            body.as_bytes(),
            "intercom/0",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "source intercom/0: record `ip_ranges[1]` has no field `range`"
        );

        let err = parse(
            &sel(&["webhooks.prefixes_ipv4"], &[], &[]),
            body.as_bytes(),
            "d/0",
        )
        .unwrap_err();
        assert!(
            matches!(&err, SourceError::PathNotFound { missing, .. } if missing == "webhooks"),
            "{err}"
        );
        assert!(err.to_string().contains("`webhooks.prefixes_ipv4`"));

        let err = parse(&sel(&["x"], &[], &[]), body.as_bytes(), "d/0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "source d/0: path `x` is an object, expected an array"
        );
        let err = parse(&sel(&[""], &[], &[]), body.as_bytes(), "d/0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "source d/0: path `.` is an object, expected an array"
        );

        let err = parse(&sel(&["ip_ranges"], &[], &[]), body.as_bytes(), "d/0").unwrap_err();
        assert!(
            err.to_string()
                .contains("`ip_ranges[0]` is an object, expected a string"),
            "{err}"
        );

        let err = parse(&sel(&[""], &[], &[]), b"{\"ip_ranges\": [", "d/0").unwrap_err();
        assert!(matches!(err, SourceError::InvalidJson { .. }));
        assert!(
            err.to_string()
                .starts_with("source d/0: the document is not valid JSON")
        );

        let err = parse(&sel(&[""], &[], &[]), b"[\"192.0.2.1\", 7]", "d/0").unwrap_err();
        assert!(err.to_string().contains("`.[1]` is a number"), "{err}");
    }

    #[test]
    fn filtered_out_records_need_no_cidr_field() {
        let doc = json!({"items": [{"direction": ["ingress"]}, {"cidr": "192.0.2.0/24", "direction": ["egress"]}]});
        let s = sel(&["items"], &["cidr"], &[("direction", &["egress"])]);
        assert_eq!(entries(&s, doc), ["192.0.2.0/24"]);
    }

    #[test]
    fn byte_order_mark_is_tolerated() {
        let body = b"\xEF\xBB\xBF[\"192.0.2.1\"]";
        let got = super::super::parse_document(
            &super::super::Format::Json(sel(&[""], &[], &[])),
            body,
            "p/0",
        )
        .unwrap();
        assert_eq!(got.entries, ["192.0.2.1"]);
    }
}
