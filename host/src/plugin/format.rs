//! What a plugin may declare about its output formats, and what a rendered
//! document must match. The host names result files (`<task>.<extension>`)
//! and sets the download's `Content-Type` from the format validated here at
//! load, never from what a render returns: a render that claims another
//! extension or media type is the plugin's fault ([`Fault::BadOutput`]).

use super::Fault;
use super::bindings::Document;

/// Longest extension a format may declare.
pub const MAX_EXTENSION: usize = 16;
/// Longest media type a format may declare (RFC 6838 caps each of type and
/// subtype at 127 characters; parameters share the rest).
pub const MAX_MEDIA_TYPE: usize = 255;

/// Why a declared format is refused at load.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("extension {0:?} is not 1 to {MAX_EXTENSION} lowercase ASCII letters or digits")]
    Extension(String),
    #[error(
        "media type {0:?} is not `type/subtype[; name=value]…` of HTTP tokens (at most {MAX_MEDIA_TYPE} characters, no control characters)"
    )]
    MediaType(String),
}

/// A file extension safe in a file name: `[a-z0-9]{1,16}` (no dot, no
/// separator, no way out of a directory).
pub fn check_extension(ext: &str) -> Result<(), FormatError> {
    let ok = (1..=MAX_EXTENSION).contains(&ext.len())
        && ext
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    ok.then_some(())
        .ok_or_else(|| FormatError::Extension(ext.to_string()))
}

/// A media type safe as a header value: `type/subtype` of RFC 9110 tokens,
/// then `; name=value` parameters whose value is a token or a quoted string
/// of printable ASCII (no escapes). Nothing else: no control characters (so
/// no CR/LF), no non-ASCII.
pub fn check_media_type(media_type: &str) -> Result<(), FormatError> {
    let bad = || FormatError::MediaType(media_type.to_string());
    if media_type.is_empty() || media_type.len() > MAX_MEDIA_TYPE {
        return Err(bad());
    }
    let mut parts = media_type.split(';');
    let essence = parts.next().unwrap_or_default();
    let (ty, subtype) = essence.split_once('/').ok_or_else(bad)?;
    if !is_token(ty) || !is_token(subtype) {
        return Err(bad());
    }
    for param in parts {
        let param = param.trim_matches([' ', '\t']);
        let (name, value) = param.split_once('=').ok_or_else(bad)?;
        let quoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .is_some_and(|v| {
                v.bytes()
                    .all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\')
            });
        if !is_token(name) || !(is_token(value) || quoted) {
            return Err(bad());
        }
    }
    Ok(())
}

/// An RFC 9110 token: one or more `tchar`s.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The rendered document, if it is what `format` declared: the host keeps
/// the declared (validated) extension and media type, and refuses a
/// document that claims others. Media types compare without regard to
/// ASCII case (they are case-insensitive).
pub fn accept(doc: Document, format: &super::FormatInfo) -> Result<super::Rendered, Fault> {
    if doc.extension != format.extension {
        return Err(Fault::BadOutput(format!(
            "the document's extension {:?} is not {:?}, the one format {:?} declared",
            doc.extension, format.extension, format.name
        )));
    }
    if !doc.media_type.eq_ignore_ascii_case(&format.media_type) {
        return Err(Fault::BadOutput(format!(
            "the document's media type {:?} is not {:?}, the one format {:?} declared",
            doc.media_type, format.media_type, format.name
        )));
    }
    Ok(super::Rendered {
        bytes: doc.bytes,
        media_type: format.media_type.clone(),
        extension: format.extension.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_are_short_lowercase_alphanumerics() {
        for ok in ["txt", "pdf", "docx", "md", "7z", "a", "abcdefghijklmnop"] {
            assert_eq!(check_extension(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "txt/../../../X",
            "../x",
            "tar.gz",
            "TXT",
            "t\0",
            "t x",
            "é",
            "abcdefghijklmnopq",
            "a/b",
            "a\\b",
        ] {
            assert!(check_extension(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn media_types_are_header_safe() {
        for ok in [
            "text/plain",
            "application/pdf",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            "text/plain; charset=utf-8",
            "text/plain;charset=utf-8",
            "text/html; charset=utf-8; q=\"a b\"",
            "image/svg+xml",
        ] {
            assert_eq!(check_media_type(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "text",
            "text/",
            "/plain",
            "text/plain\r\nX-Injected: 1",
            "text/plain\nx",
            "text/plain; charset",
            "text/plain; charset=\"a\r\nb\"",
            "text/plain; charset=\"a\\\"b\"",
            "text/pl ain",
            "tëxt/plain",
            "text/plain\0",
            "text/plain; a=b c",
        ] {
            assert!(check_media_type(bad).is_err(), "{bad:?}");
        }
        assert!(check_media_type(&format!("text/{}", "a".repeat(300))).is_err());
    }

    fn format() -> super::super::FormatInfo {
        super::super::FormatInfo {
            name: "txt".into(),
            media_type: "text/plain; charset=utf-8".into(),
            extension: "txt".into(),
            template_kinds: vec!["txt".into()],
            plugin: "text".into(),
        }
    }

    fn doc(media_type: &str, extension: &str) -> Document {
        Document {
            bytes: b"x".to_vec(),
            media_type: media_type.into(),
            extension: extension.into(),
        }
    }

    #[test]
    fn a_document_must_be_what_its_format_declared() {
        let r = accept(doc("TEXT/plain; charset=UTF-8", "txt"), &format()).expect("same type");
        assert_eq!(
            r.media_type, "text/plain; charset=utf-8",
            "the declared one is kept"
        );
        assert_eq!(r.extension, "txt");
        let e = accept(
            doc("text/plain; charset=utf-8", "txt/../../../X"),
            &format(),
        )
        .expect_err("another extension");
        assert_eq!(e.class(), "bad_output");
        assert!(e.to_string().contains("txt/../../../X"), "{e}");
        let e = accept(doc("text/plain\r\nX-Injected: 1", "txt"), &format())
            .expect_err("another media type");
        assert_eq!(e.class(), "bad_output");
        assert!(e.to_string().contains("media type"), "{e}");
    }
}
