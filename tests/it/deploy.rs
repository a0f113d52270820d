//! The deployment files (issue #6): the systemd unit passes `systemd-analyze verify`, the Dockerfile lints clean with hadolint, deploy/compose.yaml validates against the compose spec, and the facts the issue asks of each that no linter checks.
//!
//! The tools come from `bash tests/servers/install.sh` (systemd from Debian; hadolint and
//! check-jsonschema into target/lint-venv, or `COI_TEST_LINT_VENV`). A missing tool skips
//! its test, and fails it under CI=true.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Where the unit installs the binary; the test puts the cargo-built one in its place.
const INSTALLED_BIN: &str = "/usr/local/bin/coi-bridge";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// `Some(path)` if the tool is there. Otherwise a failure under CI=true, else a SKIPPED line and `None`.
fn tool(path: Option<PathBuf>, name: &str) -> Option<PathBuf> {
    if let Some(path) = path
        && path.is_file()
    {
        return Some(path);
    }
    let msg = format!("{name} missing: run `bash tests/servers/install.sh` (or `bash tests/run`)");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// A linter from the venv that tests/servers/install.sh makes.
fn lint_tool(name: &str) -> Option<PathBuf> {
    let venv =
        std::env::var_os("COI_TEST_LINT_VENV").map(PathBuf::from).unwrap_or_else(|| repo().join("target/lint-venv"));
    let path = venv.join("bin").join(name);
    let shown = path.display().to_string();
    tool(Some(path), &shown)
}

/// The first `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn show(out: &Output) -> String {
    format!(
        "{}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The `key=value` lines of one `[section]` of a unit file, in order; comments dropped.
fn directives(unit: &str, section: &str) -> Vec<(String, String)> {
    let mut current = String::new();
    let mut out = Vec::new();
    for line in unit.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.to_string();
            continue;
        }
        if current == section
            && let Some((key, value)) = line.split_once('=')
        {
            out.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    out
}

/// The values of `key` among the directives, in order.
fn values<'a>(lines: &'a [(String, String)], key: &str) -> Vec<&'a str> {
    lines.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
}

/// Runs `systemd-analyze verify` on `unit`. `--recursive-errors=no`: only problems of this
/// unit count, not those of units it pulls in (network-online.target, the host's own
/// units); with the flag given, systemd 252 also fails on unknown keys and bad values in
/// this unit, which the default mode only warns about. `--man=no`: no man pages needed.
fn verify(analyze: &Path, unit: &Path) -> Output {
    run(Command::new(analyze).arg("verify").arg("--man=no").arg("--recursive-errors=no").arg(unit))
}

/// The lines of the output that name the unit file: every one is a finding.
fn unit_findings(out: &Output, unit_name: &str) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    stdout.lines().chain(stderr.lines()).filter(|l| l.contains(unit_name)).map(str::to_string).collect()
}

#[test]
fn systemd_unit_verifies() {
    let text = read("deploy/coi-bridge.service");
    let service = directives(&text, "Service");
    let one = |key: &str| -> String {
        match values(&service, key).as_slice() {
            [v] => v.to_string(),
            other => panic!("deploy/coi-bridge.service: expected one {key}=, found {other:?}"),
        }
    };

    // What issue #6 asks of the unit, beyond what systemd checks.
    assert_eq!(one("Type"), "notify", "the daemon reports READY=1 itself");
    assert_eq!(one("NotifyAccess"), "main");
    assert!(!one("WatchdogSec").is_empty(), "WatchdogSec= is set");
    assert_eq!(one("Restart"), "on-failure");
    assert_eq!(
        one("ExecStart"),
        format!("{INSTALLED_BIN} run --config /etc/coi-bridge/coi-bridge.toml --log-format json")
    );
    assert!(
        values(&service, "ExecStartPre").is_empty(),
        "no ExecStartPre: a mail server that is down must not keep the daemon from starting"
    );
    assert!(
        values(&service, "LoadCredential").iter().any(|v| v.starts_with("mail-password:")),
        "the mail password comes in as a credential: LoadCredential=mail-password:…"
    );
    assert_eq!(one("StateDirectory"), "coi-bridge");
    assert_eq!(one("ConfigurationDirectory"), "coi-bridge");
    let dynamic = values(&service, "DynamicUser").contains(&"yes");
    let users = values(&service, "User");
    let named = users.last().is_some_and(|u| !u.is_empty() && *u != "root" && *u != "0");
    assert!(dynamic || named, "the service runs as a non-root user (DynamicUser=yes or User=), found User={users:?}");
    assert_eq!(one("ProtectSystem"), "strict");
    assert_eq!(one("NoNewPrivileges"), "yes");
    assert_eq!(one("PrivateTmp"), "yes");
    assert!(
        one("RestrictAddressFamilies").split_whitespace().any(|f| f == "AF_UNIX"),
        "AF_UNIX stays allowed: sd_notify writes to the $NOTIFY_SOCKET unix socket"
    );

    let Some(analyze) = tool(on_path("systemd-analyze"), "systemd-analyze (Debian package systemd)") else {
        return;
    };
    let bin = env!("CARGO_BIN_EXE_coi-bridge");
    let dir = tempfile::tempdir().expect("tempdir");

    // The unit as installed, except that ExecStart runs the cargo-built binary: verify
    // checks that the binary exists and is executable.
    let exec = format!("ExecStart={INSTALLED_BIN} ");
    let mut rewritten = 0;
    let copy: String = text
        .lines()
        .map(|line| match line.strip_prefix(&exec) {
            Some(args) => {
                rewritten += 1;
                format!("ExecStart=\"{}\" {args}\n", bin.replace('%', "%%"))
            }
            None => format!("{line}\n"),
        })
        .collect();
    assert_eq!(rewritten, 1, "one ExecStart= line starting with {exec:?}");
    let unit = dir.path().join("coi-bridge.service");
    std::fs::write(&unit, &copy).expect("write the unit");

    let out = verify(&analyze, &unit);
    assert!(out.status.success(), "systemd-analyze verify {}: {}", unit.display(), show(&out));
    let findings = unit_findings(&out, "coi-bridge.service");
    assert!(findings.is_empty(), "systemd-analyze verify warns about the unit:\n{}", findings.join("\n"));

    // The same check sees a mistake: an unknown key fails it and is named.
    let broken_dir = tempfile::tempdir().expect("tempdir");
    let broken = broken_dir.path().join("coi-bridge.service");
    std::fs::write(&broken, copy.replacen("[Service]\n", "[Service]\nNoSuchKey=1\n", 1)).expect("write the unit");
    let out = verify(&analyze, &broken);
    let findings = unit_findings(&out, "coi-bridge.service");
    assert!(
        !out.status.success() && findings.iter().any(|l| l.contains("NoSuchKey")),
        "systemd-analyze verify no longer reports an unknown key; the check above proves nothing: {}",
        show(&out)
    );
}

/// The Dockerfile's instructions as (KEYWORD, arguments): continuation lines joined,
/// comments and blank lines dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut pending = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(head) = line.strip_suffix('\\') {
            pending.push_str(head);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        let (keyword, args) = full.split_once(char::is_whitespace).unwrap_or((full.as_str(), ""));
        out.push((keyword.to_ascii_uppercase(), args.trim().to_string()));
    }
    out
}

/// The port of the default `[http] listen` in config/coi-bridge.example.toml.
fn default_listen_port() -> String {
    let example = read("config/coi-bridge.example.toml");
    let listen = example
        .lines()
        .find_map(|l| l.trim().strip_prefix("listen = \""))
        .expect("config/coi-bridge.example.toml has listen = \"…\"");
    let addr = listen.trim_end_matches('"');
    let (_, port) = addr.rsplit_once(':').expect("listen is HOST:PORT");
    port.to_string()
}

#[test]
fn dockerfile_lints_clean() {
    let text = read("Dockerfile");
    let all = instructions(&text);
    let last_from = all.iter().rposition(|(k, _)| k == "FROM").expect("the Dockerfile has a FROM");
    assert!(all[..last_from].iter().any(|(k, _)| k == "FROM"), "multi-stage: a build stage, then the runtime stage");
    assert!(
        all.iter().any(|(k, a)| k == "RUN" && a.contains("cargo build --release --locked")),
        "the build stage runs cargo build --release --locked"
    );
    let runtime = &all[last_from..];
    let of = |keyword: &str| values(runtime, keyword);

    let users = of("USER");
    let user = users.last().map(|u| u.split(':').next().unwrap_or_default()).unwrap_or_default();
    assert!(
        !user.is_empty() && user != "root" && user != "0",
        "the runtime stage ends with a USER that is not root, found {users:?}"
    );
    assert!(
        of("HEALTHCHECK").iter().any(|a| a.contains("CMD") && !a.trim().eq_ignore_ascii_case("NONE")),
        "the runtime stage has a HEALTHCHECK"
    );
    assert!(of("VOLUME").iter().any(|a| a.contains("/var/lib/coi-bridge")), "VOLUME /var/lib/coi-bridge");
    let port = default_listen_port();
    assert!(
        of("EXPOSE").iter().any(|a| a.split_whitespace().any(|p| p == port || p == format!("{port}/tcp"))),
        "EXPOSE {port}, the default [http] listen port"
    );

    let Some(hadolint) = lint_tool("hadolint") else {
        return;
    };
    let out = run(Command::new(hadolint).current_dir(repo()).arg("--no-color").arg("Dockerfile"));
    assert!(out.status.success(), "hadolint Dockerfile: {}", show(&out));
}

#[test]
fn compose_validates() {
    let compose = read("deploy/compose.yaml");
    for needle in ["synapse:", "coi-bridge:", "context: ..", "restart: unless-stopped", "healthcheck:", "secrets:"] {
        assert!(compose.contains(needle), "deploy/compose.yaml has {needle:?}");
    }
    let appservices = read("deploy/compose/synapse-appservices.yaml");
    assert!(
        appservices.contains("app_service_config_files:") && compose.contains("target: /coi-bridge/registration.yaml"),
        "Synapse lists the registration that compose mounts"
    );

    let Some(check) = lint_tool("check-jsonschema") else {
        return;
    };
    let out = run(Command::new(check).current_dir(repo()).args([
        "--builtin-schema",
        "vendor.compose-spec",
        "deploy/compose.yaml",
    ]));
    assert!(out.status.success(), "check-jsonschema (compose spec) deploy/compose.yaml: {}", show(&out));
}

/// The compose example's bridge config passes the daemon's own strict loader, and the
/// registration it writes points Synapse at the bridge's compose service.
#[test]
fn compose_bridge_config_loads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("coi-bridge.toml");
    std::fs::write(&config, read("deploy/compose/coi-bridge.toml")).expect("write the config");
    let out = run(Command::new(env!("CARGO_BIN_EXE_coi-bridge"))
        .env_remove("COI_BRIDGE_CONFIG")
        .env("COI_BRIDGE__ACCOUNT__PASSWORD", "unused")
        .arg("--config")
        .arg(config)
        .arg("generate-registration"));
    assert!(out.status.success(), "generate-registration with deploy/compose/coi-bridge.toml: {}", show(&out));
    let registration = std::fs::read_to_string(dir.path().join("registration.yaml")).expect("registration written");
    assert!(
        registration.contains("url: \"http://coi-bridge:9187\""),
        "the registration points at the compose service:\n{registration}"
    );
}
