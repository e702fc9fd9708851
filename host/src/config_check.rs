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
    out.push_str(&format!("# retry schedule: {}\n", retry_schedule(config)));
    out.push_str(&redacted_yaml(config));
    out
}

/// The delays before each retry and their total, e.g. `10s 30s 1m … (4h 36m
/// in all before the dead-letter queue)`.
pub fn retry_schedule(config: &Config) -> String {
    let delays: Vec<std::time::Duration> = (1..config.max_attempts())
        .map(|a| config.retry_delay(a))
        .collect();
    if delays.is_empty() {
        return "no retries (max_reconsume_times: 0)".into();
    }
    let total: std::time::Duration = delays.iter().sum();
    format!(
        "{} retries after {} ({} in all before the dead-letter queue)",
        delays.len(),
        delays
            .iter()
            .map(|d| human(*d))
            .collect::<Vec<_>>()
            .join(" "),
        human(total)
    )
}

fn human(d: std::time::Duration) -> String {
    let ms = d.as_millis() as u64;
    let s = ms / 1000;
    match () {
        _ if ms < 1000 => format!("{ms}ms"),
        _ if s < 60 => format!("{s}s"),
        _ if s < 3600 => match s % 60 {
            0 => format!("{}m", s / 60),
            r => format!("{}m{r}s", s / 60),
        },
        _ => match (s % 3600) / 60 {
            0 => format!("{}h", s / 3600),
            m => format!("{}h{m}m", s / 3600),
        },
    }
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
    fn the_retry_schedule_is_the_brokers_delay_levels() {
        let rocketmq = |more: &str| {
            Config::parse(
                &format!("rocketmq:\n  enabled: true\n{more}"),
                Path::new("t.yaml"),
            )
            .expect("valid")
        };
        // Apache RocketMQ's defaults: level 3 (10 s) onwards, 16 retries.
        let s = retry_schedule(&rocketmq(""));
        assert_eq!(
            s,
            "16 retries after 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h (4h45m in all before the dead-letter queue)"
        );
        // A first level and a cap.
        let s = retry_schedule(&rocketmq(
            "  max_reconsume_times: 5\n  retry_delay_level: 2\n  retry_max_delay_level: 4\n",
        ));
        assert_eq!(
            s,
            "5 retries after 5s 10s 30s 30s 30s (1m45s in all before the dead-letter queue)"
        );
        // The embedded queue: doubling backoff up to its cap.
        let c = Config::parse(
            "rocketmq:\n  max_reconsume_times: 4\nqueue:\n  embedded:\n    retry_backoff_ms: 1000\n    retry_backoff_max_ms: 5000\n",
            Path::new("t.yaml"),
        )
        .expect("valid");
        assert_eq!(
            retry_schedule(&c),
            "4 retries after 1s 2s 4s 5s (12s in all before the dead-letter queue)"
        );
        assert!(report(Path::new("t.yaml"), &c).contains("# retry schedule: 4 retries"));
    }

    #[test]
    fn a_bad_delay_level_names_its_key() {
        for (yaml, key) in [
            (
                "  broker_delay_levels: \"1s 5x\"\n",
                "rocketmq.broker_delay_levels",
            ),
            ("  retry_delay_level: 19\n", "rocketmq.retry_delay_level"),
            (
                "  retry_max_delay_level: 2\n",
                "rocketmq.retry_max_delay_level",
            ),
        ] {
            let e = Config::parse(&format!("rocketmq:\n{yaml}"), Path::new("t.yaml"))
                .expect_err(yaml)
                .to_string();
            assert!(e.contains(key), "{yaml}: {e}");
        }
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
