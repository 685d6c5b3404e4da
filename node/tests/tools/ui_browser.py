#!/usr/bin/env python3
"""Drives Debian's headless chromium for node/tests/it/ui.rs, through selenium and chromedriver.

The Rust test holds the cluster (it starts, kills and registers); this program holds the
browser. They speak JSON lines: the test writes one command per line on stdin, this program
answers one line on stdout, `{"ok": true, ...}` or `{"ok": false, "error": "..."}`. Commands:

  {"op": "open", "url": U}                       load U (a fresh page)
  {"op": "size", "width": W, "height": H}        resize the window
  {"op": "dark", "on": true|false}               emulate prefers-color-scheme
  {"op": "type", "css": C, "text": T}            type T into the element C (clears it first)
  {"op": "click", "css": C, "confirm": bool}     click C; accept the confirm() it opens
  {"op": "wait", "css": C, "text": T, "timeout": S}
                                                 wait until an element C shows T in its text
                                                 (T empty: until C exists); answers elapsed_ms
  {"op": "gone", "css": C, "timeout": S}         wait until no element matches C
  {"op": "text", "css": C}                       the text of C
  {"op": "count", "css": C}                      how many elements match C
  {"op": "eval", "js": J}                        the value of `return J` (for storage checks)
  {"op": "screenshot", "path": P}                a PNG of the window
  {"op": "console"}                              the page's console errors so far (CSP etc.)
  {"op": "reloads"}                              how many times a page was loaded since "open"
  {"op": "quit"}

It exits 2 with a message on stderr when chromium or chromedriver is missing, so the test
fails with the reason rather than passing without a browser.
"""

import json
import os
import shutil
import sys
import time

CHROMIUM = os.environ.get("CAIRN_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CAIRN_CHROMEDRIVER", "/usr/bin/chromedriver")


def fail_setup(msg):
    print(f"ui_browser: {msg}; install them with scripts/deps --test", file=sys.stderr)
    sys.exit(2)


try:
    from selenium import webdriver
    from selenium.common.exceptions import NoAlertPresentException, WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
except ImportError:
    fail_setup("the Python package selenium is missing")

for path in (CHROMIUM, CHROMEDRIVER):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)) and not shutil.which(path):
        fail_setup(f"{path} is missing (Debian packages chromium and chromium-driver)")


def start():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--window-size=1280,900",
                "--hide-scrollbars"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The system driver: selenium must not try to download one (nothing can be fetched here).
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)


def find_text(driver, css, text):
    for el in driver.find_elements(By.CSS_SELECTOR, css):
        try:
            if text in el.text:
                return True
        except WebDriverException:
            pass
    return False


def handle(driver, cmd, console):
    op = cmd.get("op")
    if op == "open":
        driver.get(cmd["url"])
        # A marker that a reload would erase: "without a reload" is checked with it.
        driver.execute_script("window.__cairnTestMarker = 1;")
        return {}
    if op == "reloads":
        return {"reloaded": driver.execute_script("return window.__cairnTestMarker !== 1;")}
    if op == "size":
        driver.set_window_size(cmd["width"], cmd["height"])
        return {}
    if op == "dark":
        scheme = "dark" if cmd.get("on") else "light"
        driver.execute_cdp_cmd("Emulation.setEmulatedMedia",
                               {"features": [{"name": "prefers-color-scheme", "value": scheme}]})
        return {}
    if op == "type":
        el = driver.find_element(By.CSS_SELECTOR, cmd["css"])
        el.clear()
        el.send_keys(cmd["text"])
        return {}
    if op == "click":
        driver.find_element(By.CSS_SELECTOR, cmd["css"]).click()
        if cmd.get("confirm"):
            deadline = time.monotonic() + 5
            while True:
                try:
                    driver.switch_to.alert.accept()
                    break
                except NoAlertPresentException:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        return {}
    if op == "wait":
        start_t = time.monotonic()
        deadline = start_t + float(cmd.get("timeout", 10))
        text = cmd.get("text", "")
        while not find_text(driver, cmd["css"], text):
            if time.monotonic() > deadline:
                seen = [e.text for e in driver.find_elements(By.CSS_SELECTOR, cmd["css"])][:5]
                raise TimeoutError(f"no {cmd['css']!r} showing {text!r} within "
                                   f"{cmd.get('timeout', 10)} s; seen: {seen}")
            time.sleep(0.05)
        return {"elapsed_ms": int((time.monotonic() - start_t) * 1000)}
    if op == "gone":
        start_t = time.monotonic()
        deadline = start_t + float(cmd.get("timeout", 10))
        while driver.find_elements(By.CSS_SELECTOR, cmd["css"]):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{cmd['css']!r} still present after {cmd.get('timeout', 10)} s")
            time.sleep(0.05)
        return {"elapsed_ms": int((time.monotonic() - start_t) * 1000)}
    if op == "text":
        return {"text": driver.find_element(By.CSS_SELECTOR, cmd["css"]).text}
    if op == "count":
        return {"count": len(driver.find_elements(By.CSS_SELECTOR, cmd["css"]))}
    if op == "eval":
        return {"value": driver.execute_script("return " + cmd["js"])}
    if op == "screenshot":
        driver.save_screenshot(cmd["path"])
        return {}
    if op == "console":
        console.extend(e.get("message", "") for e in driver.get_log("browser")
                       if e.get("level") == "SEVERE")
        return {"errors": list(console)}
    raise ValueError(f"unknown op {op!r}")


def main():
    try:
        driver = start()
    except WebDriverException as e:
        fail_setup(f"chromium did not start: {e.msg}")
    console = []
    print(json.dumps({"ok": True, "ready": True}), flush=True)
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            cmd = json.loads(line)
            if cmd.get("op") == "quit":
                print(json.dumps({"ok": True}), flush=True)
                break
            try:
                answer = handle(driver, cmd, console)
                answer["ok"] = True
            except Exception as e:  # every failure goes back to the test, which reports it
                answer = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            print(json.dumps(answer), flush=True)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
