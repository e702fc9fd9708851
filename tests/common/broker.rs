//! Test harness: a real RocketMQ name server + broker on free ports with a
//! temporary store. Which servers is chosen by `EXPORT_HOST_BROKER`:
//!
//! * `apache-4.9.4` (the default): Apache RocketMQ 4.9.4, the Java
//!   servers, from `$HOME/.cache/export-host/rocketmq-apache/4.9.4/lib`;
//! * `apache-5`: Apache RocketMQ [`APACHE_5`], from
//!   `$HOME/.cache/export-host/rocketmq-apache/<version>/lib`;
//! * `rust`: the rocketmq-rust 1.0.0 binaries, from
//!   `$EXPORT_HOST_ROCKETMQ_BIN` or `$HOME/.cache/export-host/rocketmq/bin`.
//!
//! The Java jars are fetched by `scripts/test-deps.d/rocketmq-apache.sh`,
//! the Rust binaries built by `scripts/test-deps.d/rocketmq.sh`. When they
//! are missing the harness fails and says how to install them: a RocketMQ
//! test never passes without a broker.
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

/// The Apache RocketMQ 5.x version `EXPORT_HOST_BROKER=apache-5` runs (the
/// newest 5.x on Maven Central whose servers all are there; keep in step
/// with `scripts/test-deps.d/rocketmq-apache.sh`).
pub const APACHE_5: &str = "5.5.0";
/// The Apache RocketMQ 4.x version, the default broker.
pub const APACHE_4: &str = "4.9.4";

/// Which servers the harness runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Apache RocketMQ's Java name server and broker of this version.
    Apache(&'static str),
    /// The rocketmq-rust 1.0.0 binaries.
    Rust,
}

impl Kind {
    /// From `EXPORT_HOST_BROKER` (unset: Apache RocketMQ 4.9.4).
    pub fn from_env() -> Kind {
        match std::env::var("EXPORT_HOST_BROKER").as_deref() {
            Err(_) | Ok("") | Ok("apache-4.9.4") | Ok("apache-4") => Kind::Apache(APACHE_4),
            Ok("apache-5") => Kind::Apache(APACHE_5),
            Ok(v) if v == format!("apache-{APACHE_5}") => Kind::Apache(APACHE_5),
            Ok("rust") => Kind::Rust,
            Ok(other) => panic!(
                "EXPORT_HOST_BROKER={other:?}: expected apache-4.9.4 (the default), apache-5 \
                 ({APACHE_5}) or rust"
            ),
        }
    }

    /// `apache-4.9.4`, `apache-5.5.0`, `rust`.
    pub fn label(&self) -> String {
        match self {
            Kind::Apache(v) => format!("apache-{v}"),
            Kind::Rust => "rust".into(),
        }
    }
}

/// Where the rocketmq-rust server binaries are.
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
        "RocketMQ server binary {} is missing (EXPORT_HOST_BROKER=rust).\n\
         Install the rocketmq-rust 1.0.0 servers (≈20 min, once) with\n    \
         bash scripts/test-deps.d/rocketmq.sh\n\
         or point EXPORT_HOST_ROCKETMQ_BIN at a directory holding {NAMESRV} and {BROKER}.",
        path.display()
    );
    path
}

/// The jars of Apache RocketMQ `version` (name server, broker, tools).
pub fn apache_lib(version: &str) -> PathBuf {
    let home = std::env::var_os("HOME").expect("HOME is set");
    let lib = PathBuf::from(home).join(format!(".cache/export-host/rocketmq-apache/{version}/lib"));
    let complete = lib.parent().map(|d| d.join(".complete").is_file()) == Some(true);
    let broker_jar = lib.join(format!("rocketmq-broker-{version}.jar"));
    assert!(
        complete && broker_jar.is_file(),
        "Apache RocketMQ {version} jars are missing (looked for {}).\n\
         Fetch them from Maven Central (≈30 s, once; needs java and mvn) with\n    \
         bash scripts/test-deps.d/rocketmq-apache.sh",
        broker_jar.display()
    );
    lib
}

/// JVM options of every Java server and tool: small heaps, everything
/// (logs, config, `~/store` defaults) under `home`, and the module
/// openings Java 17 needs for RocketMQ's direct-buffer handling.
fn java(lib: &Path, home: &Path, heap: (&str, &str), main: &str) -> Command {
    let mut cmd = Command::new("java");
    cmd.arg(format!("-Xms{}", heap.0))
        .arg(format!("-Xmx{}", heap.1))
        .args([
            "-XX:MaxDirectMemorySize=256m",
            "-XX:+UseSerialGC",
            "-XX:-UsePerfData",
            "--add-opens=java.base/java.nio=ALL-UNNAMED",
            "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
            "--add-opens=java.base/java.lang=ALL-UNNAMED",
            "--add-opens=java.base/java.util=ALL-UNNAMED",
            "--add-exports=java.base/sun.nio.ch=ALL-UNNAMED",
            // 4.x cleans mapped files with jdk.internal.ref.Cleaner (a
            // broker restarted after SIGKILL does so while loading).
            "--add-opens=java.base/jdk.internal.ref=ALL-UNNAMED",
            "--add-exports=java.base/jdk.internal.ref=ALL-UNNAMED",
            "--add-opens=java.base/jdk.internal.misc=ALL-UNNAMED",
            "-Dio.netty.tryReflectionSetAccessible=true",
        ])
        .arg(format!("-Duser.home={}", home.display()))
        .arg(format!("-Drocketmq.home.dir={}", home.display()))
        .arg("-cp")
        .arg(format!("{}/*", lib.display()))
        .arg(main)
        .env("ROCKETMQ_HOME", home)
        .env("HOME", home);
    cmd
}

/// RocketMQ 4.x reads `$ROCKETMQ_HOME/conf/logback_<name>.xml`: a file log
/// under `home/logs` for each server and the tools (5.x has its own inside
/// its jars and logs to `~/logs/rocketmqlogs`, i.e. `home` too).
fn write_logback(home: &Path) {
    let conf = home.join("conf");
    std::fs::create_dir_all(&conf).expect("conf dir");
    for name in ["namesrv", "broker", "tools"] {
        let xml = format!(
            "<configuration>\n  <appender name=\"FILE\" class=\"ch.qos.logback.core.FileAppender\">\n    \
             <file>{}/logs/{name}.log</file>\n    \
             <encoder><pattern>%d{{HH:mm:ss.SSS}} %p [%t] %c{{0}} - %m%n</pattern></encoder>\n  \
             </appender>\n  <root level=\"INFO\"><appender-ref ref=\"FILE\"/></root>\n</configuration>\n",
            home.display()
        );
        std::fs::write(conf.join(format!("logback_{name}.xml")), xml).expect("logback conf");
    }
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
    pub kind: Kind,
    pub name_server: String,
    pub broker_addr: String,
    namesrv: Option<Server>,
    broker: Option<Server>,
    namesrv_port: u16,
    broker_port: u16,
    ha_port: u16,
    starts: usize,
    namesrv_starts: usize,
    /// `(access key, secret key)` of the one account when ACL is on.
    acl: Option<(String, String)>,
}

impl Broker {
    /// Start a name server and a broker of the kind `EXPORT_HOST_BROKER`
    /// names; returns once the broker is registered.
    pub fn start() -> Broker {
        Broker::start_kind(Kind::from_env())
    }

    /// Start a name server and a broker of this kind; returns once the
    /// broker is registered.
    pub fn start_kind(kind: Kind) -> Broker {
        Broker::start_with(kind, None)
    }

    /// An Apache broker with ACL on (`aclEnable`, RocketMQ's plain ACL):
    /// one account, `access_key`/`secret_key`, an admin (it may create
    /// topics and groups), and no white-listed address, so every request
    /// must be signed.
    pub fn start_with_acl(kind: Kind, access_key: &str, secret_key: &str) -> Broker {
        assert!(
            matches!(kind, Kind::Apache(_)),
            "the harness turns ACL on for the Apache brokers only"
        );
        Broker::start_with(kind, Some((access_key.into(), secret_key.into())))
    }

    fn start_with(kind: Kind, acl: Option<(String, String)>) -> Broker {
        // Fail before anything is started when the servers are missing.
        match kind {
            Kind::Apache(v) => {
                apache_lib(v);
            }
            Kind::Rust => {
                binary(NAMESRV);
                binary(BROKER);
            }
        }
        let dir = tempfile::Builder::new()
            .prefix("export-host-rocketmq-")
            .tempdir()
            .expect("tempdir");
        let namesrv_port = free_port();
        let (broker_port, ha_port) = broker_ports();
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        if matches!(kind, Kind::Apache(_)) {
            write_logback(&home);
        }
        let mut b = Broker {
            kind,
            name_server: format!("127.0.0.1:{namesrv_port}"),
            broker_addr: format!("127.0.0.1:{broker_port}"),
            dir,
            namesrv: None,
            broker: None,
            namesrv_port,
            broker_port,
            ha_port,
            starts: 0,
            namesrv_starts: 0,
            acl,
        };
        if let Some((ak, sk)) = &b.acl {
            // The broker reads `$ROCKETMQ_HOME/conf/plain_acl.yml`.
            std::fs::create_dir_all(home.join("conf")).expect("conf dir");
            std::fs::write(
                home.join("conf/plain_acl.yml"),
                format!(
                    "globalWhiteRemoteAddresses: []\n\
                     accounts:\n\
                     \x20 - accessKey: {ak}\n\
                     \x20   secretKey: {sk}\n\
                     \x20   whiteRemoteAddress:\n\
                     \x20   admin: true\n\
                     \x20   defaultTopicPerm: PUB|SUB\n\
                     \x20   defaultGroupPerm: PUB|SUB\n"
                ),
            )
            .expect("plain_acl.yml");
        }
        b.start_name_server();
        b.start_broker();
        b
    }

    /// One broker for the whole test binary (killed by its watchdog when
    /// the process exits).
    pub fn shared() -> &'static Broker {
        static SHARED: OnceLock<Broker> = OnceLock::new();
        SHARED.get_or_init(Broker::start)
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    fn start_name_server(&mut self) {
        let home = self.home();
        self.namesrv_starts += 1;
        let cmd = match self.kind {
            Kind::Apache(v) => {
                // The Java name server takes its port from a properties file.
                let conf = self.dir.path().join("namesrv.conf");
                std::fs::write(&conf, format!("listenPort={}\n", self.namesrv_port))
                    .expect("namesrv.conf");
                let mut cmd = java(
                    &apache_lib(v),
                    &home,
                    ("256m", "512m"),
                    "org.apache.rocketmq.namesrv.NamesrvStartup",
                );
                cmd.arg("-c").arg(&conf);
                cmd
            }
            Kind::Rust => {
                let mut cmd = Command::new(binary(NAMESRV));
                cmd.args([
                    "--listenPort",
                    &self.namesrv_port.to_string(),
                    "--bindAddress",
                    "127.0.0.1",
                ])
                .arg("--rocketmqHome")
                .arg(&home);
                cmd
            }
        };
        let log = self
            .dir
            .path()
            .join(format!("namesrv-{}.log", self.namesrv_starts));
        // The first name server's watchdog also removes the temp dir.
        let cleanup = (self.namesrv_starts == 1).then(|| self.dir.path().to_path_buf());
        self.namesrv = Some(Server::spawn(cmd, &home, log, cleanup.as_deref()));
        self.wait_port(self.namesrv_port, "name server");
        if matches!(self.kind, Kind::Apache(_)) {
            self.wait_log(
                false,
                "The Name Server boot success",
                "name server did not boot",
            );
        }
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
             messageDelayLevel={delays}\n\
             {acl}",
            port = self.broker_port,
            ha = self.ha_port,
            ns = self.name_server,
            store = store.display(),
            acl = if self.acl.is_some() {
                "aclEnable=true\n"
            } else {
                ""
            },
        );
        let path = self.dir.path().join("broker.conf");
        std::fs::write(&path, conf).expect("broker.conf");
        path
    }

    fn start_broker(&mut self) {
        let conf = self.write_config();
        let home = self.home();
        self.starts += 1;
        let mut cmd = match self.kind {
            Kind::Apache(v) => java(
                &apache_lib(v),
                &home,
                ("256m", "512m"),
                "org.apache.rocketmq.broker.BrokerStartup",
            ),
            Kind::Rust => Command::new(binary(BROKER)),
        };
        cmd.arg("-c").arg(&conf);
        let log = self.dir.path().join(format!("broker-{}.log", self.starts));
        self.broker = Some(Server::spawn(cmd, &home, log, None));
        self.wait_port(self.broker_port, "broker");
        // Registered with the name server once the log says so (the Java
        // broker registers synchronously before it prints "boot success").
        let ready = match self.kind {
            Kind::Apache(_) => "boot success",
            Kind::Rust => "Register broker to name remoting_server success",
        };
        self.wait_log(true, ready, "broker did not register with the name server");
    }

    /// Wait (60 s at most) until the broker's (or name server's) log of its
    /// current run contains `needle`.
    fn wait_log(&mut self, broker: bool, needle: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let server = if broker {
                self.broker.as_mut()
            } else {
                self.namesrv.as_mut()
            };
            let Some(server) = server else {
                panic!("{what}: not started");
            };
            if server.log().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("{what}: exited ({status}); log:\n{}", tail(&self.logs()));
            }
            assert!(
                Instant::now() < deadline,
                "{what} within 60 s; log:\n{}",
                tail(&self.logs())
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
        self.start_name_server();
    }

    /// Run Apache RocketMQ's `mqadmin` (`MQAdminStartup`) against this
    /// broker's name server: `args` = the subcommand and its options (`-n`
    /// is added). An independent reader of what the broker holds. Uses the
    /// tools of the same Apache version, 4.9.4's for the Rust broker.
    /// Returns stdout; panics when mqadmin cannot run or exits non-zero.
    pub fn mqadmin(&self, args: &[&str]) -> String {
        let version = match self.kind {
            Kind::Apache(v) => v,
            Kind::Rust => APACHE_4,
        };
        let home = self.home();
        if !home.join("conf/logback_tools.xml").is_file() {
            write_logback(&home);
        }
        let out = java(
            &apache_lib(version),
            &home,
            ("64m", "256m"),
            "org.apache.rocketmq.tools.command.MQAdminStartup",
        )
        .args(args)
        .args(["-n", &self.name_server])
        .stdin(Stdio::null())
        .output()
        .expect("run mqadmin");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "mqadmin {args:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        // mqadmin exits 0 when a sub-command fails: it says so on stderr.
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("command failed"),
            "mqadmin {args:?} failed:\n{stdout}\n{stderr}"
        );
        stdout
    }

    pub fn broker_log(&self) -> String {
        self.broker.as_ref().map(Server::log).unwrap_or_default()
    }

    pub fn logs(&self) -> String {
        let mut out = format!(
            "--- namesrv ---\n{}\n--- broker ---\n{}",
            self.namesrv.as_ref().map(Server::log).unwrap_or_default(),
            self.broker_log()
        );
        // The Java servers log to files under home/logs (4.x: our logback
        // files; 5.x: rocketmqlogs/); stdout says little.
        if matches!(self.kind, Kind::Apache(_)) {
            let logs = self.home().join("logs");
            for name in [
                "namesrv.log",
                "broker.log",
                "rocketmqlogs/namesrv.log",
                "rocketmqlogs/broker.log",
            ] {
                if let Ok(text) = std::fs::read_to_string(logs.join(name)) {
                    out.push_str(&format!("\n--- {name} ---\n{}", tail(&text)));
                }
            }
        }
        out
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
/// starts blocks of its own, `queue:` too: `rocketmq.enabled` selects the
/// backend).
pub fn rocketmq_yaml(name_server: &str, topic: &str, group: &str, more: &str) -> String {
    format!(
        "rocketmq:\n  enabled: true\n  name_server: \"{name_server}\"\n  topic: \"{topic}\"\n  consumer_group: \"{group}\"\n  producer_group: \"{group}_producer\"\n{more}"
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

/// A task message for `format` (template `t`, default tenant, data `{}`),
/// for tests that publish to the queue directly.
pub fn task_message(format: &str) -> export_host::queue::TaskMessage {
    use export_host::ids::{TaskId, TemplateId, TenantId};
    export_host::queue::TaskMessage {
        v: export_host::queue::MESSAGE_VERSION,
        task_id: TaskId::generate(),
        tenant: TenantId::default_tenant(),
        template_id: TemplateId::parse("t").expect("id"),
        output_format: format.into(),
        priority: 0,
        data: serde_json::value::RawValue::from_string("{}".into()).expect("raw"),
        created_at: chrono::Utc::now(),
        round: 0,
        options: Default::default(),
    }
}
