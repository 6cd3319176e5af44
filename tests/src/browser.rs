//! Headless Chromium driven over the DevTools protocol (CDP), for the dashboard's browser test.
//!
//! Why not `chromium --screenshot --window-size=390,844`: headless Chromium will not make a window
//! narrower than 500 px, so a phone-width check run that way is really a 500 px check. Over CDP
//! `Emulation.setDeviceMetricsOverride` sets the CSS viewport itself (390 px, mobile, as a phone
//! would), `Page.captureScreenshot` takes the picture at that size and `Runtime.evaluate` reads
//! what the page found checking itself, without parsing a dumped DOM.
//!
//! The protocol is small enough to speak by hand: Chromium starts with `--remote-debugging-port=0`
//! and says on stderr where it listens; `PUT /json/new` opens a page (this Chromium refuses GET);
//! each command is a JSON message with an id over that page's websocket, and its answer carries
//! the same id (events in between are skipped).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The Chromium on PATH (`chromium`, `chromium-browser` or `google-chrome`).
pub fn chromium() -> std::path::PathBuf {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(name))
                    .find(|p| p.exists())
            })
        })
        .unwrap_or_else(|| {
            panic!("no chromium on PATH: ./scripts/test installs Debian's `chromium`")
        })
}

/// A headless Chromium with its DevTools endpoint; killed (and its profile removed) on drop.
pub struct Browser {
    child: Child,
    /// `127.0.0.1:PORT` of the DevTools HTTP and websocket endpoint.
    host: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromium` headless on a free DevTools port (read back from its stderr).
    pub fn launch(chromium: &Path) -> Result<Browser> {
        let profile = tempfile::tempdir().context("chromium profile")?;
        let mut child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--remote-debugging-port=0",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", chromium.display()))?;
        // Read stderr on a thread until the line, then keep draining it so Chromium never blocks
        // on a full pipe; what it said before is kept for the error if the line never comes.
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut said = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                match line.split_once("DevTools listening on ws://") {
                    Some((_, rest)) => {
                        let _ = tx.send(Ok(rest.split('/').next().unwrap_or("").to_string()));
                    }
                    None if said.len() < 64 << 10 => said += &format!("{line}\n"),
                    None => {}
                }
            }
            let _ = tx.send(Err(said)); // it exited (unheard once the endpoint was sent)
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(host)) => Ok(Browser {
                child,
                host,
                _profile: profile,
            }),
            other => {
                let _ = child.kill();
                bail!("chromium gave no DevTools endpoint in 30 s: {other:?}")
            }
        }
    }

    /// Opens a new blank page (`PUT /json/new`) and connects to it.
    pub async fn new_page(&self) -> Result<Page> {
        let url = format!("http://{}/json/new?about:blank", self.host);
        let target: Value = reqwest::Client::builder()
            .no_proxy()
            .build()?
            .put(&url)
            .send()
            .await
            .with_context(|| url.clone())?
            .error_for_status()?
            .json()
            .await
            .with_context(|| format!("{url}: not a target"))?;
        let ws_url = target["webSocketDebuggerUrl"]
            .as_str()
            .ok_or_else(|| anyhow!("{url}: no webSocketDebuggerUrl in {target}"))?;
        let (ws, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .with_context(|| format!("connecting to {ws_url}"))?;
        Ok(Page { ws, next_id: 0 })
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One page target, spoken to over its websocket.
pub struct Page {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

impl Page {
    /// Sends one CDP command and waits for its answer (the `result`, or the protocol's error).
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws.send(Message::text(msg)).await?;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(60), self.ws.next())
                .await
                .map_err(|_| anyhow!("{method}: no answer in 60 s"))?
                .ok_or_else(|| anyhow!("{method}: the page closed its websocket"))??;
            let Message::Text(text) = frame else { continue };
            let reply: Value = serde_json::from_str(text.as_str())?;
            if reply["id"].as_u64() != Some(id) {
                continue; // an event, not our answer
            }
            if let Some(err) = reply.get("error") {
                bail!("{method}: {err}");
            }
            return Ok(reply["result"].clone());
        }
    }

    /// A `width`×`height` CSS viewport at scale 1, as a phone when `mobile`: set before
    /// navigating, so the page lays itself out at that size from the start.
    pub async fn set_viewport(&mut self, width: u32, height: u32, mobile: bool) -> Result<()> {
        let metrics =
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile});
        self.call("Emulation.setDeviceMetricsOverride", metrics)
            .await?;
        Ok(())
    }

    /// Goes to `url` (wait for what the test needs with [`Page::wait_for`]).
    pub async fn navigate(&mut self, url: &str) -> Result<()> {
        let result = self.call("Page.navigate", json!({"url": url})).await?;
        anyhow::ensure!(result.get("errorText").is_none(), "{url}: {result}");
        Ok(())
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> Result<Value> {
        let params = json!({"expression": expression, "returnByValue": true, "awaitPromise": true});
        let result = self.call("Runtime.evaluate", params).await?;
        if let Some(e) = result.get("exceptionDetails") {
            bail!("{expression}: {e}");
        }
        Ok(result["result"]["value"].clone())
    }

    /// Evaluates `expression` every 200 ms until it is neither null, false nor "", for `within`.
    pub async fn wait_for(&mut self, expression: &str, within: Duration) -> Result<Value> {
        let deadline = Instant::now() + within;
        loop {
            let v = self.eval(expression).await?;
            if !(v.is_null() || v == json!(false) || v == json!("")) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("{expression}: still {v} after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A PNG of the viewport, written to `path`.
    pub async fn screenshot(&mut self, path: &Path) -> Result<()> {
        let shot = self.call("Page.captureScreenshot", json!({})).await?; // PNG by default
        let data = shot["data"].as_str().ok_or_else(|| anyhow!("no data"))?;
        let png = base64::engine::general_purpose::STANDARD.decode(data)?;
        std::fs::write(path, png).with_context(|| path.display().to_string())
    }
}
