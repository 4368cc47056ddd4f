"""Lab config, what runs in the lab: a function's runtime, handler, code, timeout, memory_size
and environment; a host's command and its environment; where relative paths are taken from
(the config file's folder, a base_dir, the lab's recorded config_dir); the plan carrying them
through its JSON round trip. Pure Python: no privileges, no namespaces."""
from __future__ import annotations

import json
import sys

import pytest

from hyperplane import labconfig as lc
from hyperplane.cli import build_parser
from hyperplane.lab import lifecycle
from hyperplane.labconfig import LabConfigError
from kit.labdocs import base_doc, example_doc, parse, refused

PY = f"python3.{sys.version_info.minor}"
RESERVED_WORDS = ("InvalidParameterValueException: Lambda was unable to configure your "
                  "environment variables because the environment variables you have provided "
                  "contains reserved keys that are currently not supported for modification. "
                  "Reserved keys used in this request: ")


def fn_doc(**keys):
    """The default lab with these keys added to its first function."""
    doc = base_doc()
    doc["functions"][0].update(keys)
    return doc


def fn(doc, i=0, lab="demo"):
    return lc.resolve(parse(doc), lab).functions[i]


# ---- defaults ----------------------------------------------------------------------------------
def test_defaults_python_hello_world():
    cfg = lc.default()
    for f in cfg.functions:
        assert (f.runtime, f.handler, f.code, f.timeout, f.memory_size, f.environment) == (
            PY, "lambda_function.lambda_handler", None, 3, 128, ())
    p = lc.resolve(cfg, "demo")
    for f in p.functions:
        assert (f.runtime, f.handler, f.code, f.timeout, f.memory_size, f.environment) == (
            PY, "lambda_function.lambda_handler", None, 3, 128, {})
    (h,) = p.hosts
    assert (h.command, h.environment, h.config_dir) == (None, {}, None)


def test_custom_runtime_defaults_to_the_tutorial_handler(tmp_path):
    (tmp_path / "fn").mkdir()
    f = fn(fn_doc(runtime="provided.al2023", code=str(tmp_path / "fn")))
    assert (f.runtime, f.handler, f.code) == ("provided.al2023", "function.handler",
                                              str(tmp_path / "fn"))
    f = fn(fn_doc(runtime="provided.al2", code=str(tmp_path / "fn"), handler="anything"))
    assert (f.runtime, f.handler) == ("provided.al2", "anything")


def test_everything_set(tmp_path):
    (tmp_path / "app").mkdir()
    f = fn(fn_doc(runtime="python3.12", handler="app/handlers.main", code=str(tmp_path / "app"),
                  timeout=900, memory_size=10240,
                  environment={"DB_HOST": "198.18.1.5", "db_port": "5432"}))
    assert (f.runtime, f.handler, f.code, f.timeout, f.memory_size) == (
        "python3.12", "app/handlers.main", str(tmp_path / "app"), 900, 10240)
    assert list(f.environment.items()) == [("DB_HOST", "198.18.1.5"), ("db_port", "5432")]


# ---- runtime -----------------------------------------------------------------------------------
@pytest.mark.parametrize("runtime", ["python3.9", "python3.11", "python3.13", "provided.al2"])
def test_runtimes_this_lab_runs(runtime, tmp_path):
    assert fn(fn_doc(runtime=runtime, code=str(tmp_path))).runtime == runtime


@pytest.mark.parametrize("runtime", ["nodejs20.x", "java21", "python3", "python3.123",
                                     "python2.7", "provided", "Python3.11", "python3.11 "])
def test_runtimes_this_lab_does_not_run(runtime):
    refused(fn_doc(runtime=runtime), "functions[0].runtime", repr(runtime),
            "is not a runtime this lab runs; use provided.al2023 (a `bootstrap` in the code "
            "folder) or python3.N (e.g. python3.11)")


def test_runtime_must_be_a_string():
    refused(fn_doc(runtime=3.11), "functions[0].runtime", "must be a string", "provided.al2023")


# ---- handler -----------------------------------------------------------------------------------
@pytest.mark.parametrize("handler", ["lambda_function.lambda_handler", "pkg.mod.fn",
                                     "app/handlers.main", "a.b"])
def test_python_handlers(handler):
    assert fn(fn_doc(handler=handler)).handler == handler


@pytest.mark.parametrize("handler", ["handler", ".main", "app.", "app/handlers"])
def test_a_python_handler_names_a_module_and_a_function(handler):
    refused(fn_doc(handler=handler), "functions[0].handler", "FILE.FUNCTION",
            "lambda_function.lambda_handler")


def test_a_handler_has_no_whitespace():
    refused(fn_doc(handler="app.main x"), "functions[0].handler", "whitespace", r"[^\s]+")


def test_a_handler_has_at_most_128_characters():
    assert fn(fn_doc(handler="m." + "f" * 126)).handler.endswith("f")
    refused(fn_doc(handler="m." + "f" * 127), "functions[0].handler", "129 characters",
            "at most 128")


def test_a_custom_runtime_handler_is_not_empty(tmp_path):
    refused(fn_doc(runtime="provided.al2023", code=str(tmp_path), handler=""),
            "functions[0].handler", "empty", "function.handler")


# ---- code --------------------------------------------------------------------------------------
def test_code_must_exist(tmp_path):
    err = refused(fn_doc(code="no-such"), "functions[0].code", "does not exist",
                  "relative paths are taken from the config file's folder", "create the folder")
    assert "no-such" in err
    refused(fn_doc(code=str(tmp_path / "gone")), "functions[0].code",
            f"{tmp_path / 'gone'} does not exist; create the folder")


def test_code_must_be_a_folder(tmp_path):
    (tmp_path / "app.py").write_text("")
    refused(fn_doc(code=str(tmp_path / "app.py")), "functions[0].code", "is not a folder")
    refused(fn_doc(code=""), "functions[0].code", "empty", "hello-world")
    refused(fn_doc(code=["fn"]), "functions[0].code", "must be a string")


def test_a_custom_runtime_needs_code():
    refused(fn_doc(runtime="provided.al2023"), "functions[0].code", "missing",
            "a custom runtime needs code = a folder holding an executable `bootstrap`")


# ---- where relative paths come from ------------------------------------------------------------
def write_lab(folder, code="fn"):
    folder.mkdir(parents=True, exist_ok=True)
    text = lc.default_text().replace('name = "fn-a"', f'name = "fn-a"\ncode = "{code}"', 1)
    path = folder / "lab.toml"
    path.write_text(text)
    return path, text


def test_relative_code_is_taken_from_the_config_files_folder(tmp_path, monkeypatch):
    path, text = write_lab(tmp_path / "lab")
    (tmp_path / "lab" / "fn").mkdir()
    monkeypatch.chdir(tmp_path)                          # not the config's folder
    cfg = lc.load(path)
    assert cfg.functions[0].code == str(tmp_path / "lab" / "fn")
    assert cfg.base_dir == str(tmp_path / "lab")
    assert lc.loads(text, source=str(path)).functions[0].code == str(tmp_path / "lab" / "fn")
    with pytest.raises(LabConfigError) as info:          # text that is no file: the cwd
        lc.loads(text, source="<text>")
    assert info.value.field == "functions[0].code"
    assert str(tmp_path / "fn") in str(info.value)


def test_relative_code_is_taken_from_base_dir(tmp_path):
    path, text = write_lab(tmp_path / "copy", code="../src/fn")
    (tmp_path / "src" / "fn").mkdir(parents=True)
    base = str(tmp_path / "orig" / "sub")
    want = str(tmp_path / "orig" / "src" / "fn")
    with pytest.raises(LabConfigError, match="orig/src/fn does not exist"):
        lc.load(path, base_dir=base)
    (tmp_path / "orig" / "src" / "fn").mkdir(parents=True)
    assert lc.load(path, base_dir=base).functions[0].code == want
    assert lc.loads(text, source=str(path), base_dir=base).functions[0].code == want
    assert lc.load(path).functions[0].code == str(tmp_path / "src" / "fn")


def test_config_dir_rule(tmp_path, monkeypatch):
    path, _ = write_lab(tmp_path / "lab")
    monkeypatch.chdir(tmp_path)
    assert lc.config_dir(str(path)) == str(tmp_path / "lab")
    assert lc.config_dir("lab/lab.toml") == str(tmp_path / "lab")
    assert lc.config_dir("<default>") == str(tmp_path)
    assert lc.config_dir(str(path), base_dir="x") == str(tmp_path / "x")


def test_lab_up_records_where_relative_paths_come_from(tmp_path, monkeypatch):
    path, text = write_lab(tmp_path / "lab")
    (tmp_path / "lab" / "fn").mkdir()
    monkeypatch.chdir(tmp_path)
    _, source, plan, config_dir = lifecycle.read_config("lab/lab.toml", "demo")
    assert (source, config_dir) == (str(path), str(tmp_path / "lab"))
    assert plan.functions[0].code == str(tmp_path / "lab" / "fn")
    assert lifecycle.read_config(None, "demo")[3] == str(tmp_path)
    assert lifecycle.read_config(None, "demo", config_text=lc.default_text())[3] == \
        str(tmp_path)
    argv = lifecycle.datapath_argv("demo", True, config_dir)
    assert argv[argv.index("--config-dir") + 1] == str(tmp_path / "lab")
    assert "--config-dir" not in lifecycle.datapath_argv("demo", False)
    args = build_parser().parse_args(["run", "x.toml", "--config-dir", "/srv/lab"])
    assert args.config_dir == "/srv/lab"
    assert build_parser().parse_args(["run", "x.toml"]).config_dir is None


# ---- timeout, memory_size ----------------------------------------------------------------------
@pytest.mark.parametrize("key, value, words", [
    ("timeout", 0, ["0 is outside Lambda's range 1..900 seconds", "whole number of seconds"]),
    ("timeout", 901, ["901 is outside Lambda's range 1..900 seconds"]),
    ("timeout", 1.5, ["must be an integer", "from 1 to 900"]),
    ("timeout", True, ["must be an integer"]),
    ("memory_size", 127, ["127 is outside Lambda's range 128..10240 MB", "whole number of MB"]),
    ("memory_size", 10241, ["10241 is outside Lambda's range 128..10240 MB"]),
    ("memory_size", "512", ["must be an integer"]),
])
def test_bad_timeout_and_memory_size(key, value, words):
    refused(fn_doc(**{key: value}), f"functions[0].{key}", *words)


def test_timeout_and_memory_size_bounds():
    f = fn(fn_doc(timeout=1, memory_size=128))
    assert (f.timeout, f.memory_size) == (1, 128)


# ---- environment -------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["AWS_REGION", "_HANDLER", "AWS_LAMBDA_RUNTIME_API",
                                 "LAMBDA_TASK_ROOT", "AWS_SESSION_TOKEN"])
def test_reserved_environment_keys(key):
    refused(fn_doc(environment={"DB_HOST": "x", key: "y"}), "functions[0].environment",
            RESERVED_WORDS + key, "remove them")


def test_every_reserved_key_is_listed():
    err = refused(fn_doc(environment={"AWS_REGION": "a", "OK_KEY": "b", "_X_AMZN_TRACE_ID": "c"}),
                  "functions[0].environment")
    assert err.endswith("Reserved keys used in this request: AWS_REGION, _X_AMZN_TRACE_ID; "
                        "remove them (Lambda sets them in every execution environment itself)")


@pytest.mark.parametrize("key", ["1DB", "X", "DB-HOST", "_PRIVATE", "DB HOST", "db.host"])
def test_environment_key_pattern(key):
    refused(fn_doc(environment={key: "v"}), "functions[0].environment", repr(key),
            "[a-zA-Z]([a-zA-Z0-9_])+", "rename it")


def test_environment_values_are_strings():
    refused(fn_doc(environment={"DB_PORT": 5432}), "functions[0].environment.DB_PORT",
            "must be a string, not an integer", 'quote it: DB_PORT = "5432"')
    refused(fn_doc(environment={"DEBUG": True}), "functions[0].environment.DEBUG",
            'quote it: DEBUG = "true"')
    refused(fn_doc(environment=["DB_HOST=x"]), "functions[0].environment",
            "must be a table", 'DB_HOST = "198.18.1.5"')


def test_environment_is_at_most_4kb():
    value = "v" * (4096 - len("BIG"))
    assert len(fn(fn_doc(environment={"BIG": value})).environment["BIG"]) == 4093
    refused(fn_doc(environment={"BIG": value + "v"}), "functions[0].environment",
            "exceeded the 4KB limit", "4097 bytes", "shorten or remove some")
    # counted in UTF-8 bytes, as Lambda measures 4 KB: "é" is two
    assert fn(fn_doc(environment={"A1": "é" * 2047})).environment["A1"] == "é" * 2047
    refused(fn_doc(environment={"A1": "é" * 2048}), "functions[0].environment",
            "exceeded the 4KB limit", "4098 bytes")


def test_unknown_function_key_suggests_the_new_ones():
    refused(fn_doc(runtim="python3.11"), "functions[0].runtim", "did you mean 'runtime'")
    refused(fn_doc(memory=256), "functions[0].memory", "memory_size")


# ---- a host's command --------------------------------------------------------------------------
def host_doc(**keys):
    doc = base_doc()
    doc["hosts"][0].update(keys)
    return doc


def test_a_string_command_runs_in_a_shell(tmp_path):
    doc = host_doc(command="python3 -m http.server 8080", environment={"AWS_REGION": "x"})
    cfg = lc.parse(doc, source="test", base_dir=str(tmp_path))
    assert cfg.hosts[0].command == ("/bin/sh", "-c", "python3 -m http.server 8080")
    (h,) = lc.resolve(cfg, "demo").hosts
    assert h.command == ["/bin/sh", "-c", "python3 -m http.server 8080"]
    assert h.environment == {"AWS_REGION": "x"}, "Lambda's reserved keys are Lambda's only"
    assert h.config_dir == str(tmp_path)


def test_an_array_command_is_the_argv(tmp_path):
    cfg = lc.parse(host_doc(command=["./db.sh", "--port", "5432"]), source="test",
                   base_dir=str(tmp_path))
    (h,) = lc.resolve(cfg, "demo").hosts
    assert (h.command, h.environment, h.config_dir) == (["./db.sh", "--port", "5432"], {},
                                                         str(tmp_path))


@pytest.mark.parametrize("command, field, words", [
    ("", "hosts[0].command", ["empty", "http.server"]),
    ("  ", "hosts[0].command", ["empty"]),
    ([], "hosts[0].command", ["empty array"]),
    ([""], "hosts[0].command[0]", ["the program to run"]),
    (["sleep", 5], "hosts[0].command[1]", ["must be a string"]),
    (5, "hosts[0].command", ["a string (run by /bin/sh -c) or an array of strings",
                             "not an integer"]),
])
def test_bad_commands(command, field, words):
    refused(host_doc(command=command), field, *words)


def test_host_environment():
    refused(host_doc(command="true", environment={"1X": "v"}), "hosts[0].environment",
            "rename it")
    refused(host_doc(command="true", environment={"PORT": 8080}), "hosts[0].environment.PORT",
            'quote it: PORT = "8080"')
    refused(host_doc(environment={"PORT": "8080"}), "hosts[0].environment",
            "the host has none", "add one")
    big = {"BIG": "x" * 5000}
    assert lc.resolve(parse(host_doc(command="true", environment=big)),
                      "demo").hosts[0].environment == big


def test_an_internet_host_runs_a_command_too(tmp_path):
    doc = example_doc("natgw.toml")
    doc["internet_hosts"][0].update(command=["python3", "-m", "http.server", "80"],
                                    environment={"MODE": "web"})
    p = lc.resolve(lc.parse(doc, source="test", base_dir=str(tmp_path)), "ex")
    (web,) = p.internet_hosts
    assert (web.command, web.environment, web.config_dir) == (
        ["python3", "-m", "http.server", "80"], {"MODE": "web"}, str(tmp_path))
    doc["internet_hosts"][0]["command"] = []
    refused(doc, "internet_hosts[0].command", "empty array")


# ---- the plan's JSON round trip ----------------------------------------------------------------
def test_plan_round_trip_with_code_and_commands(tmp_path):
    (tmp_path / "fn").mkdir()
    doc = fn_doc(runtime="provided.al2023", code="fn", timeout=30, memory_size=512,
                 environment={"DB_HOST": "198.18.1.5"})
    doc["hosts"][0].update(command="./db.sh", environment={"PORT": "5432"})
    p = lc.resolve(lc.parse(doc, source="test", base_dir=str(tmp_path)), "demo")
    d = json.loads(json.dumps(p.to_dict()))
    assert d["functions"][0] | {"envs": None} == {
        "name": "fn-a", "subnet_ids": ["subnet-a"], "security_group_ids": ["sg-0a1b2c3d"],
        "ipv6_allowed_for_dual_stack": True, "role": None, "envs": None,
        "runtime": "provided.al2023", "handler": "function.handler",
        "code": str(tmp_path / "fn"), "timeout": 30, "memory_size": 512,
        "environment": {"DB_HOST": "198.18.1.5"}}
    assert d["hosts"][0]["command"] == ["/bin/sh", "-c", "./db.sh"]
    assert (d["hosts"][0]["environment"], d["hosts"][0]["config_dir"]) == (
        {"PORT": "5432"}, str(tmp_path))
    assert lc.Plan.from_dict(d) == p


def test_from_dict_of_a_plan_written_before_code_and_commands():
    d = json.loads(json.dumps(lc.resolve(lc.default(), "demo").to_dict()))
    for f in d["functions"]:
        for key in ("runtime", "handler", "code", "timeout", "memory_size", "environment"):
            del f[key]
    for h in d["hosts"]:
        for key in ("command", "environment", "config_dir"):
            del h[key]
    p = lc.Plan.from_dict(d)
    f = p.function("fn-a")
    assert (f.runtime, f.handler, f.code, f.timeout, f.memory_size, f.environment) == (
        PY, "lambda_function.lambda_handler", None, 3, 128, {})
    h = p.host("server")
    assert (h.command, h.environment, h.config_dir) == (None, {}, None)
    assert p == lc.resolve(lc.default(), "demo")
