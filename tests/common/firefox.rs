//! A headless Firefox (Debian's `firefox-esr`) driven through WebDriver BiDi, the W3C protocol
//! Firefox serves itself over a WebSocket (`--remote-debugging-port`): no geckodriver, nothing
//! downloaded. The profile fakes the camera and microphone and grants them, and lets WebRTC
//! use loopback candidates. Blocking: each call waits for its answer.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tungstenite::{Message, WebSocket};

use super::free_tcp_port;

/// The profile's preferences: fake media devices granted without asking (Firefox gathers
/// host candidates only once a page may use the camera), loopback and plain host
/// candidates (no mDNS names), autoplay, and nothing that calls home.
const PREFS: &[(&str, &str)] = &[
    ("media.navigator.streams.fake", "true"),
    ("media.navigator.permission.disabled", "true"),
    ("permissions.default.camera", "1"),
    ("permissions.default.microphone", "1"),
    ("media.peerconnection.ice.loopback", "true"),
    ("media.peerconnection.ice.obfuscate_host_addresses", "false"),
    ("media.autoplay.default", "0"),
    ("media.autoplay.blocking_policy", "0"),
    ("browser.shell.checkDefaultBrowser", "false"),
    ("app.update.enabled", "false"),
    ("datareporting.policy.dataSubmissionEnabled", "false"),
    ("toolkit.telemetry.enabled", "false"),
    ("network.captive-portal-service.enabled", "false"),
    ("network.connectivity-service.enabled", "false"),
];

/// Firefox and its BiDi session; the browser (its process group) is ended and the profile
/// removed when this is dropped, so a test that panics leaves no Firefox behind.
pub struct Firefox {
    socket: WebSocket<TcpStream>,
    context: String,
    next_id: u64,
    process: Child,
    profile: PathBuf,
}

impl Firefox {
    pub fn launch() -> Firefox {
        let binary =
            std::env::var("CORECAST_FIREFOX").unwrap_or_else(|_| "/usr/bin/firefox-esr".into());
        assert!(
            Path::new(&binary).exists(),
            "{binary} is missing: install Debian's firefox-esr (the README's test command does)"
        );
        let port = free_tcp_port();
        let profile =
            std::env::temp_dir().join(format!("corecast-firefox-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&profile).expect("creating the Firefox profile");
        let prefs: String = PREFS
            .iter()
            .map(|(name, value)| format!("user_pref(\"{name}\", {value});\n"))
            .collect();
        std::fs::write(profile.join("user.js"), prefs).expect("writing user.js");
        let mut command = Command::new(&binary);
        command
            .args(["--headless", "--no-remote", "--profile"])
            .arg(&profile)
            .arg(format!("--remote-debugging-port={port}"))
            .env("HOME", &profile)
            .env("MOZ_CRASHREPORTER_DISABLE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Its own process group: Drop ends the content processes with it.
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut process = command.spawn().expect("starting firefox-esr");
        let deadline = Instant::now() + Duration::from_secs(60);
        let socket = loop {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", port))
                && let Ok((socket, _)) =
                    tungstenite::client(format!("ws://127.0.0.1:{port}/session"), stream)
            {
                break socket;
            }
            if let Ok(Some(status)) = process.try_wait() {
                panic!("firefox-esr exited: {status}");
            }
            if Instant::now() >= deadline {
                end_group(&mut process);
                panic!("firefox-esr did not open its WebDriver BiDi port");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut firefox = Firefox {
            socket,
            context: String::new(),
            next_id: 1,
            process,
            profile,
        };
        firefox.command("session.new", json!({ "capabilities": {} }));
        let tree = firefox.command("browsingContext.getTree", json!({}));
        firefox.context = tree["contexts"][0]["context"]
            .as_str()
            .expect("a browsing context")
            .to_string();
        firefox
    }

    /// Sends one BiDi command and waits for its result (events that arrive meanwhile are
    /// skipped); panics with the browser's message on an error.
    pub fn command(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({ "id": id, "method": method, "params": params });
        self.socket
            .send(Message::text(request.to_string()))
            .expect("sending a BiDi command");
        loop {
            let message = self.socket.read().expect("reading from BiDi");
            let Message::Text(text) = message else {
                continue;
            };
            let reply: Value = serde_json::from_str(&text).expect("BiDi sends JSON");
            if reply["id"].as_u64() != Some(id) {
                continue;
            }
            if reply["type"] == "error" {
                panic!("{method}: {} {}", reply["error"], reply["message"]);
            }
            return reply["result"].clone();
        }
    }

    pub fn goto(&mut self, url: &str) {
        let context = self.context.clone();
        self.command(
            "browsingContext.navigate",
            json!({ "context": context, "url": url, "wait": "complete" }),
        );
    }

    /// Runs `body` (an async function body that reads `arguments[i]`) in the page and returns
    /// its value as JSON, as WebDriver's execute does for Chromium.
    pub fn call(&mut self, body: &str, args: Vec<Value>) -> Value {
        let function = format!(
            "async function(argsJson) {{ \
               const value = await (async function() {{ {body} }}).apply(null, JSON.parse(argsJson)); \
               return JSON.stringify(value === undefined ? null : value); }}"
        );
        let context = self.context.clone();
        let result = self.command(
            "script.callFunction",
            json!({
                "functionDeclaration": function,
                "arguments": [{ "type": "string", "value": Value::Array(args).to_string() }],
                "target": { "context": context },
                "awaitPromise": true,
            }),
        );
        if result["type"] == "exception" {
            panic!("script in the page threw: {:#}", result["exceptionDetails"]);
        }
        let text = result["result"]["value"]
            .as_str()
            .expect("the script's JSON text");
        serde_json::from_str(text).expect("JSON from the page")
    }
}

fn end_group(process: &mut Child) {
    // The group this test started (negative id: the whole group), by its id.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", process.id())])
        .stderr(Stdio::null())
        .status();
    let _ = process.wait();
}

impl Drop for Firefox {
    fn drop(&mut self) {
        let _ = self.socket.close(None);
        end_group(&mut self.process);
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
