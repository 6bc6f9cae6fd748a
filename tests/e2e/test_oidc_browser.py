"""Browser sign-in, whole: a real headless Chromium (selenium) through real
HAProxy (2.6 and 2.8) and a real agent, against a real OpenID provider (npm
oidc-provider), to the recording demo upstream playing OpenWebUI.

The browser asks for a page on chat.example.com (an auth = "oidc" host
allowed to the ai-users group), lands on the provider's sign-in page, signs
in, and arrives at the page it asked for; the upstream got the identity
headers from the gateway, never the session cookie nor a forged identity.
A revoked session is refused at the next request, logout ends the session
at the gateway and the provider, and a user outside the group gets the
refusal page."""

from __future__ import annotations

import contextlib
import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from spoa_agent.demo.stack import Gateway, free_port
from tests.conftest import EXAMPLE_CONFIG, haproxy_params
from tests.deploy.test_examples import write_self_signed_pem
from tests.oidc import Provider, signing_key

pytestmark = pytest.mark.haproxy
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.webdriver.common.by import By  # noqa: E402  (after the skip above)
from selenium.webdriver.support import expected_conditions  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

HOST = "chat.example.com"  # hosts.map sends it to the OpenWebUI backend
SECRET = "gateway-client-secret-for-tests-only"
USERS = {"alice": {"email": "alice@example.com", "groups": ["ai-users", "staff"]},
         "bob": {"email": "bob@example.com", "groups": ["visitors"]}}


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def fetch(url: str, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    """One request to a URL on HOST (sent to 127.0.0.1), redirects not followed."""
    authority = url.split("/")[2]
    headers = {"Host": authority, **headers}
    url = url.replace(f"//{HOST}:", "//127.0.0.1:", 1)
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(urllib.request.Request(url, headers=headers), timeout=10) as answer:
            return answer.status, {k.lower(): v for k, v in answer.headers.items()}, \
                answer.read()
    except urllib.error.HTTPError as err:
        body = err.read()
        err.close()
        return err.code, {k.lower(): v for k, v in err.headers.items()}, body


@pytest.fixture
def browser() -> Iterator[Any]:
    driver_path = shutil.which("chromedriver")
    chromium = shutil.which("chromium")
    if driver_path is None or chromium is None:
        pytest.fail("chromium and chromium-driver are not installed: run `make deps`")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # The TLS test's certificate is self-signed: that part is not under test.
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--ignore-certificate-errors", f"--host-resolver-rules=MAP {HOST} 127.0.0.1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options,
                              service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()


@contextlib.contextmanager
def running(binary: str, workdir: Path, tls: bool = False) -> Iterator[tuple[Gateway, Provider,
                                                                              str]]:
    """Provider, Redis, upstream, agent and HAProxy; the site's base URL."""
    gw = Gateway(workdir)
    site = f"http://{HOST}:{gw.gateway_port}"
    if tls:
        tls_port = free_port()
        write_self_signed_pem(workdir / "certs")
        gw.haproxy_extra_env.update({"TLS_CERT_DIR": str(workdir / "certs"),
                                     "GATEWAY_TLS_BIND": f"127.0.0.1:{tls_port}"})
        site = f"https://{HOST}:{tls_port}"
    client = {"client_id": "ai-gateway", "client_secret": SECRET,
              "redirect_uris": [f"{site}/.spoa-agent/oidc/callback"],
              "post_logout_redirect_uris": [f"{site}/.spoa-agent/oidc/signed-out"],
              "grant_types": ["authorization_code"], "response_types": ["code"]}
    idp = Provider(keys=[signing_key("k1")], clients=[client], users=USERS)
    secret_file = workdir / "oidc-secret"
    secret_file.write_text(SECRET + "\n")
    config = workdir / "agent.toml"
    config.write_text(EXAMPLE_CONFIG.read_text() + f'''
[oidc]
issuer = "{idp.issuer}"
client_id = "ai-gateway"
client_secret_file = "{secret_file}"
scopes = ["openid", "email", "groups"]
algorithms = ["ES256"]
idle_lifetime = "1h"
absolute_lifetime = "8h"

[[routes]]
name = "openwebui"
host = "{HOST}"
prefix = "/"
methods = ["GET", "HEAD", "POST"]
auth = "oidc"
allow_groups = ["ai-users"]
''')
    try:
        idp.start()
        gw.start_redis()
        gw.start_upstream()
        gw.start_agent(config)
        gw.start_haproxy(binary)
        yield gw, idp, site
    finally:
        gw.stop()
        idp.stop()


@pytest.fixture(params=haproxy_params())
def stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Gateway, Provider]]:
    with running(request.param, tmp_path) as (gw, idp, _):
        yield gw, idp


def sign_in(browser: Any, idp: Provider, login: str) -> None:
    wait = WebDriverWait(browser, 15)
    wait.until(expected_conditions.presence_of_element_located((By.NAME, "login")))
    assert browser.current_url.startswith(idp.issuer)
    browser.find_element(By.NAME, "login").send_keys(login)
    browser.find_element(By.NAME, "password").send_keys("any password")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def sessions(gw: Gateway) -> list[dict[str, Any]]:
    done = gw.spoa_agent("session", "list", "--format", "json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def test_browser_signs_in_reaches_the_page_and_is_ended(
        stack: tuple[Gateway, Provider], browser: Any) -> None:
    gw, idp = stack
    site = f"http://{HOST}:{gw.gateway_port}"
    page = f"{site}/c/chat-42?model=llama3&x=1"
    browser.get(page)
    sign_in(browser, idp, "alice")
    WebDriverWait(browser, 15).until(lambda b: b.current_url == page)

    # What the upstream got: the gateway's identity headers, no session cookie.
    seen = [r for r in gw.upstream_requests() if r["target"] == "/c/chat-42?model=llama3&x=1"]
    assert seen, gw.upstream_requests()
    headers = {name.lower(): value for name, value in seen[-1]["headers"]}
    assert headers["x-spoa-email"] == "alice@example.com"
    assert headers["x-spoa-user"] == "alice@example.com"
    assert headers["x-spoa-groups"] == "ai-users,staff"
    assert "spoa_session" not in headers.get("cookie", "")
    assert "authorization" not in headers

    cookie = browser.get_cookie("spoa_session")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    listed = sessions(gw)
    assert [s["email"] for s in listed] == ["alice@example.com"]
    assert cookie["value"] not in json.dumps(listed)

    # The session from a script, with a forged identity and another cookie:
    # the forgery never reaches the upstream, the other cookie does.
    status, _, _ = fetch(f"{site}/api/forged", {
        "Cookie": f"theme=dark; spoa_session={cookie['value']}; lang=en",
        "X-Spoa-Email": "admin@example.com", "X_Spoa_User": "admin", "Accept": "text/html"})
    assert status == 404  # the demo upstream's answer
    forged = [r for r in gw.upstream_requests() if r["target"] == "/api/forged"][-1]
    got = [(n.lower(), v) for n, v in forged["headers"]]
    assert ("x-spoa-email", "alice@example.com") in got
    assert not any(v in ("admin@example.com", "admin") for _, v in got)
    assert ("cookie", "theme=dark; lang=en") in got

    # An API client on the same host without a key: 401 in its dialect, no redirect.
    status, _, body = fetch(f"{site}/v1/models", {"Accept": "application/json"})
    assert status == 401 and json.loads(body)["error"]["code"] == "missing_api_key"

    # Revoked: refused at the very next request, by a browser or a script.
    done = gw.spoa_agent("session", "revoke", listed[0]["id"])
    assert done.returncode == 0, done.stderr
    status, headers_, _ = fetch(page, {"Cookie": f"spoa_session={cookie['value']}",
                                       "Sec-Fetch-Mode": "navigate"})
    assert status == 302 and headers_["location"].startswith(idp.issuer)
    status, _, _ = fetch(page, {"Cookie": f"spoa_session={cookie['value']}"})
    assert status == 401

    # Signing in again (the provider remembers the browser), then logout:
    # the provider's end-session page, then the gateway's signed-out page.
    browser.get(page)
    WebDriverWait(browser, 15).until(lambda b: b.current_url == page)
    assert len(sessions(gw)) == 1
    browser.get(f"{site}/.spoa-agent/oidc/logout")
    WebDriverWait(browser, 15).until(expected_conditions.presence_of_element_located(
        (By.CSS_SELECTOR, "button[value=yes]"))).click()
    WebDriverWait(browser, 15).until(lambda b: "Signed out" in b.page_source)
    assert browser.current_url == f"{site}/.spoa-agent/oidc/signed-out"
    assert sessions(gw) == []

    # Someone outside ai-users signs in and gets the refusal page.
    browser.get(page)
    sign_in(browser, idp, "bob")
    WebDriverWait(browser, 15).until(lambda b: "Access refused" in b.page_source)
    assert "bob@example.com" in browser.page_source
    assert not [r for r in gw.upstream_requests()
                if dict((n.lower(), v) for n, v in r["headers"]).get("x-spoa-email")
                == "bob@example.com"]
    log = gw.processes["agent"].log()
    assert '"login_succeeded"' in log and SECRET not in log and cookie["value"] not in log


@pytest.mark.parametrize("binary", haproxy_params())
def test_under_tls_the_session_is_a_secure_host_cookie(binary: str, tmp_path: Path,
                                                       browser: Any) -> None:
    with running(binary, tmp_path, tls=True) as (gw, idp, site):
        page = f"{site}/c/secure"
        browser.get(page)
        sign_in(browser, idp, "alice")
        WebDriverWait(browser, 15).until(lambda b: b.current_url == page)
        cookies = {c["name"]: c for c in browser.get_cookies()}
        assert "spoa_session" not in cookies and "__Host-spoa_login" not in cookies
        session = cookies["__Host-spoa_session"]
        assert session["secure"] and session["httpOnly"] and session["path"] == "/"
        assert "domain" not in session or session["domain"] == HOST
        seen = [r for r in gw.upstream_requests() if r["target"] == "/c/secure"][-1]
        headers = {n.lower(): v for n, v in seen["headers"]}
        assert headers["x-spoa-email"] == "alice@example.com"
        assert headers["x-forwarded-proto"] == "https"
        assert "spoa_session" not in headers.get("cookie", "")
