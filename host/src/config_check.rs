//! `export-host config check FILE`: load a config exactly as `serve` does
//! ([`Config::load`]: serde with `deny_unknown_fields`, then
//! [`Config::validate`]) and report the effective settings as YAML, every
//! default filled in and secrets redacted.

use serde_yaml::Value;
use std::path::Path;

use crate::config::{Config, ConfigError};

/// What a secret's value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// Key names (or parts of them) whose values are never printed.
const SECRET_KEYS: [&str; 7] = [
    "access_key",
    "secret",
    "token",
    "password",
    "passwd",
    "credential",
    "private_key",
];

/// Is a key a secret? `rocketmq.access_key`, `secret_key`,
/// `security_token`, API keys (`auth.admin_keys`, `tenants[].keys`: hashes,
/// but a hash of a weak key can be guessed), and anything named like them.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_KEYS.iter().any(|s| key.contains(s))
        || key == "key"
        || key == "keys"
        || key.ends_with("_key")
        || key.ends_with("_keys")
}

/// Load and validate `path`; the report on success.
pub fn check(path: &Path) -> Result<String, ConfigError> {
    let config = Config::load(path)?;
    Ok(report(path, &config))
}

/// The effective settings as YAML, secrets redacted, under a header naming
/// the derived values `serve` will use.
pub fn report(path: &Path, config: &Config) -> String {
    let mut out = format!(
        "# {}: valid\n# effective: queue backend {}, worker concurrency {}, {} attempts per task, plugin cache {}\n",
        path.display(),
        match config.backend() {
            crate::config::Backend::Embedded => "embedded",
            crate::config::Backend::Rocketmq => "rocketmq",
        },
        config.worker_concurrency(),
        config.max_attempts(),
        config.plugin_cache_dir().display(),
    );
    out.push_str(&redacted_yaml(config));
    out
}

/// The config as YAML with the value of every secret key (at any depth)
/// replaced by [`REDACTED`]; unset secrets stay `null`.
pub fn redacted_yaml(config: &Config) -> String {
    let mut value = match serde_yaml::to_value(config) {
        Ok(v) => v,
        Err(e) => return format!("# cannot serialize the config: {e}\n"),
    };
    redact(&mut value);
    serde_yaml::to_string(&value).unwrap_or_else(|e| format!("# cannot print the config: {e}\n"))
}

fn redact(value: &mut Value) {
    match value {
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                if k.as_str().is_some_and(is_secret_key) {
                    redact_all(v);
                } else {
                    redact(v);
                }
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(redact),
        Value::Tagged(t) => redact(&mut t.value),
        _ => {}
    }
}

/// Every value under a secret key, keeping the shape (a list of three keys
/// shows as three redacted entries) and `null` for unset.
fn redact_all(value: &mut Value) {
    match value {
        Value::Null => {}
        Value::Mapping(map) => map.iter_mut().for_each(|(_, v)| redact_all(v)),
        Value::Sequence(items) => items.iter_mut().for_each(redact_all),
        Value::Tagged(t) => redact_all(&mut t.value),
        other => *other = Value::String(REDACTED.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_secret_is_redacted_and_nothing_else() {
        let c = Config::parse(
            "rocketmq:\n  access_key: AKID-visible-nowhere\n  secret_key: hunter2\n  security_token: tok-123\n  topic: export_tasks\n",
            Path::new("t.yaml"),
        )
        .expect("valid");
        let y = redacted_yaml(&c);
        for secret in ["AKID-visible-nowhere", "hunter2", "tok-123"] {
            assert!(!y.contains(secret), "{secret} leaked:\n{y}");
        }
        assert!(y.contains("access_key: <redacted>"), "{y}");
        assert!(y.contains("secret_key: <redacted>"), "{y}");
        assert!(y.contains("security_token: <redacted>"), "{y}");
        assert!(y.contains("topic: export_tasks"), "{y}");
        // The redacted YAML is still a config the loader accepts.
        let _: Config = serde_yaml::from_str(&y).expect("round trip");
    }

    #[test]
    fn unset_secrets_stay_null() {
        let y = redacted_yaml(&Config::default());
        assert!(y.contains("secret_key: null"), "{y}");
        assert!(!y.contains(REDACTED), "{y}");
    }

    #[test]
    fn lists_of_keys_keep_their_shape() {
        let mut v: Value = serde_yaml::from_str(
            "auth:\n  admin_keys: [\"sha256:aa\", \"sha256:bb\"]\n  tenants:\n    - id: acme\n      keys: [\"sha256:cc\"]\n",
        )
        .expect("yaml");
        redact(&mut v);
        let y = serde_yaml::to_string(&v).expect("yaml");
        assert!(!y.contains("sha256"), "{y}");
        assert_eq!(y.matches(REDACTED).count(), 3, "{y}");
        assert!(y.contains("id: acme"), "{y}");
    }

    #[test]
    fn secret_names() {
        for k in [
            "access_key",
            "secret_key",
            "security_token",
            "db_password",
            "API_TOKEN",
            "admin_keys",
            "keys",
        ] {
            assert!(is_secret_key(k), "{k}");
        }
        for k in [
            "topic",
            "name_server",
            "max_message_size",
            "tag",
            "keys_file",
            "id",
        ] {
            assert!(!is_secret_key(k), "{k}");
        }
    }
}
