//! The web UI (`/ui/`), in a real browser: Debian's chromium, headless, driven by selenium
//! through `tools/ui_browser.py`, against clusters of real nodes. The browser is a child that
//! takes one JSON command per line; the test keeps the cluster (registers, kills) and asserts.
//!
//! A missing chromium, chromedriver or selenium fails these tests with the reason (`scripts/deps
//! --test` installs them); they never pass without a browser. `CAIRN_UI_SCREENSHOTS=<folder>`
//! keeps the screenshots the tests take (the README's come from `docs/ui`); otherwise they go to
//! the cluster's temporary folder.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::harness::{register_with, Cluster};

/// The browser is CPU-heavy: one at a time, so that a slow machine does not turn the 3 s bound
/// of a health flip into a measure of contention.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The longest one browser command may take (page loads and waits have their own, shorter).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The longest a browser test may take, waits for the browser lock included: a hang fails it.
const TEST_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs a browser test body within [`TEST_TIMEOUT`].
async fn bounded(body: impl std::future::Future<Output = ()>) {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("the browser test finished within its time-out");
}

/// How soon a health flip must show in an open page: from the target's death to the badge.
const FLIP_BOUND_S: f64 = 3.0;

struct Browser {
    child: Child,
    /// Taken on drop: its end tells the driver to close the browser.
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    shots: PathBuf,
}

impl Browser {
    async fn start(shots: PathBuf) -> Browser {
        let python = std::env::var("CAIRN_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/tools/ui_browser.py");
        let mut child = Command::new(&python)
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut b = Browser {
            child,
            stdin: Some(stdin),
            stdout,
            shots,
        };
        let ready = b.read().await;
        assert_eq!(ready["ready"], true, "{ready}");
        b
    }

    /// The next answer; on the driver's exit, its stderr (where it says what is missing).
    async fn read(&mut self) -> Value {
        let line = tokio::time::timeout(COMMAND_TIMEOUT, self.stdout.next_line())
            .await
            .expect("the browser driver answered in time");
        match line {
            Ok(Some(l)) => serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}")),
            _ => {
                // Bounded: a browser process the driver left behind may hold its stderr open.
                let _ = self.child.start_kill();
                let status = tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                    .await
                    .ok()
                    .and_then(Result::ok);
                let mut err = String::new();
                if let Some(mut s) = self.child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ =
                        tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut err))
                            .await;
                }
                panic!(
                    "the browser driver (tests/tools/ui_browser.py) ended with {status:?}; \
                     chromium, chromium-driver and selenium come with `scripts/deps --test`:\n{err}"
                );
            }
        }
    }

    async fn send(&mut self, cmd: Value) -> Value {
        let mut line = cmd.to_string();
        line.push('\n');
        let stdin = self.stdin.as_mut().expect("the browser is open");
        stdin.write_all(line.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
        let answer = self.read().await;
        assert_eq!(answer["ok"], true, "browser: {cmd} -> {answer}");
        answer
    }

    async fn open(&mut self, url: &str) {
        self.send(json!({"op": "open", "url": url})).await;
    }

    /// Waits until an element matching `css` shows `text`: the time it took.
    async fn wait(&mut self, css: &str, text: &str, timeout_s: f64) -> Duration {
        let a = self
            .send(json!({"op": "wait", "css": css, "text": text, "timeout": timeout_s}))
            .await;
        Duration::from_millis(a["elapsed_ms"].as_u64().unwrap())
    }

    async fn gone(&mut self, css: &str, timeout_s: f64) {
        self.send(json!({"op": "gone", "css": css, "timeout": timeout_s}))
            .await;
    }

    async fn count(&mut self, css: &str) -> u64 {
        self.send(json!({"op": "count", "css": css})).await["count"]
            .as_u64()
            .unwrap()
    }

    async fn text(&mut self, css: &str) -> String {
        self.send(json!({"op": "text", "css": css})).await["text"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn click(&mut self, css: &str, confirm: bool) {
        self.send(json!({"op": "click", "css": css, "confirm": confirm}))
            .await;
    }

    async fn type_text(&mut self, css: &str, text: &str) {
        self.send(json!({"op": "type", "css": css, "text": text}))
            .await;
    }

    async fn eval(&mut self, js: &str) -> Value {
        self.send(json!({"op": "eval", "js": js})).await["value"].clone()
    }

    /// Whether the page was loaded again since the last `open`.
    async fn reloaded(&mut self) -> bool {
        self.send(json!({"op": "reloads"})).await["reloaded"] == true
    }

    async fn screenshot(&mut self, name: &str) {
        let path = self.shots.join(name);
        self.send(json!({"op": "screenshot", "path": path.display().to_string()}))
            .await;
    }

    /// The page's console errors: a script the Content-Security-Policy blocked would be one.
    async fn console_errors(&mut self) -> Vec<String> {
        let a = self.send(json!({"op": "console"})).await;
        a["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e.as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn quit(mut self) {
        self.send(json!({"op": "quit"})).await;
        let _ = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await;
    }
}

impl Drop for Browser {
    /// On a failure: end the driver's input, so that it closes chromium (its `finally`), and
    /// give it a moment before the child is killed (`kill_on_drop`).
    fn drop(&mut self) {
        drop(self.stdin.take());
        for _ in 0..50 {
            if self.child.try_wait().is_ok_and(|s| s.is_some()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Where screenshots go: `CAIRN_UI_SCREENSHOTS`, or `dir`.
fn shots_dir(dir: &std::path::Path) -> PathBuf {
    let d = std::env::var_os("CAIRN_UI_SCREENSHOTS").map_or_else(|| dir.to_owned(), PathBuf::from);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn instance(id: &str) -> String {
    format!("[data-instance='{id}']")
}

#[tokio::test]
async fn t10_assets_need_no_token_and_carry_csp_cache_headers_and_etags() {
    let (c, _mgmt) = Cluster::start_acl(1, &[]).await;
    let plain = crate::harness::client();
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = no_redirect.get(c.node(1).url("/")).send().await.unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "/ui/");

    for path in ["/ui/", "/ui/app.js", "/ui/style.css", "/ui/service.js"] {
        let res = plain.get(c.node(1).url(path)).send().await.unwrap();
        assert_eq!(
            res.status(),
            200,
            "{path} without a token on a deny-by-default cluster"
        );
        let h = res.headers().clone();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(h["cache-control"], "no-cache");
        assert_eq!(h["x-content-type-options"], "nosniff");
        let etag = h["etag"].clone();
        let again = plain
            .get(c.node(1).url(path))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304, "{path} revalidated");
    }
    let res = plain.get(c.node(1).url("/ui/app.js")).send().await.unwrap();
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    // Only the embedded files: no path reaches the file system.
    for path in [
        "/ui/nope.js",
        "/ui/..%2fCargo.toml",
        "/ui/%2e%2e/Cargo.toml",
    ] {
        let res = plain.get(c.node(1).url(path)).send().await.unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
    // The data is not open: the API behind the page still wants a token.
    let res = plain
        .get(c.node(1).url("/v1/cluster"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
}

#[tokio::test]
async fn t20_services_page_lists_registrations_and_a_killed_check_target_turns_critical_live() {
    let _busy = crate::harness::busy().await;
    bounded(services_listed_and_a_health_flip_shown_live()).await;
}

async fn services_listed_and_a_health_flip_shown_live() {
    let _one = ONE_BROWSER.lock().await;
    let c = Cluster::start(3, &[]).await;
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap().to_string();
    register_with(
        &c,
        1,
        "web",
        "web-1",
        json!({
            "address": "127.0.0.1", "port": 8080, "tags": ["v2", "blue"], "weight": 5,
            "meta": {"version": "1.4.2", "note": "<img src=x onerror=alert(1)><b>bold</b>"},
            "checks": [{"kind": "tcp", "target": target_addr, "interval": "200ms",
                        "timeout": "200ms", "rise": 1, "fall": 1}]
        }),
    )
    .await;
    register_with(
        &c,
        2,
        "web",
        "web-2",
        json!({"address": "10.0.0.8", "port": 8080, "tags": ["v2"], "meta": {"zone": "b"}}),
    )
    .await;
    register_with(
        &c,
        3,
        "db",
        "db-1",
        json!({"address": "10.0.1.1", "port": 5432, "tags": ["primary"]}),
    )
    .await;
    let shots = shots_dir(c.dir.path());
    let mut b = Browser::start(shots).await;

    // The services page, from a node that did not take every registration.
    b.open(&c.node(2).url("/")).await;
    b.wait("#services tr[data-service='web']", "web", 10.0)
        .await;
    b.wait("#services tr[data-service='db']", "primary", 10.0)
        .await;
    // Sorted by name.
    let first = b.text("#services tbody tr:first-child td").await;
    assert_eq!(first, "db");
    b.wait("#services tr[data-service='web'] .passing-count", "2", 10.0)
        .await;
    b.screenshot("services.png").await;
    // The filter box: by name and by tag.
    b.type_text("#filter", "prim").await;
    assert_eq!(b.count("#services tbody tr").await, 1);
    assert_eq!(b.count("#services tr[data-service='db']").await, 1);
    b.type_text("#filter", "web").await;
    assert_eq!(b.count("#services tbody tr").await, 1);
    b.type_text("#filter", "").await;

    // The service page, following the watch stream.
    b.click("#services tr[data-service='web'] a", false).await;
    b.wait(&format!("{} .health", instance("web-1")), "passing", 10.0)
        .await;
    b.wait(&instance("web-2"), "10.0.0.8:8080", 5.0).await;
    let card = b.text(&instance("web-1")).await;
    for shown in ["127.0.0.1:8080", "weight 5", "blue", "v2", "1.4.2", "tcp"] {
        assert!(card.contains(shown), "{shown:?} in {card}");
    }
    // Meta is shown as the text it is, never as markup.
    assert!(
        card.contains("<img src=x onerror=alert(1)><b>bold</b>"),
        "{card}"
    );
    assert_eq!(b.count("#instances img, #instances b").await, 0);
    b.screenshot("service.png").await;

    // Kill the check's target: the open page turns web-1 critical by itself.
    drop(target);
    let took = b
        .wait(
            &format!("{} .health", instance("web-1")),
            "critical",
            FLIP_BOUND_S,
        )
        .await;
    b.wait(
        &format!("{} .check-status", instance("web-1")),
        "critical",
        1.0,
    )
    .await;
    assert!(!b.reloaded().await, "the page was reloaded");
    eprintln!("health flip shown {took:?} after the target died");
    let output = b.text(&format!("{} .output", instance("web-1"))).await;
    assert!(!output.is_empty(), "the check's output is shown");

    // A phone-width screen in dark mode.
    b.send(json!({"op": "dark", "on": true})).await;
    b.send(json!({"op": "size", "width": 390, "height": 844}))
        .await;
    b.screenshot("service-phone-dark.png").await;
    let bg = b
        .eval("getComputedStyle(document.body).backgroundColor")
        .await;
    assert_eq!(bg, "rgb(15, 18, 22)", "dark background");
    let overflow = b
        .eval("document.documentElement.scrollWidth > window.innerWidth")
        .await;
    assert_eq!(overflow, false, "no sideways scrolling at 390 px");

    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    b.quit().await;
}

#[tokio::test]
async fn t30_writes_from_the_ui_are_what_the_token_allows() {
    let _busy = crate::harness::busy().await;
    bounded(writes_done_as_the_token_allows()).await;
}

async fn writes_done_as_the_token_allows() {
    let _one = ONE_BROWSER.lock().await;
    let (c, _mgmt) = Cluster::start_acl(3, &[]).await;
    for (name, rules) in [
        ("web-read", json!({"service": {"web": "read"}})),
        ("web-write", json!({"service": {"web": "write"}})),
    ] {
        let (status, body) = c
            .put(
                1,
                &format!("/v1/acl/policies/{name}"),
                &json!({"rules": rules}),
            )
            .await;
        assert_eq!(status, 200, "policy {name}: {body}");
    }
    let mut secrets = Vec::new();
    for policy in ["web-read", "web-write"] {
        let res = c
            .http
            .post(c.node(1).url("/v1/acl/tokens"))
            .json(&json!({"policies": [policy], "description": format!("{policy} token")}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201);
        let v: Value = res.json().await.unwrap();
        secrets.push(v["secret"].as_str().unwrap().to_owned());
    }
    let (read_token, write_token) = (secrets[0].clone(), secrets[1].clone());
    for id in ["web-1", "web-2"] {
        register_with(&c, 1, "web", id, json!({"address": "10.0.0.1", "port": 80})).await;
    }
    register_with(
        &c,
        1,
        "db",
        "db-1",
        json!({"address": "10.0.0.9", "port": 5432}),
    )
    .await;

    let shots = shots_dir(c.dir.path());
    let mut b = Browser::start(shots).await;
    let page = c.node(3).url("/ui/");

    // No token: the anonymous token reads nothing, so nothing is listed and nothing can be done.
    b.open(&page).await;
    b.wait("#whoami", "anonymous", 10.0).await;
    b.wait("#filtered", "not shown", 10.0).await;
    assert_eq!(b.count("#services tbody tr").await, 0);
    b.open(&format!("{page}#/services/web")).await;
    b.wait("#banner", "403 permission_denied", 10.0).await;
    assert_eq!(b.count("button[data-action='deregister']").await, 0);

    // A read-only token: the list as the API filters it (web, not db); a deregister is refused.
    b.open(&page).await;
    b.type_text("#token", &read_token).await;
    b.click("#token-use", false).await;
    b.wait("#whoami", "web-read", 10.0).await;
    b.wait("#services tr[data-service='web']", "web", 10.0)
        .await;
    b.wait("#filtered", "not shown", 10.0).await;
    assert_eq!(b.count("#services tr[data-service='db']").await, 0);
    let stored = b.eval("sessionStorage.getItem('cairn.token')").await;
    assert_eq!(
        stored,
        json!(read_token),
        "the token is kept in sessionStorage"
    );
    assert_eq!(b.eval("localStorage.length").await, json!(0));
    b.click("#services tr[data-service='web'] a", false).await;
    b.wait(&instance("web-1"), "web-1", 10.0).await;
    b.click(
        &format!("{} button[data-action='deregister']", instance("web-1")),
        true,
    )
    .await;
    b.wait("#banner", "403 permission_denied", 10.0).await;
    b.click(
        &format!("{} button[data-action='maintenance']", instance("web-2")),
        false,
    )
    .await;
    b.wait("#banner", "403 permission_denied", 10.0).await;
    assert_eq!(
        c.instance_ids(1, "web").await,
        ["web-1", "web-2"],
        "nothing changed"
    );
    assert_eq!(b.count(&instance("web-1")).await, 1);

    // A write token: the deregister goes through, and the open page drops the instance.
    b.type_text("#token", &write_token).await;
    b.click("#token-use", false).await;
    b.wait("#whoami", "web-write", 10.0).await;
    b.wait(&instance("web-1"), "web-1", 10.0).await;
    b.click(
        &format!("{} button[data-action='deregister']", instance("web-1")),
        true,
    )
    .await;
    b.gone(&instance("web-1"), 5.0).await;
    assert_eq!(c.instance_ids(1, "web").await, ["web-2"]);
    // Maintenance on and off, and custom health, with the same token.
    let web2 = instance("web-2");
    b.click(&format!("{web2} button[data-action='maintenance']"), false)
        .await;
    b.wait(&format!("{web2} .health"), "critical", 5.0).await;
    b.wait(&web2, "Maintenance:", 5.0).await;
    b.click(&format!("{web2} button[data-action='maintenance']"), false)
        .await;
    b.wait(&format!("{web2} .health"), "passing", 5.0).await;
    b.send(json!({"op": "eval", "js": format!(
        "(() => {{ const s = document.querySelector(\"{web2} .health-status\"); s.value = 'warning'; return true; }})()"
    )}))
    .await;
    b.type_text(&format!("{web2} .health-output"), "draining")
        .await;
    b.click(&format!("{web2} button[data-action='health']"), false)
        .await;
    b.wait(&format!("{web2} .health"), "warning", 5.0).await;
    b.wait(&web2, "draining", 5.0).await;
    let (_, body) = c.get(1, "/v1/services/web").await;
    assert_eq!(body["instances"][0]["health"], "warning", "{body}");

    // Forget: back to anonymous, and the token is gone from the tab.
    b.click("#token-forget", false).await;
    b.wait("#whoami", "anonymous", 10.0).await;
    assert_eq!(
        b.eval("sessionStorage.getItem('cairn.token')").await,
        Value::Null
    );
    let errors = b.console_errors().await;
    // Refused API calls are logged by the browser as failed loads; nothing else may be.
    let others: Vec<_> = errors
        .iter()
        .filter(|e| !e.contains("the server responded with a status of 403"))
        .collect();
    assert!(others.is_empty(), "console errors: {others:?}");
    b.quit().await;
}

#[tokio::test]
async fn t40_cluster_page_shows_the_new_leader_after_the_leader_is_killed() {
    let _busy = crate::harness::busy().await;
    bounded(new_leader_shown()).await;
}

async fn new_leader_shown() {
    let _one = ONE_BROWSER.lock().await;
    let mut c = Cluster::start(3, &[]).await;
    c.register(1, "web", "web-1").await;
    let leader = c.leader().await;
    let follower = (1..=3).find(|&n| n != leader).unwrap();
    let shots = shots_dir(c.dir.path());
    let mut b = Browser::start(shots).await;

    // On the leader, each member's matched index and lag.
    b.open(&c.node(leader).url("/ui/#/cluster")).await;
    b.wait("#cluster-leader", &format!("node {leader}"), 10.0)
        .await;
    b.wait("#cluster-node", "leader", 5.0).await;
    assert_eq!(b.count("#members tbody tr").await, 3);
    b.wait(&format!("[data-member='{follower}'] .lag"), "0", 5.0)
        .await;
    let matched = b
        .text(&format!("[data-member='{follower}'] .matched"))
        .await;
    assert!(
        matched.parse::<u64>().unwrap() >= 2,
        "matched index {matched}"
    );
    b.screenshot("cluster.png").await;

    // On a follower: the page keeps reading, and shows the new leader once there is one.
    b.open(&c.node(follower).url("/ui/#/cluster")).await;
    b.wait("#cluster-leader", &format!("node {leader}"), 10.0)
        .await;
    b.wait("#cluster-node", "follower", 5.0).await;
    c.node_mut(leader).kill();
    let new = c.leader().await;
    assert_ne!(new, leader);
    let took = b
        .wait("#cluster-leader", &format!("node {new}"), 10.0)
        .await;
    b.wait(&format!("[data-member='{new}'] .role"), "leader", 5.0)
        .await;
    let term = b.text("#cluster-term").await;
    assert!(term.parse::<u64>().unwrap() >= 2, "term {term}");
    assert!(!b.reloaded().await, "the page was reloaded");
    eprintln!("new leader {new} shown {took:?} after the agreed leader was known");
    let errors = b.console_errors().await;
    assert!(errors.is_empty(), "console errors: {errors:?}");
    b.quit().await;
}
