"""Functions that run their own code in a running lab (issue 17): the Runtime API in each
execution environment, a custom runtime written as AWS's tutorial writes it, a Python handler,
init and environment reuse, timeouts, errors, throttling, logs, the command line, and the
hosts' services the functions talk to. One lab for the module (its code folders written beside
its config file, as a user's would be)."""
from __future__ import annotations

import base64
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading

import pytest

from hyperplane import HyperplaneError, paths
from kit.labs import wait_until

SERVER, ECHO = "198.18.1.5", "198.18.1.6"

# AWS's custom-runtime tutorial (runtimes-walkthrough), unmodified: a #!/bin/sh bootstrap that
# needs bash (Amazon Linux's sh), looping on curl against the Runtime API.
TUTORIAL_BOOTSTRAP = r'''#!/bin/sh

set -euo pipefail

# Initialization - load function handler
source $LAMBDA_TASK_ROOT/"$(echo $_HANDLER | cut -d. -f1).sh"

# Processing
while true
do
  HEADERS="$(mktemp)"
  # Get an event. The HTTP request will block until one is received
  EVENT_DATA=$(curl -sS -LD "$HEADERS" "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/next")

  # Extract request ID by scraping response headers received above
  REQUEST_ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id "$HEADERS" | tr -d '[:space:]' | cut -d: -f2)

  # Run the handler function from the script
  RESPONSE=$($(echo "$_HANDLER" | cut -d. -f2) "$EVENT_DATA")

  # Send the response
  curl "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/$REQUEST_ID/response"  -d "$RESPONSE"
done
'''
# The tutorial's handler, which also fetches a page from the VPC server.
TUTORIAL_FUNCTION = r'''function handler () {
  EVENT_DATA=$1
  echo "$EVENT_DATA" 1>&2;
  PAGE=$(curl -sS "http://${SERVER}:8080/hello.txt")
  RESPONSE="Echoing request: '$EVENT_DATA' page: $PAGE"

  echo $RESPONSE
}
'''
PY_APP = r'''
import json, os, socket, time

# init: one connection to the echo server, reused by every invocation of this environment
conn = socket.create_connection((os.environ["ECHO_HOST"], 9000), timeout=5)
reader = conn.makefile("r")
count = 0


def handler(event, context):
    global count
    count += 1
    action = event.get("action")
    if action == "sleep":
        time.sleep(event["seconds"])
    elif action == "raise":
        raise ValueError("asked to fail")
    elif action == "exit":
        os._exit(3)
    elif action == "exit-later":
        import threading
        threading.Timer(0.3, os._exit, (0,)).start()
    elif action == "big":
        return "x" * (7 * 1024 * 1024)
    elif action == "whoami":
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.connect((os.environ["ECHO_HOST"], 9))
        return {"uid": os.getuid(), "gid": os.getgid(), "cwd": os.getcwd(),
                "source": udp.getsockname()[0],
                "remaining_ms": context.get_remaining_time_in_millis(),
                "request_id": context.aws_request_id,
                "env": {k: os.environ.get(k) for k in (
                    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
                    "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_RUNTIME_API", "_HANDLER",
                    "LAMBDA_TASK_ROOT", "AWS_REGION", "AWS_EXECUTION_ENV", "TZ",
                    "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME", "ECHO_HOST",
                    "_X_AMZN_TRACE_ID")}}
    print(f"invocation {count}: {json.dumps(event)}")
    conn.sendall(f"ping {count}\n".encode())
    return {"count": count, "local_port": conn.getsockname()[1],
            "echo": reader.readline().strip()}
'''
SILENT_BOOTSTRAP = "#!/bin/sh\necho 'initialising forever'\nexec sleep 600\n"
ECHO_SERVER = ("import socketserver\n"
               "class H(socketserver.StreamRequestHandler):\n"
               "    def handle(self):\n"
               "        for line in self.rfile:\n"
               "            self.wfile.write(b'echo ' + line)\n"
               "socketserver.ThreadingTCPServer.allow_reuse_address = True\n"
               "socketserver.ThreadingTCPServer(('0.0.0.0', 9000), H).serve_forever()\n")

VPC = """
  [functions.vpc_config]
  subnet_ids = ["subnet-a"]
  security_group_ids = ["sg-0a1b2c3d"]
"""
CONFIG = f"""
[vpc]
cidr = "198.18.0.0/16"

[[subnets]]
id = "subnet-a"
cidr = "198.18.1.0/24"

[[security_groups]]
id = "sg-0a1b2c3d"

[[functions]]
name = "fn-sh"
environments = ["veth"]
runtime = "provided.al2023"
handler = "function.handler"
code = "tutorial"
environment = {{ SERVER = "{SERVER}" }}
{VPC}
[[functions]]
name = "fn-py"
environments = ["tap"]
runtime = "python3.{sys.version_info.minor}"
handler = "app.handler"
code = "py"
timeout = 2
memory_size = 256
environment = {{ ECHO_HOST = "{ECHO}" }}
{VPC}
[[functions]]
name = "fn-default"
environments = ["veth"]
{VPC}
[[functions]]
name = "fn-pair"
environments = ["veth", "tap"]
handler = "app.handler"
code = "py"
environment = {{ ECHO_HOST = "{ECHO}" }}
{VPC}
[[functions]]
name = "fn-broken"
environments = ["veth"]
handler = "nosuchmodule.handler"
code = "py"
environment = {{ ECHO_HOST = "{ECHO}" }}
{VPC}
[[functions]]
name = "fn-nobootstrap"
environments = ["veth"]
runtime = "provided.al2"
code = "empty"
{VPC}
[[functions]]
name = "fn-silent"
environments = ["veth"]
runtime = "provided.al2023"
code = "silent"
{VPC}
[[hosts]]
name = "server"
subnet = "subnet-a"
ipv4 = "{SERVER}"
command = "cd www && exec python3 -m http.server 8080"

[[hosts]]
name = "echo"
subnet = "subnet-a"
ipv4 = "{ECHO}"
command = ["python3", "-c", {json.dumps(ECHO_SERVER)}]
"""


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


@pytest.fixture(scope="module")
def lab(tmp_path_factory, run_dir, hyperplane_module_lab_factory):
    d = tmp_path_factory.mktemp("fnlab")
    write(d / "tutorial" / "bootstrap", TUTORIAL_BOOTSTRAP, 0o755)
    write(d / "tutorial" / "function.sh", TUTORIAL_FUNCTION)
    write(d / "py" / "app.py", PY_APP)
    os.makedirs(d / "empty")
    write(d / "silent" / "bootstrap", SILENT_BOOTSTRAP, 0o755)
    write(d / "www" / "hello.txt", "hello from the VPC\n")
    write(d / "v2" / "lambda_function.py",
          "def lambda_handler(event, context):\n    return {'version': 2}\n")
    write(d / "lab.toml", CONFIG)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERPLANE_LAMBDA_INIT_TIMEOUT", "2")   # fn-silent's init gives up sooner
        lab = hyperplane_module_lab_factory(config=str(d / "lab.toml"))
    wait_until(lambda: all(s["running"] for s in lab.services()), 10, "the host services")
    wait_until(lambda: lab.exec("echo", ["ss", "-Hltn", "sport = :9000"], capture_output=True,
                                text=True).stdout.strip() != "", 10, "the echo server")
    wait_until(lambda: lab.exec("server", ["ss", "-Hltn", "sport = :8080"],
                                capture_output=True, text=True).stdout.strip() != "", 10,
               "the web server")
    return lab


def error_of(body: bytes) -> dict:
    doc = json.loads(body)
    assert set(doc) >= {"errorMessage", "errorType"}, doc
    return doc


def env_of(lab, name):
    return next(e for e in lab.environments() if e["environment"] == name)


# ---- the two runtimes ----------------------------------------------------------------------------
def test_the_tutorials_custom_runtime_runs_unmodified_and_reaches_the_vpc(lab):
    meta, body = lab.invoke("fn-sh", {"hello": "world"})
    assert meta == {"StatusCode": 200, "ExecutedVersion": "$LATEST"}
    text = body.decode()
    assert text.startswith("Echoing request: '{\"hello\": \"world\"}'"), text
    assert "hello from the VPC" in text
    eni = lab.enis()[0]["ipv4"]
    log = open(paths.host_log_path(lab.name, "server")).read()
    assert f'{eni} - - ' in log and "GET /hello.txt" in log, log[-2000:]
    # the server saw the ENI, not the environment: the function's traffic crossed the NAT
    assert lab.nodes["fn-sh-0"].address() not in log


def test_python_handler_reuses_the_connection_opened_at_init(lab):
    before = env_of(lab, "fn-py-0")["cold_starts"]
    _, b1 = lab.invoke("fn-py", {"n": 1})
    _, b2 = lab.invoke("fn-py", {"n": 2})
    r1, r2 = json.loads(b1), json.loads(b2)
    assert r2["count"] == r1["count"] + 1, "globals survive between invocations"
    assert r1["local_port"] == r2["local_port"] and r2["echo"].startswith("echo ping")
    entries = lab.conntrack(proto="tcp", dport=9000)
    assert len(entries) == 1, entries
    e = entries[0]
    assert e["orig"]["src"] == lab.nodes["fn-py-0"].address()
    assert e["reply"]["dst"] == lab.enis()[0]["ipv4"]
    env = env_of(lab, "fn-py-0")
    assert env["state"] == "warm" and env["cold_starts"] == max(before, 1)


def test_the_runtime_runs_unprivileged_in_its_environment_with_lambdas_variables(lab):
    _, body = lab.invoke("fn-py", {"action": "whoami"})
    r = json.loads(body)
    assert r["uid"] == 65534 and r["gid"] == 65534
    assert r["source"] == lab.nodes["fn-py-0"].address(), "inside the environment's namespace"
    assert 0 < r["remaining_ms"] <= 2000
    env = r["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == "fn-py" and env["_HANDLER"] == "app.handler"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "256"
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_RUNTIME_API"] == "127.0.0.1:9001"
    assert env["LAMBDA_TASK_ROOT"] == r["cwd"]
    assert env["AWS_REGION"] == "us-east-1" and env["TZ"] == ":UTC"
    assert env["AWS_EXECUTION_ENV"].startswith("AWS_Lambda_python3.")
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == "/aws/lambda/fn-py"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"].split("]")[0].endswith("[$LATEST")
    assert env["ECHO_HOST"] == ECHO and env["_X_AMZN_TRACE_ID"].startswith("Root=1-")
    # the Runtime API is local to the environment: nothing of it crosses the NAT
    assert not lab.conntrack(dport=9001)


def test_a_function_without_code_runs_the_consoles_hello_world(lab):
    meta, body = lab.invoke("fn-default")
    assert "FunctionError" not in meta
    assert json.loads(body) == {"statusCode": 200, "body": "\"Hello from Lambda!\""}


# ---- errors ----------------------------------------------------------------------------------------
def test_an_exception_is_a_function_error_and_the_environment_stays_warm(lab):
    lab.invoke("fn-py", {"n": 0})
    pid = env_of(lab, "fn-py-0")["pid"]
    meta, body = lab.invoke("fn-py", {"action": "raise"})
    assert meta["StatusCode"] == 200 and meta["FunctionError"] == "Unhandled"
    doc = error_of(body)
    assert doc["errorType"] == "ValueError" and doc["errorMessage"] == "asked to fail"
    assert env_of(lab, "fn-py-0")["pid"] == pid


def test_a_timeout_fails_with_lambdas_words_and_restarts_the_environment(lab):
    lab.invoke("fn-py", {"n": 0})
    meta, body = lab.invoke("fn-py", {"action": "sleep", "seconds": 30})   # ended by timeout
    assert meta["FunctionError"] == "Unhandled"
    doc = error_of(body)
    assert doc["errorType"] == "Sandbox.Timedout"
    assert "Task timed out after 2.00 seconds" in doc["errorMessage"]
    assert env_of(lab, "fn-py-0")["state"] == "cold"
    _, body = lab.invoke("fn-py", {"n": 1})     # a new runtime: init again, globals afresh
    assert json.loads(body)["count"] == 1
    msgs = [e["message"] for e in lab.logs("fn-py")]
    assert any("Task timed out after 2.00 seconds" in m for m in msgs)
    report = next(m for m in reversed(msgs) if m.startswith("REPORT") and "timeout" in m)
    assert "Status: timeout" in report and "Max Memory Used: 0 MB" not in report, report


def test_a_runtime_that_exits_mid_invocation_is_a_runtime_exit_error(lab):
    meta, body = lab.invoke("fn-py", {"action": "exit"})
    assert meta["FunctionError"] == "Unhandled"
    doc = error_of(body)
    assert doc["errorType"] == "Runtime.ExitError" and "exit status 3" in doc["errorMessage"]
    assert json.loads(lab.invoke("fn-py", {"n": 1})[1])["count"] == 1


def test_a_runtime_that_exits_while_idle_is_started_afresh(lab):
    meta, _ = lab.invoke("fn-py", {"action": "exit-later"})
    assert "FunctionError" not in meta
    wait_until(lambda: env_of(lab, "fn-py-0")["state"] == "cold", 5, "the runtime to exit")
    meta, body = lab.invoke("fn-py", {"n": 1})
    assert "FunctionError" not in meta and json.loads(body)["count"] == 1


def test_a_response_over_6_mb_is_refused(lab):
    meta, body = lab.invoke("fn-py", {"action": "big"})
    assert meta["FunctionError"] == "Unhandled"
    doc = error_of(body)
    assert doc["errorType"] == "Function.ResponseSizeTooLarge"
    assert "6291556 bytes" in doc["errorMessage"]


@pytest.mark.parametrize("fn, error_type, words", [
    ("fn-broken", "Runtime.ImportModuleError", "No module named 'nosuchmodule'"),
    ("fn-nobootstrap", "Runtime.InvalidEntrypoint", "bootstrap"),
    ("fn-silent", "Sandbox.Timedout", "did not ask for an invocation"),
])
def test_init_failures_are_clear_errors_never_hangs(lab, fn, error_type, words):
    meta, body = lab.invoke(fn, {}, log_type="Tail")
    assert meta["StatusCode"] == 200 and meta["FunctionError"] == "Unhandled"
    doc = error_of(body)
    assert doc["errorType"] == error_type and words in doc["errorMessage"], doc
    tail = base64.b64decode(meta["LogResult"]).decode()
    assert "INIT_REPORT" in tail and "REPORT RequestId" in tail, tail
    assert env_of(lab, f"{fn}-0")["state"] == "cold"


def test_bad_requests_are_refused_with_awss_exceptions(lab):
    with pytest.raises(HyperplaneError, match="InvalidRequestContentException"):
        lab.invoke("fn-py", "{not json")
    with pytest.raises(HyperplaneError, match="ResourceNotFoundException"):
        lab.invoke("fn-nope")


def test_every_environment_busy_is_throttled(lab):
    lab.invoke("fn-py", {"n": 0})
    slow = threading.Thread(target=lab.invoke, args=("fn-py", {"action": "sleep",
                                                              "seconds": 1.5}), daemon=True)
    slow.start()
    wait_until(lambda: env_of(lab, "fn-py-0")["state"] == "busy", 5, "the busy environment")
    with pytest.raises(HyperplaneError, match="TooManyRequestsException"):
        lab.invoke("fn-py", {"n": 1})
    slow.join(10)


# ---- logs and the command line -------------------------------------------------------------------
def test_logs_are_shaped_like_cloudwatch(lab):
    meta, _ = lab.invoke("fn-py", {"n": 7}, log_type="Tail")
    tail = base64.b64decode(meta["LogResult"]).decode()
    assert "START RequestId:" in tail and "END RequestId:" in tail
    assert 'invocation ' in tail and '{"n": 7}' in tail
    report = [line for line in tail.splitlines() if line.startswith("REPORT")][-1]
    for field in ("Duration:", "Billed Duration:", "Memory Size: 256 MB", "Max Memory Used:"):
        assert field in report, report
    msgs = [e["message"] for e in lab.logs("fn-py")]
    assert any(m.startswith("INIT_START Runtime Version: python:3.") for m in msgs)
    assert any("Init Duration:" in m for m in msgs if m.startswith("REPORT"))
    assert {e["environment"] for e in lab.logs("fn-py")} == {"fn-py-0"}


def hp(*args, **kw):
    return subprocess.run([sys.executable, "-m", "hyperplane", *args], capture_output=True,
                          text=True, timeout=60, **kw)


def test_the_command_line_invokes_like_the_aws_cli(lab, tmp_path):
    out = tmp_path / "response.json"
    r = hp("function", "invoke", "fn-default", str(out), "--payload", '{"a": 1}',
           "--log-type", "Tail", "--name", lab.name)
    assert r.returncode == 0, r.stderr
    meta = json.loads(r.stdout)
    assert meta["StatusCode"] == 200 and meta["ExecutedVersion"] == "$LATEST"
    assert "START RequestId" in base64.b64decode(meta["LogResult"]).decode()
    assert json.loads(out.read_text())["statusCode"] == 200
    r = hp("function", "logs", "fn-default", "--name", lab.name)
    assert r.returncode == 0 and "REPORT RequestId" in r.stdout
    r = hp("function", "environments", "--json", "--name", lab.name)
    assert r.returncode == 0
    assert {e["environment"] for e in json.loads(r.stdout)} >= {"fn-default-0", "fn-py-0"}
    r = hp("function", "invoke", "fn-py", str(out), "--payload", "nope", "--name", lab.name)
    assert r.returncode != 0 and "InvalidRequestContentException" in r.stderr


def test_invocations_run_in_parallel_on_idle_environments(lab):
    results = []
    calls = [threading.Thread(target=lambda: results.append(lab.invoke(
        "fn-pair", {"action": "sleep", "seconds": 1.0})), daemon=True) for _ in range(2)]
    for t in calls:
        t.start()
    for t in calls:
        t.join(15)
    assert len(results) == 2 and all("FunctionError" not in m for m, _ in results), results
    # one after the other, both would have gone to the first (warm) environment
    envs = {e["environment"]: e for e in lab.environments() if e["function"] == "fn-pair"}
    assert {e["invocations"] for e in envs.values()} == {1}, envs


def test_update_code_deploys_a_new_revision_and_the_next_invocation_runs_it(lab, tmp_path):
    lab.invoke("fn-default")
    cold = env_of(lab, "fn-default-0")["cold_starts"]
    v2 = os.path.join(os.path.dirname(lab.status()["config"]), "v2")
    r = lab.update_code("fn-default", v2)
    assert r["Revision"] >= 2 and r["Source"] == v2 and r["CodeSize"] > 0 and r["CodeSha256"]
    _, body = lab.invoke("fn-default")
    assert json.loads(body) == {"version": 2}
    assert env_of(lab, "fn-default-0")["cold_starts"] == cold + 1
    back = lab.update_code("fn-default")          # the configured code again: none, hello world
    assert back["CodeSha256"] != r["CodeSha256"]
    assert json.loads(lab.invoke("fn-default")[1])["statusCode"] == 200
    with pytest.raises(HyperplaneError, match="no such folder"):
        lab.update_code("fn-default", str(tmp_path / "missing"))


# ---- hosts' services and restart ----------------------------------------------------------------
def test_host_services_are_supervised(lab):
    services = {s["host"]: s for s in lab.services()}
    assert set(services) == {"server", "echo"}
    assert all(s["running"] and s["pid"] for s in services.values())


def test_a_warm_environment_and_its_connection_survive_a_data_path_restart(lab):
    _, b1 = lab.invoke("fn-py", {"n": 1})
    lab.restart()
    _, b2 = lab.invoke("fn-py", {"n": 2})
    r1, r2 = json.loads(b1), json.loads(b2)
    assert r2["count"] == r1["count"] + 1 and r2["local_port"] == r1["local_port"]
    assert r2["echo"] == f"echo ping {r2['count']}"


def test_a_stopped_workloads_service_is_reported_and_lab_restart_brings_it_back(lab):
    pid = lab.status()["workloads"]["pid"]
    os.kill(pid, signal.SIGTERM)                   # the service this lab started, by its pid
    wait_until(lambda: not lab.status()["workloads"]["running"], 10, "the service to stop")
    with pytest.raises(HyperplaneError, match="workloads service .* is not running"):
        lab.invoke("fn-default")
    lab.restart()
    assert lab.status()["workloads"]["pid"] != pid
    meta, _ = lab.invoke("fn-default")
    assert "FunctionError" not in meta
    wait_until(lambda: all(s["running"] for s in lab.services()), 10, "the host services")


# ---- last: the lab clock moves past the idle limit --------------------------------------------
def test_inactive_and_pending_functions_refuse_invocations_as_in_aws(lab):
    lab.advance_clock(lab.plan.lifecycle.inactive_after + 1)
    wait_until(lambda: {f["name"]: f["state"] for f in lab.functions()}["fn-default"]
               == "Inactive", 5, "fn-default to go Inactive")
    with pytest.raises(HyperplaneError, match="ResourceNotReadyException.*Inactive"):
        lab.invoke("fn-default")
    with pytest.raises(HyperplaneError, match="ResourceConflictException.*Pending"):
        lab.invoke("fn-default")
    lab.advance_clock(lab.plan.lifecycle.eni_create_delay + 1)
    lab.wait_function("fn-default")
    meta, _ = lab.invoke("fn-default")
    assert meta["StatusCode"] == 200 and "FunctionError" not in meta


def test_lab_status_shows_environments_and_services_and_down_stops_them_all(lab):
    lab.invoke("fn-default")
    st = lab.status()["workloads"]
    assert st["running"] and st["pid"]
    assert {e["environment"]: e["state"] for e in st["environments"]}["fn-default-0"] == "warm"
    assert {s["host"] for s in st["services"]} == {"server", "echo"}
    pids = [st["pid"]] + [e["pid"] for e in st["environments"] if e["pid"]] \
        + [s["pid"] for s in st["services"] if s["pid"]]
    lab.down()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z", pid
    assert not glob.glob(os.path.join(tempfile.gettempdir(), f"hp-{lab.name}-fn-*"))
