//! `[imap] push`: the shared secret Dovecot's push events carry, from a file of mode 0600 or env, checked to fit in the URL Dovecot posts to.

use anyhow::bail;

use super::{ENV_PREFIX, ImapConfig, Secret, read_secret_file};

/// The shortest secret taken (a hex string of 8 random bytes, at least).
const MIN_SECRET_LEN: usize = 16;

/// The secret of `[imap] push = true`; every error names the key and the fix.
pub(super) fn resolve_secret(c: &ImapConfig) -> anyhow::Result<Secret> {
    if !c.folder.eq_ignore_ascii_case("INBOX") {
        bail!(
            "imap.push: Dovecot's push events (OX driver) announce INBOX only, and imap.folder is {:?}; \
             watch INBOX or set push = false",
            c.folder
        );
    }
    let secret = match (&c.push_secret, &c.push_secret_file) {
        (Some(s), _) => s.clone(),
        (None, Some(file)) => {
            private_file("imap.push_secret_file", file)?;
            read_secret_file("imap.push_secret_file", file)?
        }
        (None, None) => bail!(
            "imap.push_secret_file: push = true needs the secret Dovecot sends; write one (openssl rand -hex 32) \
             into a file of mode 0600 and name it here, or set env {ENV_PREFIX}IMAP__PUSH_SECRET"
        ),
    };
    let s = secret.expose();
    if s.len() < MIN_SECRET_LEN || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b)) {
        bail!(
            "imap.push_secret_file: the secret must be at least {MIN_SECRET_LEN} characters of A-Z a-z 0-9 - . _ ~ \
             (it goes into Dovecot's push URL as is); make one with openssl rand -hex 32"
        );
    }
    Ok(secret)
}

/// Refuses a secret file others may read.
fn private_file(key: &str, file: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let Ok(meta) = std::fs::metadata(file) else {
        // read_secret_file says why it cannot be read.
        return Ok(());
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!("{key}: {} has mode {mode:o}, readable by others; chmod 600 it", file.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    fn imap(extra: &str) -> ImapConfig {
        use figment::providers::Format as _;
        let text = format!("host = \"h\"\npush = true\n{extra}");
        figment::Figment::new().merge(figment::providers::Toml::string(&text)).extract().expect("parses")
    }

    #[test]
    fn the_secret_comes_from_a_private_file_and_each_error_names_the_key_and_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("push-secret");
        let none = resolve_secret(&imap("")).expect_err("no secret").to_string();
        assert!(none.contains("imap.push_secret_file") && none.contains("0600"), "{none}");
        let folder = resolve_secret(&imap("folder = \"Chats\"")).expect_err("not INBOX").to_string();
        assert!(folder.contains("imap.push") && folder.contains("INBOX"), "{folder}");

        std::fs::write(&file, "0123456789abcdef0123\n").expect("write");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let cfg = imap(&format!("push_secret_file = {:?}", file.display().to_string()));
        let open = resolve_secret(&cfg).expect_err("0644").to_string();
        assert!(open.contains("chmod 600"), "{open}");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert_eq!(resolve_secret(&cfg).expect("0600").expose(), "0123456789abcdef0123");

        std::fs::write(&file, "short\n").expect("write");
        let short = resolve_secret(&cfg).expect_err("short").to_string();
        assert!(short.contains("at least 16") && short.contains("openssl rand"), "{short}");
        std::fs::write(&file, "has:colon@and/slash-0123456789\n").expect("write");
        assert!(resolve_secret(&cfg).is_err(), "characters that break the URL");
    }
}
