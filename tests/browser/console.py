#!/usr/bin/env python3
"""Drives the gatehouse web console in headless Chromium (Selenium and the
distribution's chromedriver), against a gateway the Rust test started.

It signs in with an admin key, opens a session over gRPC (with the
gatehouse CLI) and waits for it to appear in the sessions table without a
reload, closes it from the page, creates a key and revokes it, and checks
that a request without the cookie, a form without its CSRF token or with a
forged one are refused (as console pages, with the console's headers). On success it prints one JSON line for the Rust test to check
against the gRPC API: the session it closed and the key it revoked.

Usage: console.py --console URL --grpc URL --key ADMIN_KEY --bin GATEHOUSE
       [--screenshots DIR]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

PATIENCE = 30


def browser(profile):
    options = Options()
    # The network is closed: without these Chromium waits on connections
    # to its own services.
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1360,900",
        f"--user-data-dir={profile}",
    ]:
        options.add_argument(flag)
    for candidate in ["/usr/bin/chromium", "/usr/bin/chromium-browser"]:
        if os.path.exists(candidate):
            options.binary_location = candidate
            break
    driver_path = next(
        (p for p in ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"] if os.path.exists(p)),
        None,
    )
    service = Service(executable_path=driver_path) if driver_path else Service()
    return webdriver.Chrome(service=service, options=options)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--console", required=True)
    ap.add_argument("--grpc", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--screenshots")
    args = ap.parse_args()
    base = args.console.rstrip("/")

    def shot(name):
        if args.screenshots:
            os.makedirs(args.screenshots, exist_ok=True)
            driver.save_screenshot(os.path.join(args.screenshots, f"{name}.png"))

    def cli(*argv):
        out = subprocess.run(
            [args.bin, *argv, "--addr", args.grpc, "--key", args.key],
            check=True, capture_output=True, text=True,
        )
        return out.stdout.strip()

    def wait(cond, what):
        try:
            # A form post replaces the page under an element being read.
            ignored = [NoSuchElementException, StaleElementReferenceException]
            return WebDriverWait(
                driver, PATIENCE, poll_frequency=0.2, ignored_exceptions=ignored
            ).until(cond)
        except Exception as e:
            raise AssertionError(
                f"timed out waiting for {what} ({e!r}); page:\n{driver.page_source[-4000:]}"
            )

    profile = tempfile.mkdtemp(prefix="gatehouse-chromium-")
    driver = browser(profile)
    try:
        # Not signed in: every page leads to the sign-in form.
        driver.get(base + "/console/sessions")
        wait(EC.presence_of_element_located((By.ID, "login")), "the sign-in form")
        assert "/console/login" in driver.current_url, driver.current_url
        driver.find_element(By.ID, "key").send_keys("ghk_" + "0" * 64)
        driver.find_element(By.ID, "sign-in").click()
        wait(EC.presence_of_element_located((By.CSS_SELECTOR, ".error")), "a refused sign-in")
        shot("login")

        driver.find_element(By.ID, "key").send_keys(args.key)
        driver.find_element(By.ID, "sign-in").click()
        wait(EC.presence_of_element_located((By.ID, "sessions")), "the sessions page")
        cookie = driver.get_cookie("gatehouse_console")
        assert cookie and cookie["httpOnly"] and cookie.get("sameSite") == "Strict", cookie

        # Refusals are console pages with the console's headers, whatever
        # the form: without its token 403, without the sign-in 401.
        for body, credentials, status in [
            ("tenant=acme&name=no-token", "same-origin", 403),
            ("", "same-origin", 403),
            ("csrf=x", "omit", 401),
            ("", "omit", 401),
        ]:
            got = driver.execute_async_script(
                """
                const [body, credentials, done] = arguments;
                fetch("/console/keys", {
                    method: "POST", body, credentials, redirect: "manual",
                    headers: {"Content-Type": "application/x-www-form-urlencoded"},
                }).then(async (r) => done({
                    status: r.status,
                    csp: r.headers.get("content-security-policy") || "",
                    frame: r.headers.get("x-frame-options") || "",
                    cache: r.headers.get("cache-control") || "",
                    text: await r.text(),
                })).catch((e) => done({error: String(e)}));
                """,
                body, credentials,
            )
            what = f"POST /console/keys {body!r} ({credentials})"
            assert got.get("status") == status, f"{what}: {got}"
            assert got["csp"].startswith("default-src 'none'"), f"{what}: {got}"
            assert (got["frame"], got["cache"]) == ("DENY", "no-store"), f"{what}: {got}"
            assert "<html" in got["text"], f"{what}: not a console page: {got}"

        # A session opened over gRPC appears without a reload.
        marker = driver.find_element(By.TAG_NAME, "h1")
        session = cli("open", "echo", "--name", "browser-test")
        cli("invoke", session, "emit", "3")
        row = (By.CSS_SELECTOR, f'tr[data-session="{session}"]')
        wait(EC.presence_of_element_located(row), "the new session's row")
        assert marker.is_displayed(), "the page was reloaded"
        assert driver.find_element(*row).get_attribute("data-state") == "ready"
        shot("sessions")

        # Its detail page.
        driver.find_element(By.CSS_SELECTOR, f'a[href="/console/sessions/{session}"]').click()
        wait(EC.presence_of_element_located((By.ID, "close-session")), "the session's page")
        shot("session")

        # A forged CSRF token is refused and changes nothing.
        driver.execute_script(
            "document.querySelector('#close-session').form.querySelector('input[name=csrf]').value = 'forged';"
        )
        driver.find_element(By.ID, "close-session").click()
        wait(EC.text_to_be_present_in_element((By.ID, "message"), "CSRF"), "the CSRF refusal")
        state = json.loads(cli("session", session, "--json"))["state"]
        assert state.lower() == "ready", f"a forged form closed the session: {state}"

        # Closed from the sessions page.
        driver.get(base + "/console/sessions")
        wait(EC.presence_of_element_located((By.CSS_SELECTOR, f'button[data-close="{session}"]')), "the close button")
        driver.find_element(By.CSS_SELECTOR, f'button[data-close="{session}"]').click()
        wait(
            lambda d: d.find_element(*row).get_attribute("data-state") in ("closed", "closing"),
            "the session to show as closed",
        )

        driver.get(base + "/console/backends")
        wait(EC.presence_of_element_located((By.ID, "backends")), "the backends page")
        shot("backends")
        driver.get(base + "/console/tenants")
        wait(EC.presence_of_element_located((By.ID, "tenants")), "the tenants page")
        shot("tenants")

        # A key created on the page, shown once, then revoked.
        driver.get(base + "/console/keys")
        wait(EC.presence_of_element_located((By.ID, "create-key")), "the keys page")
        for option in driver.find_elements(By.CSS_SELECTOR, "#tenant option"):
            if option.text == "acme":
                option.click()
        driver.find_element(By.ID, "name").send_keys("from-browser")
        driver.find_element(By.ID, "expires").send_keys("30d")
        driver.find_element(By.ID, "create").click()
        wait(EC.presence_of_element_located((By.ID, "new-key")), "the new key")
        new_key = driver.find_element(By.ID, "new-key").text.strip()
        assert new_key.startswith("ghk_"), new_key
        shot("keys")
        key_id = driver.find_element(By.CSS_SELECTOR, "#created-key h2").text.split()[1]
        driver.get(base + "/console/keys")
        assert new_key not in driver.page_source, "the key is shown again"
        driver.find_element(By.CSS_SELECTOR, f'button[data-revoke="{key_id}"]').click()
        wait(
            lambda d: "revoked" in d.find_element(By.CSS_SELECTOR, f'tr[data-key="{key_id}"]').text,
            "the key to show as revoked",
        )

        driver.get(base + "/console/audit")
        wait(EC.presence_of_element_located((By.ID, "audit")), "the audit page")
        text = driver.find_element(By.ID, "audit").text
        for action in ["console.sign_in", "session.close", "key.create", "key.revoke"]:
            assert action in text, f"{action} missing from the audit page:\n{text}"
        shot("audit")

        # The charts: one more session, invokes and a fault (chaos traps),
        # then every chart must draw something: a line, or the dot of its
        # latest point (a rate has one a second after the last sample).
        busy = cli("open", "echo")
        for _ in range(5):
            cli("invoke", busy, "count")
        doomed = cli("open", "chaos")
        trapped = subprocess.run(
            [args.bin, "invoke", doomed, "trap", "--addr", args.grpc, "--key", args.key],
            capture_output=True, text=True,
        )
        assert trapped.returncode != 0, f"the trap did not fault: {trapped.stdout}"
        charts = ["chart-sessions", "chart-opens", "chart-invokes", "chart-p99",
                  "chart-faults", "chart-memory", "chart-cpu"]

        def drawn(d):
            d.get(base + "/console/charts")
            widths = d.execute_script(
                """
                return arguments[0].map((id) => {
                    const marks = [...document.querySelectorAll('#' + id + ' polyline, #' + id + ' circle')];
                    return Math.max(0, ...marks.map((m) => m.getBBox().width));
                });
                """,
                charts,
            )
            return all(w > 0 for w in widths)

        WebDriverWait(driver, PATIENCE, poll_frequency=1).until(drawn)
        for chart in charts:
            element = driver.find_element(By.ID, chart)
            png = element.screenshot_as_png
            # A drawn line adds its colour to the chart's picture.
            assert len(png) > 2000, f"{chart}: a {len(png)}-byte screenshot"
            if args.screenshots:
                os.makedirs(args.screenshots, exist_ok=True)
                with open(os.path.join(args.screenshots, f"{chart}.png"), "wb") as f:
                    f.write(png)
        shot("charts")

        # Signed out: the cookie no longer works.
        driver.find_element(By.ID, "sign-out").click()
        wait(EC.presence_of_element_located((By.ID, "login")), "the sign-in page after signing out")
        driver.get(base + "/console/keys")
        wait(EC.presence_of_element_located((By.ID, "login")), "a signed-out request to be refused")

        print(json.dumps({"session": session, "key": new_key, "key_id": key_id}))
    finally:
        driver.quit()


if __name__ == "__main__":
    try:
        main()
    except AssertionError as e:
        print(f"console test failed: {e}", file=sys.stderr)
        sys.exit(1)
