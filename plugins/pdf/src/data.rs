//! The task's JSON data as Typst values, and images carried in it.
//!
//! Data reaches the template only as values (`sys.inputs`) or as a file
//! (`json("data.json")`), never as markup: a string is a `str` to Typst
//! whatever characters it holds.
//!
//! A string that is a base64 data URI (`data:image/png;base64,...`) becomes
//! `bytes` in `sys.inputs` (so `image(sys.inputs.logo)` works) and a virtual
//! file at `/data/<path>`, where `<path>` is the keys and array indices
//! leading to it joined by `/` (`image("/data/items/0/photo")`).

use std::collections::HashMap;

use typst::foundations::{Array, Bytes, Dict, Str, Value};

/// The data, converted.
pub struct Data {
    /// The top-level object, for `sys.inputs`.
    pub inputs: Dict,
    /// Decoded data URIs by virtual path (`/data/...`).
    pub files: HashMap<String, Bytes>,
}

pub fn convert(data: &serde_json::Value) -> Data {
    let mut files = HashMap::new();
    let mut path = String::from("/data");
    let inputs = match data {
        serde_json::Value::Object(map) => object(map, &mut path, &mut files),
        _ => Dict::new(),
    };
    Data { inputs, files }
}

fn object(
    map: &serde_json::Map<String, serde_json::Value>,
    path: &mut String,
    files: &mut HashMap<String, Bytes>,
) -> Dict {
    map.iter()
        .map(|(k, v)| {
            let len = path.len();
            path.push('/');
            path.push_str(k);
            let v = value(v, path, files);
            path.truncate(len);
            (Str::from(k.as_str()), v)
        })
        .collect()
}

fn value(v: &serde_json::Value, path: &mut String, files: &mut HashMap<String, Bytes>) -> Value {
    match v {
        serde_json::Value::Null => Value::None,
        serde_json::Value::Bool(b) => Value::Bool(*b),
        serde_json::Value::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        serde_json::Value::String(s) => match data_uri(s) {
            Some(bytes) => {
                let bytes = Bytes::new(bytes);
                // Keys holding `/` or `..` would make ambiguous paths: such
                // images are reachable through `sys.inputs` only.
                if !path.contains("/../") && !path.ends_with("/..") && !path.contains("//") {
                    files.insert(path.clone(), bytes.clone());
                }
                Value::Bytes(bytes)
            }
            None => Value::Str(s.as_str().into()),
        },
        serde_json::Value::Array(items) => Value::Array(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&i.to_string());
                    let v = value(item, path, files);
                    path.truncate(len);
                    v
                })
                .collect::<Array>(),
        ),
        serde_json::Value::Object(map) => Value::Dict(object(map, path, files)),
    }
}

/// The bytes of a base64 `data:` URI; `None` for any other string.
pub fn data_uri(s: &str) -> Option<Vec<u8>> {
    let rest = s.strip_prefix("data:")?;
    let (meta, payload) = rest.split_once(',')?;
    if !meta.ends_with(";base64") {
        return None;
    }
    base64(payload)
}

/// Decode standard or URL-safe base64, padded or not, ignoring whitespace.
pub fn base64(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() / 4 * 3 + 3);
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut padding = false;
    for &c in text.as_bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            b'=' => {
                padding = true;
                continue;
            }
            b' ' | b'\n' | b'\r' | b'\t' => continue,
            _ => return None,
        };
        if padding {
            return None;
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        assert_eq!(base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64("aGVs\nbG8h").unwrap(), b"hello!");
        assert_eq!(base64("-_8=").unwrap(), [0xfb, 0xff]);
        assert!(base64("a*b").is_none());
        assert!(base64("aGVsbG8=aGVs").is_none());
    }

    #[test]
    fn data_uris_become_bytes_and_files() {
        let json = serde_json::json!({
            "name": "#panic()",
            "logo": "data:image/png;base64,aGVsbG8=",
            "rows": [{"photo": "data:image/jpeg;base64,aGk="}, {"n": 1.5}],
            "plain": "data:text/plain,hello"
        });
        let d = convert(&json);
        assert_eq!(
            d.inputs.get("name").unwrap(),
            &Value::Str("#panic()".into())
        );
        assert_eq!(d.files["/data/logo"].as_slice(), b"hello");
        assert_eq!(d.files["/data/rows/0/photo"].as_slice(), b"hi");
        assert!(matches!(d.inputs.get("logo").unwrap(), Value::Bytes(_)));
        assert!(matches!(d.inputs.get("plain").unwrap(), Value::Str(_)));
        assert_eq!(d.files.len(), 2);
    }
}
