//! Who is calling: an API key names a tenant (or an admin). Keys are kept
//! only as SHA-256 hashes, from the config's `auth:` block and an optional
//! keys file that is re-read when it changes (add or revoke keys without a
//! restart). With `auth.mode: none` every caller is the `default` tenant
//! with admin rights — for local development only.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use crate::config::{AuthConfig, AuthMode, ConfigError, KeysFile, TenantConfig, TenantLimits};
use crate::ids::TenantId;

/// How often the keys file's modification time is checked.
const KEYS_FILE_POLL: Duration = Duration::from_secs(1);

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The tenant whose templates, tasks and results the caller sees.
    pub tenant: TenantId,
    /// May use the admin endpoints (restarts, dead letters, plugins).
    pub admin: bool,
    pub limits: TenantLimits,
}

/// An admin or a tenant, see [`Auth::identify`].
#[derive(Debug, Clone)]
pub enum Identity {
    Admin,
    Tenant(Caller),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing API key: send `Authorization: Bearer <key>`")]
    Missing,
    #[error("malformed Authorization header: expected `Bearer <key>`")]
    Malformed,
    #[error("unknown or revoked API key")]
    Unknown,
    #[error("this endpoint needs an admin key")]
    NotAdmin,
    #[error("admin keys manage the service and own no templates or tasks: use a tenant key")]
    AdminHasNoTenant,
}

/// The `sha256:<hex>` form of a key, as stored in the config.
pub fn hash_key(key: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(key.as_bytes())))
}

#[derive(Debug, Clone)]
enum Principal {
    Tenant(TenantId),
    Admin,
}

#[derive(Debug, Default)]
struct Keyring {
    keys: HashMap<String, Principal>,
    limits: HashMap<String, TenantLimits>,
}

impl Keyring {
    /// The keys of `admin_keys` and `tenants`; a key hash that names two
    /// principals (two tenants, a tenant and an admin, or twice the same)
    /// is refused: which one it means would be a guess.
    fn build(admin_keys: &[&String], tenants: &[&TenantConfig]) -> Result<Keyring, ConfigError> {
        let mut ring = Keyring::default();
        let add = |ring: &mut Keyring, key: &str, who: Principal, field: &'static str| {
            let key = key.to_ascii_lowercase();
            if let Some(first) = ring.keys.get(&key) {
                return Err(ConfigError::Invalid {
                    key: field,
                    message: format!(
                        "key {}… is listed more than once ({} and {}): a key names one tenant or admin",
                        &key[..key.len().min(15)],
                        first.describe(),
                        who.describe()
                    ),
                });
            }
            ring.keys.insert(key, who);
            Ok(())
        };
        for k in admin_keys {
            add(&mut ring, k, Principal::Admin, "auth.admin_keys")?;
        }
        for t in tenants {
            // Ids were validated with the config.
            let Ok(id) = TenantId::parse(&t.id) else {
                continue;
            };
            for k in &t.keys {
                add(
                    &mut ring,
                    k,
                    Principal::Tenant(id.clone()),
                    "auth.tenants[].keys",
                )?;
            }
            ring.limits.insert(t.id.clone(), t.limits.clone());
        }
        Ok(ring)
    }
}

impl Principal {
    fn describe(&self) -> String {
        match self {
            Principal::Tenant(t) => format!("tenant {:?}", t.as_str()),
            Principal::Admin => "an admin key".to_string(),
        }
    }
}

pub struct Auth {
    mode: AuthMode,
    config: AuthConfig,
    ring: RwLock<Arc<Keyring>>,
}

impl Auth {
    /// Build from the config, reading the keys file if there is one.
    /// A missing keys file holds no keys (they work once it appears); a
    /// broken one, or a key listed twice, is an error.
    pub fn new(config: &AuthConfig) -> Result<Auth, ConfigError> {
        let file = match &config.keys_file {
            Some(p) => read_keys_file(p)?,
            None => None,
        };
        let auth = Auth {
            mode: config.mode,
            config: config.clone(),
            ring: RwLock::new(Arc::default()),
        };
        auth.install(file.as_ref())?;
        Ok(auth)
    }

    fn install(&self, file: Option<&KeysFile>) -> Result<(), ConfigError> {
        let mut admins: Vec<&String> = self.config.admin_keys.iter().collect();
        let mut tenants: Vec<&TenantConfig> = self.config.tenants.iter().collect();
        if let Some(f) = file {
            admins.extend(f.admin_keys.iter());
            tenants.extend(f.tenants.iter());
        }
        let ring = Arc::new(Keyring::build(&admins, &tenants)?);
        *self.ring.write().unwrap_or_else(|p| p.into_inner()) = ring;
        Ok(())
    }

    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// Re-read the keys file whenever its modification time changes; a
    /// broken file is reported and the keys in force stay.
    pub fn watch(self: &Arc<Self>) {
        let Some(path) = self.config.keys_file.clone() else {
            return;
        };
        let auth = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut last = modified(&path);
            loop {
                tokio::time::sleep(KEYS_FILE_POLL).await;
                let Some(auth) = auth.upgrade() else { return };
                let now = modified(&path);
                if now == last {
                    continue;
                }
                last = now;
                match read_keys_file(&path).and_then(|file| {
                    auth.install(file.as_ref())?;
                    Ok(file.is_some())
                }) {
                    Ok(true) => tracing::info!(path = %path.display(), "keys file reloaded"),
                    Ok(false) => tracing::warn!(
                        path = %path.display(),
                        "keys file is gone: its keys are revoked"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "keys file not reloaded; the keys in force stay")
                    }
                }
            }
        });
    }

    /// The limits in force for `tenant` (none configured: the default).
    /// Workers read them per task, so a reloaded keys file applies to the
    /// next render.
    pub fn tenant_limits(&self, tenant: &str) -> TenantLimits {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner()).clone();
        ring.limits.get(tenant).cloned().unwrap_or_default()
    }

    /// The caller of a request with this `Authorization` header value.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, AuthError> {
        if self.mode == AuthMode::None {
            return Ok(Caller {
                tenant: TenantId::default_tenant(),
                admin: true,
                limits: TenantLimits::default(),
            });
        }
        let (ring, principal) = self.lookup(authorization)?;
        match principal {
            Some(Principal::Tenant(t)) => Ok(Caller {
                tenant: t.clone(),
                admin: false,
                limits: ring.limits.get(t.as_str()).cloned().unwrap_or_default(),
            }),
            Some(Principal::Admin) => Err(AuthError::AdminHasNoTenant),
            None => Err(AuthError::Unknown),
        }
    }

    /// The keys in force and the principal of the header's Bearer key.
    fn lookup(
        &self,
        authorization: Option<&str>,
    ) -> Result<(Arc<Keyring>, Option<Principal>), AuthError> {
        let header = authorization.ok_or(AuthError::Missing)?;
        let key = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or(AuthError::Malformed)?;
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner()).clone();
        let principal = ring.keys.get(&hash_key(key)).cloned();
        Ok((ring, principal))
    }

    /// Who calls: an admin (also every caller with `auth.mode: none`), or
    /// a tenant. For endpoints open to both, where a tenant sees only its
    /// own things (the dead-letter queue).
    pub fn identify(&self, authorization: Option<&str>) -> Result<Identity, AuthError> {
        if self.mode == AuthMode::None {
            return Ok(Identity::Admin);
        }
        let (ring, principal) = self.lookup(authorization)?;
        match principal {
            Some(Principal::Admin) => Ok(Identity::Admin),
            Some(Principal::Tenant(t)) => Ok(Identity::Tenant(Caller {
                limits: ring.limits.get(t.as_str()).cloned().unwrap_or_default(),
                tenant: t,
                admin: false,
            })),
            None => Err(AuthError::Unknown),
        }
    }

    /// `max_in_flight` of every tenant that has one, from the keys in force
    /// (the config and the keys file as last read).
    pub fn in_flight_limits(&self) -> HashMap<String, u32> {
        let ring = self.ring.read().unwrap_or_else(|p| p.into_inner()).clone();
        ring.limits
            .iter()
            .filter_map(|(t, l)| l.max_in_flight.map(|m| (t.clone(), m)))
            .collect()
    }

    /// An admin caller, or why not.
    pub fn authenticate_admin(&self, authorization: Option<&str>) -> Result<(), AuthError> {
        if self.mode == AuthMode::None {
            return Ok(());
        }
        match self.lookup(authorization)?.1 {
            Some(Principal::Admin) => Ok(()),
            Some(Principal::Tenant(_)) => Err(AuthError::NotAdmin),
            None => Err(AuthError::Unknown),
        }
    }
}

/// The keys file, or `None` when there is none (deleted: its keys are
/// revoked). An empty file holds no keys.
fn read_keys_file(path: &Path) -> Result<Option<KeysFile>, ConfigError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(path = %path.display(), "keys file not found: it adds no keys until it appears");
            Ok(None)
        }
        _ => KeysFile::load(path).map(Some),
    }
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig {
            mode: AuthMode::Keys,
            admin_keys: vec![hash_key("root-key")],
            tenants: vec![
                TenantConfig {
                    id: "acme".into(),
                    keys: vec![hash_key("acme-key"), hash_key("acme-key-2")],
                    limits: TenantLimits {
                        max_queued: Some(5),
                        ..Default::default()
                    },
                },
                TenantConfig {
                    id: "globex".into(),
                    keys: vec![hash_key("globex-key")],
                    limits: TenantLimits::default(),
                },
            ],
            keys_file: None,
            allow_open_on_network: false,
        }
    }

    #[test]
    fn keys_name_tenants_and_admins() {
        let auth = Auth::new(&config()).unwrap();
        let c = auth.authenticate(Some("Bearer acme-key-2")).unwrap();
        assert_eq!(c.tenant.as_str(), "acme");
        assert!(!c.admin);
        assert_eq!(c.limits.max_queued, Some(5));
        assert_eq!(
            auth.authenticate(Some("Bearer globex-key"))
                .unwrap()
                .tenant
                .as_str(),
            "globex"
        );
        assert_eq!(auth.authenticate(None).unwrap_err(), AuthError::Missing);
        assert_eq!(
            auth.authenticate(Some("Basic abc")).unwrap_err(),
            AuthError::Malformed
        );
        assert_eq!(
            auth.authenticate(Some("Bearer nope")).unwrap_err(),
            AuthError::Unknown
        );
        assert_eq!(
            auth.authenticate(Some("Bearer root-key")).unwrap_err(),
            AuthError::AdminHasNoTenant
        );
        assert!(auth.authenticate_admin(Some("Bearer root-key")).is_ok());
        assert_eq!(
            auth.authenticate_admin(Some("Bearer acme-key"))
                .unwrap_err(),
            AuthError::NotAdmin
        );
    }

    #[test]
    fn a_key_naming_two_principals_is_refused() {
        let mut c = config();
        c.tenants[1].keys.push(hash_key("acme-key"));
        let err = Auth::new(&c).err().expect("duplicate across tenants");
        assert!(err.to_string().contains("more than once"), "{err}");
        assert!(err.to_string().contains("auth.tenants[].keys"), "{err}");
        let mut c = config();
        c.admin_keys.push(
            hash_key("globex-key")
                .to_uppercase()
                .replace("SHA256", "sha256"),
        );
        let err = Auth::new(&c).err().expect("duplicate tenant/admin");
        assert!(err.to_string().contains("an admin key"), "{err}");
    }

    #[test]
    fn without_auth_everyone_is_the_default_tenant() {
        let auth = Auth::new(&AuthConfig::default()).unwrap();
        let c = auth.authenticate(None).unwrap();
        assert_eq!(c.tenant, TenantId::default_tenant());
        assert!(auth.authenticate_admin(None).is_ok());
    }

    #[test]
    fn the_config_holds_hashes_never_keys() {
        let mut c = config();
        c.tenants[0].keys.push("acme-plaintext".into());
        let err = crate::config::validate_keys(&c.admin_keys, &c.tenants).unwrap_err();
        assert!(err.to_string().contains("auth.tenants[].keys"), "{err}");
        assert!(hash_key("x").starts_with("sha256:"));
        assert_eq!(hash_key("x").len(), 7 + 64);
    }
}
