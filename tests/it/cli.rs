//! The command line without servers: --help, --version, and one test per kind of bad config, each naming the key or file.

use std::path::Path;
use std::process::{Command, Output};

// `String + &*s` below, not `+ &s`: in the one test binary matrix-sdk's decancer adds an
// `Add` impl to `String`, and `&String` no longer coerces to `&str` there.

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_coi-bridge"));
    c.env_remove("COI_BRIDGE__ACCOUNT__PASSWORD");
    c
}

const GOOD: &str = r#"
[account]
address = "bridge@example.org"
password_file = "PWFILE"

[imap]
host = "127.0.0.1"
port = 1
security = "plain"

[smtp]
host = "127.0.0.1"
port = 1
security = "plain"
"#;

/// Writes a config (with `PWFILE` replaced by a real password file) and runs `check`.
fn check_with(dir: &Path, toml: &str, env: &[(&str, &str)]) -> Output {
    let pw = dir.join("pw");
    std::fs::write(&pw, "secret\n").expect("pw");
    let path = dir.join("c.toml");
    std::fs::write(&path, toml.replace("PWFILE", &pw.display().to_string())).expect("config");
    let mut c = bin();
    c.args(["check", "--config"]).arg(&path);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run coi-bridge")
}

fn assert_config_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "config errors exit 78 (EX_CONFIG); stderr:\n{err}");
    for n in needles {
        assert!(err.to_lowercase().contains(&n.to_lowercase()), "stderr should name {n:?}:\n{err}");
    }
}

#[test]
fn help_and_version() {
    let out = bin().arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("run") && text.contains("check"), "{text}");
    let out = bin().arg("--version").output().expect("run");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
    let out = bin().arg("frobnicate").output().expect("run");
    assert_eq!(out.status.code(), Some(2), "usage errors exit 2");
}

#[test]
fn missing_config_file() {
    let out = bin().args(["check", "--config", "/nonexistent/coi-bridge.toml"]).output().expect("run");
    assert_config_error(&out, &["/nonexistent/coi-bridge.toml", "does not exist"]);
}

#[test]
fn unknown_key_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = check_with(
        dir.path(),
        &GOOD.replace("security = \"plain\"\n\n[smtp]", "security = \"plain\"\nidle_timeout = 5\n\n[smtp]"),
        &[],
    );
    assert_config_error(&out, &["idle_timeout", "imap", "c.toml"]);
}

#[test]
fn wrong_type_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = check_with(dir.path(), &GOOD.replacen("port = 1", "port = \"one\"", 1), &[]);
    assert_config_error(&out, &["imap.port", "c.toml"]);
}

#[test]
fn bad_port_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = check_with(dir.path(), &GOOD.replacen("port = 1", "port = 70000", 1), &[]);
    assert_config_error(&out, &["imap.port", "70000"]);
    let out = check_with(dir.path(), &GOOD.replacen("port = 1", "port = 0", 1), &[]);
    assert_config_error(&out, &["imap.port", "0 is not a port"]);
}

#[test]
fn bad_port_from_env_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = check_with(dir.path(), GOOD, &[("COI_BRIDGE__SMTP__PORT", "smtp")]);
    assert_config_error(&out, &["smtp.port", "COI_BRIDGE__"]);
}

#[test]
fn unreadable_secret_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory cannot be read as a file, even by root.
    let out = check_with(dir.path(), &GOOD.replace("PWFILE", &dir.path().display().to_string()), &[]);
    assert_config_error(&out, &["account.password_file", &dir.path().display().to_string()]);
    let out = check_with(dir.path(), &GOOD.replace("PWFILE", "/nonexistent/pw"), &[]);
    assert_config_error(&out, &["account.password_file", "/nonexistent/pw"]);
}

#[test]
fn password_in_the_file_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = check_with(dir.path(), &GOOD.replace("password_file = \"PWFILE\"", "password = \"hunter2\""), &[]);
    assert_config_error(&out, &["account.password", "COI_BRIDGE__ACCOUNT__PASSWORD"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("hunter2"), "the secret is not echoed");
}

#[test]
fn missing_required_key_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = check_with(dir.path(), &GOOD.replace("address = \"bridge@example.org\"\n", ""), &[]);
    assert_config_error(&out, &["address", "account"]);
}

#[test]
fn run_refuses_bad_config_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("c.toml"), "[account]\naddress = 5\n").expect("write");
    let out = bin().args(["run", "--config"]).arg(dir.path().join("c.toml")).output().expect("run");
    assert_config_error(&out, &["account.address"]);
}

#[test]
fn json_logs_and_a_clear_error_when_the_http_port_is_taken() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let toml = GOOD.replace("PWFILE", "/dev/null")
        + &*format!("\n[store]\nstate_dir = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:{port}\"\n", dir.path().display());
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).expect("config");
    let out = bin()
        .args(["--log-format", "json", "run", "--config"])
        .arg(&path)
        .env("COI_BRIDGE__ACCOUNT__PASSWORD", "s3cret-pw")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    let json_lines: Vec<serde_json::Value> = err
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("each log line is JSON"))
        .collect();
    assert!(!json_lines.is_empty(), "{err}");
    assert!(
        json_lines
            .iter()
            .any(|v| v["level"] == "ERROR" && v["error"].as_str().is_some_and(|e| e.contains("http.listen"))),
        "{err}"
    );
    assert!(!err.contains("s3cret-pw"));
    drop(taken);
}

const MATRIX: &str = r#"
[[bridge]]
id = "matrix"
kind = "matrix"
homeserver = "http://127.0.0.1:8008"
server_name = "localhost"
registration = "registration.yaml"
admins = ["@alice:localhost"]
"#;

#[test]
fn generate_registration_writes_a_private_file_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret\n").expect("pw");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, GOOD.replace("PWFILE", &pw.display().to_string()) + MATRIX).expect("config");
    let run = |extra: &[&str]| {
        let mut c = bin();
        c.arg("generate-registration").args(extra).arg("--config").arg(&path);
        c.output().expect("run")
    };
    let out = run(&[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let reg = dir.path().join("registration.yaml");
    let yaml = std::fs::read_to_string(&reg).expect("written next to the config");
    assert!(yaml.contains("sender_localpart: \"coibot\"") && yaml.contains("url: \"http://127.0.0.1:9187\""), "{yaml}");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(std::fs::metadata(&reg).expect("meta").permissions().mode() & 0o777, 0o600);
    let again = run(&[]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&reg).expect("kept"), yaml, "not replaced without --force");
    assert!(run(&["--force"]).status.success());
    assert_ne!(std::fs::read_to_string(&reg).expect("replaced"), yaml);
    // Without its registration the daemon stops at start, saying what to do.
    std::fs::remove_file(&reg).expect("remove");
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let out = bin()
        .args(["run", "--config"])
        .arg(&path)
        .env("COI_BRIDGE__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("COI_BRIDGE__STORE__STATE_DIR", dir.path())
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bridge \"matrix\"") && err.contains("generate-registration"), "{err}");
}

/// With an accounts dir and no `[account]` in the main file, `generate-registration`
/// looks at every account: the Matrix bridges of two accounts naming one registration
/// file are one choice and get it written; a third naming another file makes it ask
/// which, naming both files.
#[test]
fn generate_registration_finds_the_matrix_bridges_of_directory_accounts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    std::fs::create_dir_all(d.join("accounts.d")).expect("accounts.d");
    let main = format!(
        "[store]\nurl = \"sqlite://bridge.db\"\nstate_dir = \"{}\"\n\n[http]\nlisten = \"127.0.0.1:9187\"\n\n\
         [accounts]\ndir = \"accounts.d\"\n",
        d.display()
    );
    let config = d.join("c.toml");
    std::fs::write(&config, main).expect("main file");
    let account = |name: &str, bot: &str, registration: &str| {
        let pw = d.join(format!("{name}.pw"));
        std::fs::write(&pw, "secret\n").expect("pw");
        let text = format!(
            "[account]\naddress = \"{name}@example.org\"\npassword_file = \"{}\"\n\n\
             [imap]\nhost = \"127.0.0.1\"\n\n[smtp]\nhost = \"127.0.0.1\"\n\n\
             [[bridge]]\nid = \"matrix\"\nkind = \"matrix\"\nhomeserver = \"http://127.0.0.1:8008\"\n\
             server_name = \"localhost\"\nregistration = \"{registration}\"\nbot_localpart = \"{bot}\"\n\
             admins = [\"@alice:localhost\"]\n",
            pw.display()
        );
        std::fs::write(d.join("accounts.d").join(format!("{name}.toml")), text).expect("account file");
    };
    account("ann", "coibot", "../registration.yaml");
    account("bob", "coibot_bob", "../registration.yaml");
    let run = || bin().arg("generate-registration").arg("--config").arg(&config).output().expect("run");
    let out = run();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml = std::fs::read_to_string(d.join("registration.yaml")).expect("written where the account files name it");
    assert!(yaml.contains("sender_localpart: \"coibot\""), "{yaml}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(d.join("registration.yaml")).expect("meta").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    account("cy", "other", "../other.yaml");
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("registration.yaml") && err.contains("other.yaml") && err.contains("--account"), "{err}");
    // --account picks one.
    let out = bin()
        .args(["--account", "cy@example.org", "generate-registration", "--config"])
        .arg(&config)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(d.join("other.yaml").exists());
}

/// Two bridges whose HTTP routes collide (two Matrix appservices: the transaction
/// endpoint's path is the spec's) stop the daemon at start with an error naming the
/// second bridge, not a panic.
#[test]
fn two_bridges_serving_the_same_routes_are_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = dir.path().join("pw");
    std::fs::write(&pw, "secret\n").expect("pw");
    let path = dir.path().join("c.toml");
    let second = MATRIX.replace("id = \"matrix\"", "id = \"matrix2\"").replace("registration.yaml", "reg2.yaml");
    let toml = GOOD.replace("PWFILE", &pw.display().to_string()) + MATRIX + second.as_str();
    std::fs::write(&path, toml).expect("config");
    for id in ["matrix", "matrix2"] {
        let out = bin().args(["generate-registration", "--bridge", id, "--config"]).arg(&path).output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let out = bin()
        .args(["run", "--config"])
        .arg(&path)
        .env("COI_BRIDGE__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("COI_BRIDGE__STORE__STATE_DIR", dir.path())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("bridge \"matrix2\"") && err.contains("overlap"), "{err}");
}

#[test]
fn bad_bridge_sections_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = check_with(
        dir.path(),
        &(GOOD.to_owned() + &*MATRIX.replace("admins = [\"@alice:localhost\"]", "admins = [\"alice\"]")),
        &[],
    );
    assert_config_error(&out, &["admins", "alice"]);
    let out = check_with(dir.path(), &(GOOD.to_owned() + &*MATRIX.replace("server_name", "servername")), &[]);
    assert_config_error(&out, &["servername"]);
    let tg = "\n[[bridge]]\nid = \"tg\"\nkind = \"telegram\"\napi_url = \"ftp://api.example\"\n";
    let out = check_with(dir.path(), &(GOOD.to_owned() + tg), &[]);
    assert_config_error(&out, &["api_url", "ftp://api.example"]);
    let tg = "\n[[bridge]]\nid = \"tg\"\nkind = \"telegram\"\ntokn_file = \"t\"\n";
    let out = check_with(dir.path(), &(GOOD.to_owned() + tg), &[]);
    assert_config_error(&out, &["tokn_file"]);
    // Bot mode needs an account and its password file.
    let bot = MATRIX.replace("admins =", "mode = \"bot\"\nadmins =");
    let out = check_with(dir.path(), &(GOOD.to_owned() + &*bot), &[]);
    assert_config_error(&out, &["mode = \"bot\" needs user"]);
    let out = check_with(dir.path(), &(GOOD.to_owned() + &*bot.replace("admins =", "user = \"relay\"\nadmins =")), &[]);
    assert_config_error(&out, &["user", "relay", "not an MXID"]);
    let with_user = bot.replace("admins =", "user = \"@relay:localhost\"\nadmins =");
    let out = check_with(dir.path(), &(GOOD.to_owned() + &*with_user), &[]);
    assert_config_error(&out, &["password_file"]);
}

#[test]
fn completions_and_man_page_come_from_the_command_line_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let out = bin().args(["completions", shell]).output().expect("run");
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for sub in ["backup", "portals", "generate-registration"] {
            assert!(text.contains(sub), "{shell} completion lacks {sub}");
        }
    }
    let out = bin().arg("man").output().expect("run");
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.starts_with(".ie") || page.contains(".TH coi-bridge"), "not roff: {}", &page[..page.len().min(200)]);
    assert!(page.contains("backup") && page.contains("portals"), "the man page lists the commands");
    // One page per command, which the main page's SEE ALSO names.
    let dir = tempfile::tempdir().expect("tempdir");
    let out = bin().args(["man", "--out-dir"]).arg(dir.path()).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for page in ["coi-bridge.1", "coi-bridge-backup.1", "coi-bridge-portals.1", "coi-bridge-check.1"] {
        assert!(dir.path().join(page).exists(), "{page} not written");
    }
    // Neither needs a config.
    let out = bin().args(["completions", "nushell"]).output().expect("run");
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");
}

#[test]
fn health_probe_fails_clearly_when_nothing_answers() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
    let out = bin().args(["health", "--url", &format!("http://127.0.0.1:{port}/health")]).output().expect("run");
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unhealthy"));
}

#[test]
fn store_commands_need_no_mail_password_but_the_daemon_does() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    let port = free_port();
    let toml = GOOD.replace("PWFILE", "/nonexistent/pw")
        + &*format!("\n[store]\nstate_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{port}\"\n", state.display());
    let path = dir.path().join("c.toml");
    std::fs::write(&path, toml).expect("config");
    // `run` refuses to start without it, as a config error naming the key.
    let out = bin().args(["run", "--config"]).arg(&path).output().expect("run");
    assert_config_error(&out, &["account.password_file", "/nonexistent/pw"]);
    // With it (from env), the daemon's first start makes the store and the key; the
    // store commands then work without the password.
    first_start(&path, "022");
    let out = bin().args(["key", "show", "--config"]).arg(&path).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = bin().args(["portals", "--config"]).arg(&path).output().expect("run");
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no portals yet"));
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `coi-bridge` run by `sh` after `umask MASK`.
fn under_umask(mask: &str) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("umask {mask}; exec \"$0\" \"$@\"")).arg(env!("CARGO_BIN_EXE_coi-bridge"));
    c.env_remove("COI_BRIDGE__ACCOUNT__PASSWORD");
    c
}

/// Runs the daemon under `umask MASK` until its store holds the key (the IMAP server is
/// unreachable, so it only starts), checks `check_files` while it runs, then stops it
/// with SIGTERM.
fn first_start_then(config: &Path, mask: &str, check_files: impl FnOnce()) {
    let mut daemon = under_umask(mask)
        .args(["run", "--config"])
        .arg(config)
        .env("COI_BRIDGE__ACCOUNT__PASSWORD", "pw")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the daemon");
    let mut started = false;
    for _ in 0..600 {
        if let Ok(Some(status)) = daemon.try_wait() {
            panic!("the daemon exited at start: {status}");
        }
        let out = bin().args(["key", "show", "--config"]).arg(config).output().expect("run");
        if out.status.success() {
            started = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let check = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(started, "the daemon did not make its key within 60 s");
        check_files();
    }));
    let term = Command::new("kill").args(["-TERM", &daemon.id().to_string()]).status().expect("kill");
    assert!(term.success());
    let status = daemon.wait().expect("wait");
    if let Err(p) = check {
        std::panic::resume_unwind(p);
    }
    assert_eq!(status.code(), Some(0), "a clean stop on SIGTERM");
}

fn first_start(config: &Path, mask: &str) {
    first_start_then(config, mask, || {});
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o777
}

#[test]
fn store_backup_and_registration_are_private_whatever_the_umask() {
    for mask in ["022", "000"] {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        let toml = GOOD.replace("PWFILE", "/nonexistent/pw")
            + &*format!(
                "\n[store]\nstate_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n",
                state.display(),
                free_port()
            )
            + MATRIX;
        let config = dir.path().join("c.toml");
        std::fs::write(&config, toml).expect("config");
        // The registration: new, and over an old world-readable one with --force.
        let reg = dir.path().join("registration.yaml");
        let out = under_umask(mask).args(["generate-registration", "--config"]).arg(&config).output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(mode(&reg), 0o600, "registration under umask {mask}");
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&reg, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = under_umask(mask)
            .args(["generate-registration", "--force", "--config"])
            .arg(&config)
            .output()
            .expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(mode(&reg), 0o600, "registration replaced with --force under umask {mask}");
        assert!(!dir.path().join("registration.yaml.new").exists());
        let db = state.join("coi-bridge.db");
        first_start_then(&config, mask, || {
            // While the daemon runs, its WAL and shared-memory files exist.
            for f in ["coi-bridge.db", "coi-bridge.db-wal", "coi-bridge.db-shm"] {
                assert_eq!(mode(&state.join(f)), 0o600, "{f} under umask {mask}");
            }
        });
        assert_eq!(mode(&db), 0o600, "umask {mask}");
        assert_eq!(mode(&state), 0o700, "the state dir the daemon made, umask {mask}");
        // A command that writes (an invite) leaves the files private too.
        let out = under_umask(mask).args(["invite", "--config"]).arg(&config).output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(mode(&db), 0o600);
        // The backup.
        let backup = dir.path().join("backup.db");
        let out = under_umask(mask).arg("backup").arg(&backup).arg("--config").arg(&config).output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(mode(&backup), 0o600, "backup under umask {mask}");
        // A store an older version left readable is made private at the next open.
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = bin().args(["portals", "--config"]).arg(&config).output().expect("run");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(mode(&db), 0o600, "an old 0644 store is tightened");
    }
}

#[test]
fn commands_refuse_a_missing_store_and_only_the_daemon_makes_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("state dir");
    let toml = GOOD.replace("PWFILE", "/nonexistent/pw")
        + &*format!("\n[store]\nstate_dir = \"{}\"\n[http]\nlisten = \"127.0.0.1:{}\"\n", state.display(), free_port());
    let config = dir.path().join("c.toml");
    std::fs::write(&config, toml).expect("config");
    let vcf = dir.path().join("a.vcf");
    std::fs::write(&vcf, "BEGIN:VCARD\r\nVERSION:4.0\r\nEMAIL:a@example.org\r\nEND:VCARD\r\n").expect("vcf");
    let db = state.join("coi-bridge.db");
    let link = "https://i.delta.chat/#0123456789ABCDEF0123456789ABCDEF01234567&a=alice%40example.org&i=x&s=y";
    let vcf_arg = vcf.display().to_string();
    let backup_arg = dir.path().join("b.db").display().to_string();
    let commands: Vec<Vec<&str>> = vec![
        vec!["key", "show"],
        vec!["key", "export-public"],
        vec!["key", "vcard"],
        vec!["invite"],
        vec!["invite", "--group", "Room"],
        vec!["join", link],
        vec!["contact", "import", &vcf_arg],
        vec!["portals"],
        vec!["unlink", "matrix", "!room"],
        vec!["backup", &backup_arg],
        vec!["quarantine"],
        vec!["quarantine", "release", "1"],
        vec!["quarantine", "drop", "1"],
    ];
    let refused = |args: &[&str], needle: &str| {
        let out = bin().args(args).arg("--config").arg(&config).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(66), "{args:?} exits 66 (EX_NOINPUT): {err}");
        for n in [needle, "store.url", &db.display().to_string(), "coi-bridge run", "c.toml"] {
            assert!(err.contains(n), "{args:?}: stderr should name {n:?}:\n{err}");
        }
    };
    for args in &commands {
        refused(args, "no store at");
        assert!(!db.exists(), "{args:?} made a store");
    }
    assert!(!dir.path().join("b.db").exists());
    // A store without a key (as `check` leaves one) gets no key from a command either.
    let out = bin()
        .args(["check", "--config"])
        .arg(&config)
        .env("COI_BRIDGE__ACCOUNT__PASSWORD", "pw")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(69), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(db.exists());
    for args in [&["key", "show"][..], &["invite"], &["key", "vcard"]] {
        refused(args, "no bridge key yet");
    }
    // The daemon's first start makes the key; then the commands work, and every one
    // shows the daemon's key.
    first_start(&config, "077");
    let shown = bin().args(["key", "show", "--config"]).arg(&config).output().expect("run");
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let fpr = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("fingerprint").map(|f| f.trim().to_owned()))
        .expect("fingerprint");
    let invite = bin().args(["invite", "--config"]).arg(&config).output().expect("run");
    assert!(String::from_utf8_lossy(&invite.stdout).contains(&fpr), "the invite carries the daemon's key");
    // A mistyped state dir is refused, not filled with a new store and key.
    let other = dir.path().join("typo");
    let out = bin()
        .args(["invite", "--config"])
        .arg(&config)
        .env("COI_BRIDGE__STORE__STATE_DIR", &other)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(66), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(!other.join("coi-bridge.db").exists());
}
