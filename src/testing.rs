//! Helpers for the library's own unit tests: running one test alone, in a child process of the test binary.

/// Set in the child process to the name of the test it runs.
const CHILD: &str = "COI_BRIDGE_TEST_CHILD";

/// For a test that must be alone in its process (process-wide settings, memory figures
/// other tests would blur). In the test binary's own run it starts a child process of the
/// same binary filtered to `test` (its full name, as `cargo test` prints it), asserts that
/// the child passed and returns `false`: the caller returns. In that child it returns
/// `true`: the caller runs its body.
pub fn alone(test: &str) -> bool {
    if std::env::var(CHILD).is_ok_and(|t| t == test) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args(["--exact", test, "--test-threads", "1", "--nocapture"])
        .env(CHILD, test)
        .output()
        .expect("run the child");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "{test} failed in its own process:\n{text}");
    false
}
