//! A headless Chromium driven through chromedriver (WebDriver), for the tests that need a real
//! browser: the fake camera and microphone, loopback candidates allowed, nothing fetched from
//! the network. Each test file adds its own page helpers (`impl Chromium { … }`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use serde_json::{Value, json};

use super::free_tcp_port;

/// Chromium and its chromedriver; the browser and the driver are ended and the profile
/// removed when this is dropped, so a test that panics leaves no browser behind (a browser
/// whose driver is killed keeps running, its camera and encoders with it).
pub struct Chromium {
    pub client: Client,
    driver: Child,
    profile: PathBuf,
}

impl Chromium {
    /// Starts chromedriver and a Chromium session with the flags every test needs, and
    /// `extra_args` (a window size, a fake camera's frame rate, trusting a test certificate).
    /// `--use-fake-device-for-media-stream` in `extra_args` replaces the default one.
    pub async fn launch(extra_args: &[&str]) -> Chromium {
        let chromium =
            std::env::var("CORECAST_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        let chromedriver = std::env::var("CORECAST_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        for binary in [&chromium, &chromedriver] {
            assert!(
                Path::new(binary).exists(),
                "{binary} is missing: install Debian's chromium and chromium-driver \
                 (the README's test command does)"
            );
        }
        let port = free_tcp_port();
        let mut driver = Command::new(&chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = driver.try_wait() {
                panic!("chromedriver exited: {status}");
            }
            if Instant::now() >= deadline {
                let _ = driver.kill();
                panic!("chromedriver did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile =
            std::env::temp_dir().join(format!("corecast-chromium-{}-{port}", std::process::id()));
        let fake_device = extra_args
            .iter()
            .find(|a| a.starts_with("--use-fake-device-for-media-stream"))
            .copied()
            .unwrap_or("--use-fake-device-for-media-stream");
        let mut args: Vec<String> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            fake_device,
            "--use-fake-ui-for-media-stream",
            "--autoplay-policy=no-user-gesture-required",
            // The relay listens on loopback; let WebRTC use loopback candidates.
            "--allow-loopback-in-peer-connection",
            // This machine reaches no network: no background fetches.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ]
        .into_iter()
        .map(str::to_string)
        .collect();
        args.extend(
            extra_args
                .iter()
                .filter(|a| !a.starts_with("--use-fake-device-for-media-stream"))
                .map(|a| a.to_string()),
        );
        args.push(format!("--user-data-dir={}", profile.display()));
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({ "binary": chromium, "args": args }),
        );
        // chromedriver speaks plain HTTP on loopback: no TLS connector needed.
        let connected =
            ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(caps)
                .connect(&format!("http://127.0.0.1:{port}"))
                .await;
        let client = match connected {
            Ok(client) => client,
            Err(e) => {
                let _ = driver.kill();
                panic!("connecting to chromedriver: {e}");
            }
        };
        Chromium {
            client,
            driver,
            profile,
        }
    }

    /// Ends the browser session; the driver goes when this is dropped.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        // The browser is the driver's child: found before the driver goes, ended by its PID
        // (it ends its own zygotes and renderers).
        let browsers = children_of(self.driver.id());
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        for pid in browsers {
            let _ = Command::new("kill")
                .arg(pid.to_string())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// The processes whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid …`; comm may hold spaces, so read after its last ')'.
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

/// The page script every media test builds on: `window.cc`, WebRTC sessions against the
/// relay's WHIP and WHEP from its own page (`page_sessions.js`).
pub const PAGE_SESSIONS: &str = include_str!("page_sessions.js");

impl Chromium {
    /// Chromium with a 30 fps fake camera on the relay's page (`page_url`: same origin as its
    /// WHIP and WHEP), its timers never throttled (the media tests sample getStats every
    /// second), with `window.cc` and then the test's own page script `harness` installed.
    pub async fn on_relay_page(page_url: &str, harness: &str) -> Chromium {
        let browser = Chromium::launch(&[
            // Chromium's default of 20 would leave no headroom for a 20 fps floor.
            "--use-fake-device-for-media-stream=fps=30",
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
        ])
        .await;
        browser
            .client
            .goto(page_url)
            .await
            .expect("loading the relay's page");
        browser.call(PAGE_SESSIONS, vec![]).await;
        browser.call(harness, vec![]).await;
        browser
    }

    /// Runs `script` in the page (a function body: `arguments`, `return`) and returns its value.
    pub async fn call(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .expect("script in the page")
    }
}
