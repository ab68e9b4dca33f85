//! Browser tests in a network namespace of their own, where nftables impairs the path: the
//! test re-runs itself inside the namespace (`in_private_network_set_up`), one at a time, and
//! what it says with [`say`] there is printed by the outer run (the namespace's own output
//! shows only when it fails).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Names the file that the run inside the namespace appends its report to. (Not
/// `CORECAST_...`: the relay refuses environment variables of that prefix that name no key.)
const REPORT_VAR: &str = "TEST_REPORT_OF_CORECAST";

/// One browser test at a time: each Chromium encodes and decodes on the machine's few cores.
static ONE_BROWSER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The `nft` command: found on the PATH, or in /usr/sbin (which a PATH may lack). Fails early,
/// with what to do, when it is missing (the namespace's setup would fail with a less helpful
/// message).
pub fn nft() -> String {
    let on_path = Command::new("sh")
        .args(["-c", "command -v nft"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if on_path {
        return "nft".into();
    }
    assert!(
        Path::new("/usr/sbin/nft").exists(),
        "nft is missing: install Debian's nftables (tests/run does: apt-get install nftables)"
    );
    "/usr/sbin/nft".into()
}

/// Prints one line, and keeps it for the outer run when inside the namespace.
pub fn say(line: impl AsRef<str>) {
    let line = line.as_ref();
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(REPORT_VAR) {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
}

/// Removes the report file however the outer run ends.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Runs `body` in a private network namespace set up by `setup` (shell commands), one test at
/// a time, and prints what it said. With `needs_namespace`, a machine where no namespace can
/// be made (not root) fails the test rather than running it unimpaired.
pub fn in_network(test: &str, setup: &str, needs_namespace: bool, body: impl Future<Output = ()>) {
    let _one = ONE_BROWSER.lock().unwrap_or_else(|p| p.into_inner());
    let report = RemoveOnDrop(
        std::env::temp_dir().join(format!("corecast-report-{}-{test}.txt", std::process::id())),
    );
    let _ = std::fs::remove_file(&report.0);
    let setup = format!("export {REPORT_VAR}='{}' && {setup}", report.0.display());
    if super::in_private_network_set_up(test, &setup) {
        if let Ok(text) = std::fs::read_to_string(&report.0) {
            eprint!("{test}:\n{text}");
        }
        return;
    }
    assert!(
        !needs_namespace || std::env::var_os("IN_TEST_NETNS_OF_CORECAST").is_some(),
        "{test} needs a network namespace of its own for its nftables rules (run it as root)"
    );
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(body);
}
