"""Malformed and hostile requests through nginx get 4xx (or nginx closes the connection), never a 5xx.

A bounded battery of raw requests, sent on the target to its own nginx over TLS (127.0.0.1:443) by the system
Python, so each byte is what a hostile client would send: broken request lines, smuggling attempts, oversized
parts, odd methods, hostile paths, query strings, headers and bodies. Afterwards the app is still ready and logged
no traceback for any of them.
"""

from __future__ import annotations

import base64
import json
import shlex
import textwrap

from kilnlib import WEB_LOG, app_user, out, sh, wait_http_ok

BATTERY = textwrap.dedent(r"""
    import http.client, json, os, re, socket, ssl, urllib.parse
    H = "Host: localhost\r\n"
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    def https(method, path, headers, body=None):
        c = http.client.HTTPSConnection("127.0.0.1", 443, context=ctx, timeout=90)
        c.request(method, path, body=body, headers={"Host": "localhost", **headers})
        r = c.getresponse()
        page = r.read().decode("utf-8", "replace")
        cookies = dict(v.split(";")[0].split("=", 1) for v in r.headers.get_all("Set-Cookie") or [])
        return r.status, page, cookies
    # A user's session, so that bodies reach the app's parsers instead of stopping at the login: one login through
    # the form (each check of a password is Django's PBKDF2: 15-20 s of emulated CPU under TCG), then the browser's
    # cookies and CSRF header on every "user:" case. One case sends HTTP Basic credentials instead (scripts' way).
    _, page, jar = https("GET", "/accounts/login/", {})
    form = {"csrfmiddlewaretoken": re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1),
            "username": os.environ["KILN_USER"], "password": os.environ["KILN_PASS"]}
    status, _, new = https("POST", "/accounts/login/", {"Content-Type": "application/x-www-form-urlencoded",
                           "Cookie": f"csrftoken={jar['csrftoken']}", "Origin": "https://localhost",
                           "Referer": "https://localhost/accounts/login/"}, urllib.parse.urlencode(form))
    jar.update(new)
    if status != 302 or "sessionid" not in jar:
        raise SystemExit(f"login through /accounts/login/ failed: {status}, cookies {sorted(jar)}")
    A = (H + f"Cookie: sessionid={jar['sessionid']}; csrftoken={jar['csrftoken']}\r\n"
         + f"X-CSRFToken: {jar['csrftoken']}\r\nOrigin: https://localhost\r\n")
    BASIC = H + "Authorization: " + os.environ["KILN_AUTH"] + "\r\n"
    def post_json(path, body, headers=A):
        return (f"POST {path} HTTP/1.1\r\n" + headers + "Content-Type: application/json\r\n"
                + f"Content-Length: {len(body.encode())}\r\n\r\n" + body)
    big = "x" * 70000
    nest = "[" * 100000 + "]" * 100000
    cases = {
        "no Host header": "GET / HTTP/1.1\r\n\r\n",
        "garbage request line": "\x16\x03\x01 nonsense\r\n\r\n",
        "HTTP/0.9": "GET /\r\n",
        "unknown HTTP version": "GET / HTTP/7.3\r\n" + H + "\r\n",
        "lowercase method": "get / HTTP/1.1\r\n" + H + "\r\n",
        "TRACE": "TRACE / HTTP/1.1\r\n" + H + "\r\n",
        "PROPFIND": "PROPFIND /records/ HTTP/1.1\r\n" + H + "\r\n",
        "CONNECT": "CONNECT localhost:22 HTTP/1.1\r\n" + H + "\r\n",
        "DELETE a page": "DELETE /records/ HTTP/1.1\r\n" + H + "\r\n",
        "OPTIONS *": "OPTIONS * HTTP/1.1\r\n" + H + "\r\n",
        "20 kB URI": "GET /records/?q=" + "a" * 20000 + " HTTP/1.1\r\n" + H + "\r\n",
        "70 kB header": "GET / HTTP/1.1\r\n" + H + "X-Big: " + big + "\r\n\r\n",
        "300 headers": "GET / HTTP/1.1\r\n" + H + "".join(f"X-H{i}: v\r\n" for i in range(300)) + "\r\n",
        "NUL in path": "GET /records/\x00/ HTTP/1.1\r\n" + H + "\r\n",
        "NUL in header": "GET / HTTP/1.1\r\n" + H + "X-A: a\x00b\r\n\r\n",
        "bad percent-encoding": "GET /records/%zz/ HTTP/1.1\r\n" + H + "\r\n",
        "invalid UTF-8 path": "GET /records/%ff%fe/ HTTP/1.1\r\n" + H + "\r\n",
        "dot-dot path": "GET /../../../etc/passwd HTTP/1.1\r\n" + H + "\r\n",
        "encoded dot-dot": "GET /static/..%2f..%2f..%2fetc/passwd HTTP/1.1\r\n" + H + "\r\n",
        "huge record id": "GET /records/99999999999999999999999/ HTTP/1.1\r\n" + H + "\r\n",
        "huge API record id": "GET /api/records/99999999999999999999999/ HTTP/1.1\r\n" + H + "\r\n",
        "negative page": "GET /records/?page=-1 HTTP/1.1\r\n" + H + "\r\n",
        "text page": "GET /records/?page=abc HTTP/1.1\r\n" + H + "\r\n",
        "huge page": "GET /records/?page=99999999999999999999 HTTP/1.1\r\n" + H + "\r\n",
        "repeated params": "GET /records/?" + "&".join(["page=1"] * 2000) + " HTTP/1.1\r\n" + H + "\r\n",
        "export status of junk id": "GET /api/exports/%3Cscript%3E/ HTTP/1.1\r\n" + H + "\r\n",
        "hostile Host": "GET /records/ HTTP/1.1\r\nHost: evil.example\r\n\r\n",
        "Host with space": "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
        "two Hosts": "GET / HTTP/1.1\r\n" + H + "Host: other\r\n\r\n",
        "CL and TE (smuggling)": "POST /api/records/ HTTP/1.1\r\n" + H
            + "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/ HTTP/1.1\r\n\r\n",
        "two Content-Lengths": "POST /api/records/ HTTP/1.1\r\n" + H
            + "Content-Length: 2\r\nContent-Length: 40\r\n\r\n{}",
        "bad chunk size": "POST /api/records/ HTTP/1.1\r\n" + H + "Transfer-Encoding: chunked\r\n\r\nzz\r\n",
        "negative Content-Length": "POST /api/records/ HTTP/1.1\r\n" + H + "Content-Length: -5\r\n\r\n",
        "body over the limit": "POST /api/records/ HTTP/1.1\r\n" + H + "Content-Length: 11000000\r\n\r\n{",
        "invalid JSON": "POST /api/records/ HTTP/1.1\r\n" + H
            + "Content-Type: application/json\r\nContent-Length: 5\r\n\r\n{{{{{",
        "deeply nested JSON": "POST /api/records/ HTTP/1.1\r\n" + H
            + f"Content-Type: application/json\r\nContent-Length: {len(nest)}\r\n\r\n{nest}",
        "user: invalid JSON": post_json("/api/records/", "{{{{{"),
        "user (HTTP Basic): invalid JSON": post_json("/api/records/", "{{{{{", BASIC),
        "user: deeply nested JSON": post_json("/api/records/", nest),
        "user: JSON of the wrong types": post_json("/api/records/", '{"title": {"a": [1]}, "body": 7}'),
        "user: JSON null": post_json("/api/records/", "null"),
        "user: 5 MB title": post_json("/api/records/", '{"title": "' + "t" * 5000000 + '"}'),
        "user: NUL and lone surrogate": post_json("/api/records/", '{"title": "a\\u0000b\\ud800"}'),
        "user: export with fields": post_json("/api/exports/", '{"email": "victim@example.com"}'),
        "user: form as JSON type": "POST /api/records/ HTTP/1.1\r\n" + A
            + "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 7\r\n\r\ntitle=%",
        "user: broken multipart": "POST /api/records/ HTTP/1.1\r\n" + A
            + "Content-Type: multipart/form-data; boundary=zz\r\nContent-Length: 12\r\n\r\n--zz\r\nbroken",
        "broken multipart": "POST /records/new/ HTTP/1.1\r\n" + H
            + "Content-Type: multipart/form-data; boundary=\r\nContent-Length: 8\r\n\r\n--\r\n--\r\n",
        "garbage cookies": "GET /records/ HTTP/1.1\r\n" + H
            + "Cookie: sessionid=%%%; csrftoken=\x7f\x7f; " + "a=b; " * 500 + "\r\n\r\n",
        "forged session": "GET /admin/ HTTP/1.1\r\n" + H + "Cookie: sessionid=" + "f" * 32 + "\r\n\r\n",
        "absurd Range": "GET /static/admin/css/base.css HTTP/1.1\r\n" + H + "Range: bytes=999999999-\r\n\r\n",
        "Range list": "GET /static/admin/css/base.css HTTP/1.1\r\n" + H
            + "Range: bytes=" + ",".join(f"{i}-{i}" for i in range(300)) + "\r\n\r\n",
        "Expect 100 huge": "POST /api/records/ HTTP/1.1\r\n" + H
            + "Expect: 100-continue\r\nContent-Length: 99999999999\r\n\r\n",
    }
    seen = {}
    for name, raw in cases.items():
        try:
            # (the HTTP Basic case makes the app check a password: kilnlib.PASSWORD_CHECK_TIMEOUT)
            with socket.create_connection(("127.0.0.1", 443), timeout=90) as raw_sock:
                with ctx.wrap_socket(raw_sock, server_hostname="localhost") as s:
                    s.sendall(raw.encode("latin-1"))
                    data = b""
                    while b"\r\n" not in data and len(data) < 4096:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
        except (ssl.SSLError, ConnectionError, socket.timeout) as exc:
            seen[name] = f"closed ({type(exc).__name__})"
            continue
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        seen[name] = parts[1] if len(parts) > 1 and line.startswith("HTTP/") else f"closed ({line[:40]!r})"
    print(json.dumps(seen))
""")


def test_hostile_requests_get_4xx_never_5xx(host):
    wait_http_ok(host, "/readyz", timeout=60)
    lines_before = int(out(host, f"wc -l <{WEB_LOG}"))
    with app_user(host) as user:
        auth = "Basic " + base64.b64encode(f"{user.username}:{user.password}".encode()).decode()
        creds = f"KILN_AUTH={shlex.quote(auth)} KILN_USER={user.username} KILN_PASS={shlex.quote(user.password)}"
        res = sh(host, f"{creds} python3 - <<'KILN_PY'\n{BATTERY}\nKILN_PY", timeout=600)
    seen = json.loads(res.stdout.strip().splitlines()[-1])
    table = "\n".join(f"  {status:>28}  {name}" for name, status in seen.items())
    print(f"{len(seen)} hostile requests:\n{table}")
    server_errors = {n: s for n, s in seen.items() if s.startswith("5")}
    assert not server_errors, f"5xx answers:\n{table}"
    assert seen.get("huge record id", "").startswith("4"), table
    # the credentials worked: a user's bodies reached the parser (400 naming the problem), not the login (401/403)
    assert seen.get("user: invalid JSON") == "400", table
    assert seen.get("user (HTTP Basic): invalid JSON") == "400", table
    # still serving, and no request made the app log a traceback
    wait_http_ok(host, "/readyz", timeout=30)
    new_log = out(host, f"tail -n +{lines_before + 1} {WEB_LOG}")
    assert "Traceback" not in new_log, f"the app logged a traceback during the battery:\n{new_log[-4000:]}"
