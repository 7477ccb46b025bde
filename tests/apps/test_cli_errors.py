"""The mistakes a user makes first, as the user meets them: real program
processes started with a taken port, a host name that does not resolve,
a zero or negative timeout. Each must give one line naming what was wrong
and a non-zero status, never a traceback, never a restart loop."""

import importlib
import socket
import subprocess
import sys

import pytest

from tests import REPO_ROOT
from . import kill_group

ROOT = str(REPO_ROOT)
UNRESOLVABLE = "no-such-host.invalid"  # RFC 6761: .invalid never resolves


@pytest.fixture
def taken_port():
    """A port some other socket is listening on for the whole test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def run_program(args, timeout=60):
    proc = subprocess.Popen([sys.executable, "-m", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    return proc.returncode, out, err


def lines(text):
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize("program", [
    ["apps.webserver", "--quiet"],
    ["apps.webserver", "--quiet", "--workers", "2"],
    ["apps.echo"],
    ["apps.echo", "--workers", "2"],
    ["apps.proxy", "--target", "127.0.0.1:9"],
    ["apps.proxy", "--target", "127.0.0.1:9", "--workers", "2"],
], ids=["webserver", "webserver-2-workers", "echo", "echo-2-workers", "proxy", "proxy-2-workers"])
def test_a_port_in_use_is_one_line_naming_the_address_and_status_1(program, taken_port):
    if program[0] == "apps.proxy":
        args = program + ["--listen", f"127.0.0.1:{taken_port}"]
    else:
        args = program + ["--port", str(taken_port)]
    code, out, err = run_program(args)
    assert code == 1, (code, out, err)
    assert "Traceback" not in err and "restarting" not in err, err
    assert len(lines(err)) == 1, err
    assert f"cannot listen on 127.0.0.1:{taken_port}: Address already in use" in err
    assert "serving" not in out and "listening" not in out


def test_a_listen_host_that_does_not_resolve_is_named(taken_port):
    code, out, err = run_program(["apps.webserver", "--quiet", "--host", UNRESOLVABLE, "--port", "0"])
    assert code == 1, (code, out, err)
    assert len(lines(err)) == 1 and f"'{UNRESOLVABLE}' does not resolve" in err, err


def test_loadgen_names_the_host_that_does_not_resolve():
    code, out, err = run_program(["apps.loadgen", f"http://{UNRESOLVABLE}:8080/", "-n", "1"])
    assert code == 2, (code, out, err)
    assert lines(err)[-1].startswith("python -m apps.loadgen: error: ")
    assert f"host '{UNRESOLVABLE}' does not resolve" in lines(err)[-1], err


def test_proxy_names_the_target_that_does_not_resolve_per_connection():
    proc = subprocess.Popen([sys.executable, "-m", "apps.proxy", "--listen", "127.0.0.1:0",
                             "--target", f"{UNRESOLVABLE}:80"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        banner = proc.stdout.readline()
        port = int(banner.split()[3].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            client.settimeout(30)
            assert client.recv(10) == b""  # the proxy gives up on this client, closing it
        for line in proc.stderr:
            if "connect to" in line:
                break
    finally:
        kill_group(proc)
    assert f"connect to {UNRESOLVABLE}:80 failed: '{UNRESOLVABLE}' does not resolve" in line, line


TIMEOUTS = [
    ("apps.webserver", "--header-timeout"), ("apps.webserver", "--keepalive-timeout"),
    ("apps.webserver", "--send-timeout"), ("apps.webserver", "--drain-timeout"),
    ("apps.webserver", "--handshake-timeout"),
    ("apps.proxy", "--connect-timeout"), ("apps.proxy", "--handshake-timeout"),
    ("apps.loadgen", "--timeout"),
]


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
@pytest.mark.parametrize("program,option", TIMEOUTS, ids=[f"{p[5:]}{o}" for p, o in TIMEOUTS])
def test_every_cli_rejects_a_timeout_that_is_not_positive(program, option, value, capsys):
    """Through each program's ``main(argv)`` in this process: rejected
    while parsing, before anything is opened."""
    extra = {"apps.proxy": ["--listen", "127.0.0.1:0", "--target", "127.0.0.1:9"],
             "apps.loadgen": ["http://127.0.0.1:9/", "-n", "1"]}.get(program, ["--port", "0"])
    main = importlib.import_module(program + (".__main__" if program == "apps.webserver" else "")).main
    with pytest.raises(SystemExit) as exited:
        main([*extra, f"{option}={value}"])
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    assert f"argument {option}: '{value}'" in lines(err)[-1], err


@pytest.mark.parametrize("value, says", [("0", "must be a whole number above zero"),
                                         ("-5", "must be a whole number above zero"),
                                         ("lots", "is not a whole number"), ("1.5", "is not a whole number")])
def test_the_webserver_rejects_a_backlog_that_is_not_a_positive_count(value, says, capsys):
    main = importlib.import_module("apps.webserver.__main__").main
    with pytest.raises(SystemExit) as exited:
        main(["--port", "0", f"--backlog={value}"])
    err = capsys.readouterr().err
    assert exited.value.code == 2, err
    last = lines(err)[-1]
    assert last.startswith("python -m apps.webserver: error: argument --backlog: ") and f"'{value}'" in last, err
    assert last.endswith(says), err
