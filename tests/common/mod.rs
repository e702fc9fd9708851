//! Test harness: builds the guest components once, starts the real
//! `export-host` binary on port 0 in a temporary directory, and talks to it
//! over HTTP.
#![allow(dead_code)]

pub mod shapes;

use serde_json::{Value, json};
use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

/// Build one plugin or test guest (a no-op when it is up to date), once
/// per test binary.
pub fn build_component(name: &str) {
    static BUILT: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if built.contains(name) {
        return;
    }
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/build-plugins.sh"))
        .arg(name)
        .output()
        .expect("run scripts/build-plugins.sh");
    assert!(
        out.status.success(),
        "building {name} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    built.insert(name.to_string());
}

/// Path of a built component: a format plugin (`text`) or a test guest (`chaos`, `noop`).
pub fn component(name: &str) -> PathBuf {
    build_component(name);
    let root = repo_root();
    let plugin = root.join("plugins/dist").join(format!("{name}.wasm"));
    if plugin.exists() {
        return plugin;
    }
    let guest = root.join("target/test-guests").join(format!("{name}.wasm"));
    assert!(
        guest.exists(),
        "no component {name} (looked in plugins/dist and target/test-guests)"
    );
    guest
}

/// Precompiled components shared by all tests (keyed by content hash).
pub fn shared_cache_dir() -> PathBuf {
    repo_root().join("target/test-plugin-cache")
}

pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub base: String,
    pub child: Option<Child>,
    config_extra: String,
    pub http: reqwest::Client,
    /// Bearer key sent with every request of the helpers below.
    api_key: std::sync::RwLock<Option<String>>,
}

impl TestServer {
    /// Start with the given plugins and extra YAML config sections.
    pub async fn start(plugins: &[&str], config_extra: &str) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin_dir = dir.path().join("plugins");
        std::fs::create_dir_all(&plugin_dir).expect("plugin dir");
        for p in plugins {
            std::fs::copy(component(p), plugin_dir.join(format!("{p}.wasm"))).expect("copy plugin");
        }
        let mut server = TestServer {
            dir,
            base: String::new(),
            child: None,
            config_extra: config_extra.to_string(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
            api_key: Default::default(),
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let base = format!(
            "server:\n  listen: \"127.0.0.1:0\"\nstorage:\n  data_dir: \"{}\"\nplugins:\n  dir: \"{}\"\n  cache_dir: \"{}\"\n",
            d.join("data").display(),
            d.join("plugins").display(),
            shared_cache_dir().display(),
        );
        let config = merge_yaml(&base, &self.config_extra);
        let config_path = d.join("config.yaml");
        std::fs::write(&config_path, config).expect("write config");
        let mut child = Command::new(env!("CARGO_BIN_EXE_export-host"))
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "warn,export_host=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(d.join("server.log")).expect("log file"),
            ))
            .spawn()
            .expect("start export-host");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("export-host listening on ") {
                    let _ = tx.send(url.to_string());
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(url) => self.base = url,
            Err(_) => {
                let _ = child.kill();
                panic!("export-host did not start; log:\n{}", self.log());
            }
        }
        self.child = Some(child);
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGKILL the process (no shutdown, no flush).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }

    /// Process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Send SIGTERM (graceful shutdown); the process keeps running until
    /// it exits by itself (see [`TestServer::wait_exit`]).
    pub fn sigterm(&self) {
        let pid = self.pid().expect("server is running");
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill -TERM");
        assert!(status.success(), "kill -TERM {pid} failed");
    }

    /// Wait up to `timeout` for the process to exit by itself; returns its
    /// exit status (the process is then gone: [`TestServer::restart`]
    /// starts it again), or `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Start again on the same data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Send `Authorization: Bearer <key>` with the requests of the helpers
    /// from now on (`None`: no key).
    pub fn set_api_key(&self, key: Option<&str>) {
        *self.api_key.write().expect("key lock") = key.map(str::to_string);
    }

    /// A request to `path` with the key set by [`set_api_key`](Self::set_api_key).
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match self.api_key.read().expect("key lock").as_deref() {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }

    pub async fn put_template(
        &self,
        id: &str,
        file: &str,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let r = self
            .request(
                reqwest::Method::PUT,
                &format!("/api/v1/templates/{id}/{file}"),
            )
            .body(body)
            .send()
            .await
            .expect("put");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json"))
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, serde_json::to_vec(body).expect("json"))
            .await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        let r = self
            .request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("post");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json envelope"))
    }

    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let r = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .expect("get");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json envelope"))
    }

    /// Submit one task; returns its id (panics unless accepted).
    pub async fn submit(&self, template_id: &str, format: &str, data: Value) -> String {
        let (status, body) = self
            .post_json(
                "/api/v1/export",
                &json!({ "template_id": template_id, "output_format": format, "data": data }),
            )
            .await;
        assert_eq!(status, 202, "submit refused: {body}");
        body["data"]["task_id"]
            .as_str()
            .expect("task_id")
            .to_string()
    }

    /// Submit a batch; returns the task ids (panics unless accepted).
    pub async fn submit_batch(
        &self,
        template_id: &str,
        format: &str,
        data_list: Vec<Value>,
        priority: Option<i32>,
    ) -> Vec<String> {
        let mut body =
            json!({ "template_id": template_id, "output_format": format, "data_list": data_list });
        if let Some(p) = priority {
            body["priority"] = json!(p);
        }
        let (status, body) = self.post_json("/api/v1/export/batch", &body).await;
        assert_eq!(status, 202, "batch refused: {body}");
        body["data"]["task_ids"]
            .as_array()
            .expect("task_ids")
            .iter()
            .map(|v| v.as_str().expect("id").to_string())
            .collect()
    }

    /// Poll until the task is in a final state; returns its status document.
    pub async fn wait_final(&self, task_id: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let (status, body) = self.get_json(&format!("/api/v1/tasks/{task_id}")).await;
            assert_eq!(status, 200, "status of {task_id}: {body}");
            let s = body["data"]["status"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if matches!(s.as_str(), "succeeded" | "failed" | "dead") {
                return body["data"].clone();
            }
            assert!(
                Instant::now() < deadline,
                "task {task_id} still {s} after {timeout:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// The Prometheus text of `/metrics` (panics unless 200).
    pub async fn metrics_text(&self) -> String {
        let r = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .expect("metrics");
        assert_eq!(r.status(), 200, "/metrics");
        r.text().await.expect("text")
    }

    pub async fn result(&self, task_id: &str) -> reqwest::Response {
        self.request(
            reqwest::Method::GET,
            &format!("/api/v1/tasks/{task_id}/result"),
        )
        .send()
        .await
        .expect("result")
    }
}

/// Deep-merge YAML mappings: `extra` wins, nested mappings merge.
pub fn merge_yaml(base: &str, extra: &str) -> String {
    fn merge(a: &mut serde_yaml::Value, b: serde_yaml::Value) {
        match (a, b) {
            (serde_yaml::Value::Mapping(a), serde_yaml::Value::Mapping(b)) => {
                for (k, v) in b {
                    match a.get_mut(&k) {
                        Some(slot) => merge(slot, v),
                        None => {
                            a.insert(k, v);
                        }
                    }
                }
            }
            (a, b) => *a = b,
        }
    }
    let mut value: serde_yaml::Value = serde_yaml::from_str(base).expect("base yaml");
    if !extra.trim().is_empty() {
        merge(&mut value, serde_yaml::from_str(extra).expect("extra yaml"));
    }
    serde_yaml::to_string(&value).expect("yaml")
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.kill9();
    }
}
