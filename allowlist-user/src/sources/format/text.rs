//! Plain text lists: one address or prefix a line (Cloudflare `ips-v4`, Stripe `.txt`).

use super::SourceError;

/// Returns the entries of a text list. `#` starts a comment (whole-line or trailing);
/// blank lines and surrounding whitespace (including the `\r` of CRLF) are ignored.
pub(crate) fn parse(body: &[u8], source_id: &str) -> Result<Vec<String>, SourceError> {
    let mut entries = Vec::new();
    for (index, line) in body.split(|&b| b == b'\n').enumerate() {
        let line = std::str::from_utf8(line).map_err(|_| SourceError::NotUtf8 {
            source_id: source_id.to_owned(),
            line: index + 1,
        })?;
        let line = match line.find('#') {
            Some(hash) => &line[..hash],
            None => line,
        };
        let entry = line.trim();
        if !entry.is_empty() {
            entries.push(entry.to_owned());
        }
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudflare_ips_v4_document() {
        let body = b"173.245.48.0/20\n103.21.244.0/22\n103.22.200.0/22\n";
        assert_eq!(
            parse(body, "cf/0").unwrap(),
            ["173.245.48.0/20", "103.21.244.0/22", "103.22.200.0/22"]
        );
    }

    #[test]
    fn comments_blank_lines_and_crlf() {
        let body = b"# Stripe webhook IPs\r\n\r\n3.18.12.63\r\n  3.130.192.231  # us-east-2\r\n#13.235.14.237\r\n2001:db8::/48\t\r\n";
        assert_eq!(
            parse(body, "s/0").unwrap(),
            ["3.18.12.63", "3.130.192.231", "2001:db8::/48"]
        );
    }

    #[test]
    fn no_trailing_newline_and_empty_document() {
        assert_eq!(parse(b"192.0.2.1", "s/0").unwrap(), ["192.0.2.1"]);
        assert!(parse(b"", "s/0").unwrap().is_empty());
        assert!(parse(b"# nothing\n\n", "s/0").unwrap().is_empty());
    }

    #[test]
    fn binary_is_an_error_naming_the_line() {
        let err = parse(b"192.0.2.1\n\xff\xfe\n", "s/0").unwrap_err();
        assert_eq!(
            err,
            SourceError::NotUtf8 {
                source_id: "s/0".into(),
                line: 2
            }
        );
        assert!(err.to_string().contains("s/0"));
    }
}
