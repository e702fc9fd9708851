//! Test harness: a real RocketMQ name server + broker (the rocketmq-rust
//! 1.0.0 binaries) on free ports with a temporary store.
//!
//! The binaries come from `$EXPORT_HOST_ROCKETMQ_BIN` or
//! `$HOME/.cache/export-host/rocketmq/bin` (installed by
//! `scripts/test-deps.d/rocketmq.sh`). When they are missing the harness
//! fails and says how to install them: a RocketMQ test never passes
//! without a broker.
//!
//! Servers are killed on `Drop`, and each one also gets a watchdog shell
//! that kills it once the test process is gone, so a test binary that
//! exits without dropping (a `static` broker, a panic in another thread)
//! leaves no server behind.
#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const NAMESRV: &str = "rocketmq-namesrv-rust";
const BROKER: &str = "rocketmq-broker-rust";

/// Where the server binaries are.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("EXPORT_HOST_ROCKETMQ_BIN") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").expect("HOME is set");
    PathBuf::from(home).join(".cache/export-host/rocketmq/bin")
}

fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "RocketMQ server binary {} is missing.\n\
         Install the rocketmq-rust 1.0.0 servers (≈20 min, once) with\n    \
         bash scripts/test-deps.d/rocketmq.sh\n\
         or point EXPORT_HOST_ROCKETMQ_BIN at a directory holding {NAMESRV} and {BROKER}.",
        path.display()
    );
    path
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// A port `p` with `p - 2` (the broker's fast channel) and `p + 1` (HA)
/// free as well.
fn broker_ports() -> (u16, u16) {
    for _ in 0..200 {
        let p = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("free port");
        if p > 1100 && p < 65000 && port_free(p) && port_free(p - 2) && port_free(p + 1) {
            return (p, p + 1);
        }
    }
    panic!("no free ports for a broker");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A process with a watchdog that kills it when the test process exits.
struct Server {
    child: Child,
    watchdog: Child,
    log: PathBuf,
}

impl Server {
    /// `cleanup`: a directory the watchdog removes after killing the
    /// server (the store of a broker that is never dropped).
    fn spawn(mut cmd: Command, home: &Path, log: PathBuf, cleanup: Option<&Path>) -> Server {
        let out = std::fs::File::create(&log).expect("server log");
        let err = out.try_clone().expect("server log");
        let child = cmd
            .env("HOME", home)
            .env("ROCKETMQ_HOME", home)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start RocketMQ server");
        let mut script = format!(
            "while kill -0 {parent} 2>/dev/null && kill -0 {child} 2>/dev/null; do sleep 0.5; done; kill -9 {child} 2>/dev/null",
            parent = std::process::id(),
            child = child.id()
        );
        if let Some(dir) = cleanup {
            script.push_str(&format!(
                "; if ! kill -0 {parent} 2>/dev/null; then sleep 1; rm -rf '{dir}'; fi",
                parent = std::process::id(),
                dir = dir.display()
            ));
        }
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start watchdog");
        Server {
            child,
            watchdog,
            log,
        }
    }

    fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

/// A running name server + broker.
pub struct Broker {
    dir: tempfile::TempDir,
    pub name_server: String,
    pub broker_addr: String,
    namesrv: Option<Server>,
    broker: Option<Server>,
    namesrv_port: u16,
    broker_port: u16,
    ha_port: u16,
    starts: usize,
}

impl Broker {
    /// Start a name server and a broker; returns once the broker is
    /// registered.
    pub fn start() -> Broker {
        let namesrv_bin = binary(NAMESRV);
        binary(BROKER);
        let dir = tempfile::Builder::new()
            .prefix("export-host-rocketmq-")
            .tempdir()
            .expect("tempdir");
        let namesrv_port = free_port();
        let (broker_port, ha_port) = broker_ports();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let mut cmd = Command::new(namesrv_bin);
        cmd.args([
            "--listenPort",
            &namesrv_port.to_string(),
            "--bindAddress",
            "127.0.0.1",
        ])
        .arg("--rocketmqHome")
        .arg(&home);
        let namesrv = Server::spawn(cmd, &home, dir.path().join("namesrv.log"), Some(dir.path()));
        let mut b = Broker {
            name_server: format!("127.0.0.1:{namesrv_port}"),
            broker_addr: format!("127.0.0.1:{broker_port}"),
            dir,
            namesrv: Some(namesrv),
            broker: None,
            namesrv_port,
            broker_port,
            ha_port,
            starts: 0,
        };
        b.wait_port(namesrv_port, "name server");
        b.start_broker();
        b
    }

    /// One broker for the whole test binary (killed by its watchdog when
    /// the process exits).
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(Broker::start)
    }

    fn write_config(&self) -> PathBuf {
        let store = self.dir.path().join("store");
        // Retry delay levels all 1 s (RocketMQ's defaults start at 10 s),
        // SYNC_FLUSH so SEND_OK means on disk, small files, and no
        // auto-creation: the queue must create its topics and groups.
        let delays = vec!["1s"; 18].join(" ");
        let conf = format!(
            "brokerClusterName=DefaultCluster\n\
             brokerName=broker-a\n\
             brokerId=0\n\
             brokerIP1=127.0.0.1\n\
             listenPort={port}\n\
             haListenPort={ha}\n\
             namesrvAddr={ns}\n\
             storePathRootDir={store}\n\
             storePathCommitLog={store}/commitlog\n\
             mappedFileSizeCommitLog=16777216\n\
             mappedFileSizeConsumeQueue=600000\n\
             flushDiskType=SYNC_FLUSH\n\
             autoCreateTopicEnable=false\n\
             autoCreateSubscriptionGroup=false\n\
             messageDelayLevel={delays}\n",
            port = self.broker_port,
            ha = self.ha_port,
            ns = self.name_server,
            store = store.display(),
        );
        let path = self.dir.path().join("broker.conf");
        std::fs::write(&path, conf).expect("broker.conf");
        path
    }

    fn start_broker(&mut self) {
        let conf = self.write_config();
        let home = self.dir.path().join("home");
        self.starts += 1;
        let mut cmd = Command::new(binary(BROKER));
        cmd.arg("-c").arg(&conf);
        let log = self.dir.path().join(format!("broker-{}.log", self.starts));
        self.broker = Some(Server::spawn(cmd, &home, log, None));
        self.wait_port(self.broker_port, "broker");
        // Registered with the name server once the log says so.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.broker_log();
            if log.contains("Register broker to name remoting_server success") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not register with the name server; log:\n{}",
                tail(&log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_port(&mut self, port: u16, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            let exited = match what {
                "broker" => self.broker.as_mut().map(|s| s.child.try_wait()),
                _ => self.namesrv.as_mut().map(|s| s.child.try_wait()),
            };
            if let Some(Ok(Some(status))) = exited {
                panic!("{what} exited ({status}); log:\n{}", tail(&self.logs()));
            }
            assert!(
                Instant::now() < deadline,
                "{what} is not listening on {port}; log:\n{}",
                tail(&self.logs())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL the broker (the name server stays up).
    pub fn kill_broker(&mut self) {
        if let Some(mut s) = self.broker.take() {
            s.kill();
        }
        // Its ports are released when the process is gone.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.broker_port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start the broker again on the same ports and store.
    pub fn restart_broker(&mut self) {
        self.kill_broker();
        self.start_broker();
    }

    /// SIGKILL the name server (the broker stays up).
    pub fn kill_name_server(&mut self) {
        if let Some(mut s) = self.namesrv.take() {
            s.kill();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.namesrv_port)).is_ok()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Start the name server again on the same port. The broker registers
    /// with it again at its next heartbeat (every 30 s).
    pub fn restart_name_server(&mut self) {
        self.kill_name_server();
        let home = self.dir.path().join("home");
        let mut cmd = Command::new(binary(NAMESRV));
        cmd.args([
            "--listenPort",
            &self.namesrv_port.to_string(),
            "--bindAddress",
            "127.0.0.1",
        ])
        .arg("--rocketmqHome")
        .arg(&home);
        self.namesrv = Some(Server::spawn(
            cmd,
            &home,
            self.dir.path().join("namesrv-2.log"),
            None,
        ));
        self.wait_port(self.namesrv_port, "name server");
    }

    pub fn broker_log(&self) -> String {
        self.broker.as_ref().map(Server::log).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        format!(
            "--- namesrv ---\n{}\n--- broker ---\n{}",
            self.namesrv.as_ref().map(Server::log).unwrap_or_default(),
            self.broker_log()
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut s) = self.broker.take() {
            s.kill();
        }
        if let Some(mut s) = self.namesrv.take() {
            s.kill();
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A unique suffix for topic and group names.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    format!(
        "{prefix}_{}_{ms}_{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Config YAML for a server on the broker at `name_server` with these
/// topic and group names; `more` goes on inside the `rocketmq:` block (or
/// starts blocks of its own).
pub fn rocketmq_yaml(name_server: &str, topic: &str, group: &str, more: &str) -> String {
    format!(
        "queue:\n  backend: rocketmq\nrocketmq:\n  enabled: true\n  name_server: \"{name_server}\"\n  topic: \"{topic}\"\n  consumer_group: \"{group}\"\n  producer_group: \"{group}_producer\"\n{more}"
    )
}

/// [`rocketmq_yaml`] for one process of split roles: `server.role`,
/// `server.instance_id` and `storage.shared_dir` (shared by every process
/// of the test), after `rocketmq_more` in the `rocketmq:` block and before
/// `more`.
#[allow(clippy::too_many_arguments)]
pub fn split_roles_yaml(
    name_server: &str,
    topic: &str,
    group: &str,
    role: &str,
    instance: &str,
    shared: &Path,
    rocketmq_more: &str,
    more: &str,
) -> String {
    rocketmq_yaml(
        name_server,
        topic,
        group,
        &format!(
            "{rocketmq_more}server:\n  role: {role}\n  instance_id: {instance}\nstorage:\n  shared_dir: \"{}\"\n{more}",
            shared.display()
        ),
    )
}
