"""The shell of a domain's certificates, without Docker: deploy/scripts/acme.sh (the acme
service's loop around lego) with a stand-in `lego` on PATH, nginx's entrypoint.d/40-acme.sh
name checks, and deploy/nginx/acme-certificate.sh (which certificate nginx loads, and the
reload when it changes) with a stand-in `nginx`."""

from __future__ import annotations

import os
import stat
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ACME = ROOT / "deploy" / "scripts" / "acme.sh"
CERTIFICATE = ROOT / "deploy" / "nginx" / "acme-certificate.sh"
ENTRYPOINT = ROOT / "deploy" / "nginx" / "entrypoint.d" / "40-acme.sh"
DOMAIN = "example.org,www.example.org"

# A stand-in for lego: records its arguments; `run` and `renew` write a new pair unless
# LEGO_STUB says "fail" (exit 1) or "not-due" (renew changes nothing); `list` prints lego's format.
LEGO = r"""#!/bin/sh
echo "$*" >>"$LEGO_CALLS"
path=""; first=""; cmd=""
while [ $# -gt 0 ]; do
    case $1 in
        --path) path=$2; shift ;;
        -d) [ -n "$first" ] || first=$2; shift ;;
        --server|--email|--key-type|--http.webroot|--days) shift ;;
        run|renew|list) cmd=$1 ;;
    esac
    shift
done
case $cmd in
    list)
        for crt in "$path"/certificates/*.crt; do
            [ -f "$crt" ] || continue
            printf 'Found the following certs:\n  Certificate Name: \n    Domains: x\n'
            printf '    Expiry Date: 2031-12-07 14:01:43 +0000 UTC\n'
            printf '    Certificate Path: %s\n' "$crt"
        done
        ;;
    *)
        if [ "${LEGO_STUB:-}" = fail ]; then
            echo "lego: acme: error: 400 connection refused" >&2
            exit 1
        fi
        [ "$cmd" = renew ] && [ "${LEGO_STUB:-}" = not-due ] && exit 0
        mkdir -p "$path/certificates"
        n=$(date +%s%N)
        echo "key $n" >"$path/certificates/$first.key"
        echo "crt $n" >"$path/certificates/$first.crt"
        ;;
esac
"""

# A stand-in for nginx: `-t` passes unless NGINX_STUB_FAIL_TEST exists; every call is recorded.
NGINX = r"""#!/bin/sh
echo "$*" >>"$NGINX_CALLS"
if [ "$1" = -t ] && [ -e "$NGINX_STUB_FAIL_TEST" ]; then echo "key values mismatch" >&2; exit 1; fi
exit 0
"""


def executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def acme_env(tmp_path) -> dict[str, str]:
    """acme.sh's volumes in tmp_path and lego stood in for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "lego", LEGO)
    for name in ("state", "certs", "webroot", "tmp"):
        (tmp_path / name).mkdir()
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DOMAIN": DOMAIN,
        "ACME_EMAIL": "ops@example.org",
        "ACME_STATE_DIR": str(tmp_path / "state"),
        "ACME_CERTS_DIR": str(tmp_path / "certs"),
        "ACME_WEBROOT": str(tmp_path / "webroot"),
        "ACME_CERT_GID": str(os.getgid()),
        "TMPDIR": str(tmp_path / "tmp"),
        "LEGO_CALLS": str(tmp_path / "lego.calls"),
    }


def acme_once(env: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(ACME), "once"], env={**env, **extra},
                          capture_output=True, text=True, timeout=30, check=False)  # fmt: skip


def lego_calls(env: dict[str, str]) -> list[str]:
    """lego's run and renew calls (not the `list` that reads the expiry date)."""
    lines = Path(env["LEGO_CALLS"]).read_text().splitlines()
    return [line for line in lines if not line.endswith(" list")]


def installed(env: dict[str, str]) -> tuple[str, str]:
    certs = Path(env["ACME_CERTS_DIR"])
    return (certs / "server.crt").read_text(), (certs / "server.key").read_text()


def test_the_first_run_obtains_for_every_name_and_installs_the_pair(acme_env):
    result = acme_once(acme_env)
    assert result.returncode == 0, result.stderr
    (call,) = lego_calls(acme_env)
    assert call.endswith(" -d example.org -d www.example.org run")
    assert "--server https://acme-v02.api.letsencrypt.org/directory" in call
    assert f"--http --http.webroot {acme_env['ACME_WEBROOT']}" in call
    assert (Path(acme_env["ACME_WEBROOT"]) / ".well-known" / "acme-challenge").is_dir()
    crt, key = installed(acme_env)
    lego_dir = Path(acme_env["ACME_STATE_DIR"]) / "certificates"
    assert (crt, key) == ((lego_dir / "example.org.crt").read_text(),
                          (lego_dir / "example.org.key").read_text())  # fmt: skip
    assert stat.S_IMODE((Path(acme_env["ACME_CERTS_DIR"]) / "server.key").stat().st_mode) == 0o640
    assert "installed a new certificate for example.org www.example.org, expires 2031-12-07" in (
        result.stderr
    )


def test_later_runs_renew_now_within_the_renewal_window(acme_env):
    acme_once(acme_env)
    before = installed(acme_env)
    result = acme_once(acme_env, LEGO_STUB="not-due")
    assert result.returncode == 0, result.stderr
    assert lego_calls(acme_env)[-1].endswith("renew --days 30 --no-random-sleep")
    assert "is current" in result.stderr
    assert installed(acme_env) == before
    result = acme_once(acme_env, ACME_RENEW_DAYS="100000")
    assert lego_calls(acme_env)[-1].endswith("renew --days 100000 --no-random-sleep")
    assert "installed a new certificate" in result.stderr
    assert installed(acme_env) != before


def test_a_failed_renewal_keeps_the_installed_pair_and_says_so(acme_env):
    acme_once(acme_env)
    before = installed(acme_env)
    result = acme_once(acme_env, LEGO_STUB="fail")
    assert result.returncode == 1
    assert "connection refused" in result.stderr  # lego's own explanation comes first
    assert (
        "FAILED to renew the certificate for example.org www.example.org (lego exited 1, see "
        "above): nginx keeps serving the installed one, expires 2031-12-07"
    ) in result.stderr
    assert installed(acme_env) == before


def test_a_failed_first_run_says_what_to_check(acme_env):
    result = acme_once(acme_env, LEGO_STUB="fail")
    assert result.returncode == 1
    assert "FAILED to obtain the certificate" in result.stderr
    assert "check that DNS points every name at this server" in result.stderr
    assert not (Path(acme_env["ACME_CERTS_DIR"]) / "server.crt").exists()


def test_a_changed_domain_list_or_directory_obtains_a_new_certificate(acme_env):
    acme_once(acme_env)
    acme_once(acme_env, DOMAIN="example.org, www.example.org api.example.org")
    assert lego_calls(acme_env)[-1].endswith(
        "-d example.org -d www.example.org -d api.example.org run"
    )
    staging = "https://acme-staging-v02.api.letsencrypt.org/directory"
    acme_once(acme_env, ACME_DIRECTORY=staging)
    assert lego_calls(acme_env)[-1].endswith(" run")
    acme_once(acme_env, ACME_DIRECTORY=staging)
    assert " renew " in lego_calls(acme_env)[-1]
    acme_once(acme_env)  # back to production: not a staging certificate renewed
    assert lego_calls(acme_env)[-1].endswith(" run")


@pytest.mark.parametrize(
    "domain",
    ["*.example.org", "example.org:443", "https://example.org", "-x.org", "a..b", "example.org."],
)
def test_nginx_refuses_names_http01_cannot_prove(domain):
    result = subprocess.run(["sh", str(ENTRYPOINT)], env={**os.environ, "DOMAIN": domain},
                            capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
    assert result.returncode == 1
    assert "is not a host name" in result.stderr


def test_nginx_without_a_domain_renders_nothing():
    result = subprocess.run(["sh", str(ENTRYPOINT)], env={**os.environ, "DOMAIN": " , "},
                            capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


@pytest.fixture
def nginx_env(tmp_path) -> dict[str, str]:
    """acme-certificate.sh's certificate volume and conf.d in tmp_path, nginx stood in for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    executable(bin_dir / "nginx", NGINX)
    (tmp_path / "certs").mkdir()
    (tmp_path / "conf").mkdir()
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "DOMAIN": DOMAIN,
        "ACME_CERTS_DIR": str(tmp_path / "certs"),
        "ACME_CONF_DIR": str(tmp_path / "conf"),
        "ACME_WATCH_INTERVAL": "0.1",
        "NGINX_CALLS": str(tmp_path / "nginx.calls"),
        "NGINX_STUB_FAIL_TEST": str(tmp_path / "fail-test"),
    }


def write_pair(env: dict[str, str], serial: str) -> None:
    certs = Path(env["ACME_CERTS_DIR"])
    (certs / "server.key").write_text(f"key {serial}\n")
    (certs / "server.crt").write_text(f"crt {serial}\n")


def conf(env: dict[str, str]) -> str:
    return (Path(env["ACME_CONF_DIR"]) / "certificate.conf").read_text()


def nginx_calls(env: dict[str, str]) -> list[str]:
    path = Path(env["NGINX_CALLS"])
    return path.read_text().splitlines() if path.exists() else []


def test_without_a_certificate_https_refuses_handshakes(nginx_env):
    result = subprocess.run(["sh", str(CERTIFICATE), "render"], env=nginx_env,
                            capture_output=True, text=True, timeout=10, check=False)  # fmt: skip
    assert result.returncode == 0
    assert conf(nginx_env) == "ssl_reject_handshake on;\n"
    assert "no certificate for example.org,www.example.org yet" in result.stderr


def test_with_a_certificate_nginx_loads_it(nginx_env):
    write_pair(nginx_env, "1")
    subprocess.run(["sh", str(CERTIFICATE), "render"], env=nginx_env, check=True, timeout=10)
    certs = nginx_env["ACME_CERTS_DIR"]
    assert conf(nginx_env) == (
        f"ssl_certificate {certs}/server.crt;\nssl_certificate_key {certs}/server.key;\n"
    )


def wait_until(probe, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_watcher_reloads_nginx_when_the_certificate_changes(nginx_env, tmp_path):
    subprocess.run(["sh", str(CERTIFICATE), "render"], env=nginx_env, check=True, timeout=10)
    log = (tmp_path / "watch.log").open("w")
    watcher = subprocess.Popen(["sh", str(CERTIFICATE), "watch"], env=nginx_env,
                               stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        write_pair(nginx_env, "1")  # the first certificate
        wait_until(lambda: "-s reload" in nginx_calls(nginx_env), "the first reload")
        assert "ssl_certificate " in conf(nginx_env)
        assert nginx_calls(nginx_env) == ["-t -q", "-s reload"]
        # A pair that does not load (nginx -t fails): no reload, one log line, nginx keeps the old.
        Path(nginx_env["NGINX_STUB_FAIL_TEST"]).touch()
        write_pair(nginx_env, "2")
        wait_until(lambda: nginx_calls(nginx_env).count("-t -q") >= 3, "repeated checks")
        assert nginx_calls(nginx_env).count("-s reload") == 1
        # It loads at a later look: reloaded once more.
        Path(nginx_env["NGINX_STUB_FAIL_TEST"]).unlink()
        wait_until(lambda: nginx_calls(nginx_env).count("-s reload") == 2, "the second reload")
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
        log.close()
    text = (tmp_path / "watch.log").read_text()
    assert text.count("certificate changed: nginx reloaded gracefully") == 2
    assert text.count("the new certificate does not load yet, nginx keeps the old one") == 1
