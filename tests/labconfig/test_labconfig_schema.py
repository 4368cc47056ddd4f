"""The lab file's model (hyperplane.labconfig.fields) and the JSON Schema made from it: the
schema is a valid draft 2020-12 schema, every shipped lab file passes it, an unknown key is
refused by the schema and the loader alike, and every table the loader reads is in the model
(so the schema cannot miss one). Pure Python: no privileges."""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import jsonschema
import pytest

from hyperplane import labconfig as lc
from hyperplane.labconfig import fields
from hyperplane.labconfig.loading import LAB_FILE
from kit import REPO
from kit.labdocs import EXAMPLES, base_doc, refused
from kit.labs import NATGW

try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib

SCHEMA = fields.json_schema(LAB_FILE)
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

#: Every full lab file the repository ships: the default lab, the examples, the bench's lab.
SHIPPED = {"<default>": lc.default_text(), "kit.labs.NATGW": NATGW,
           "hyperplane/bench/bench_lab.toml":
               (Path(REPO) / "hyperplane/bench/bench_lab.toml").read_text()}
SHIPPED.update({str(p.relative_to(REPO)): p.read_text()
                for p in sorted(EXAMPLES.rglob("*.toml"))})


def schema_errors(doc):
    return [f"{e.json_path}: {e.message}" for e in VALIDATOR.iter_errors(doc)]


def test_the_schema_is_valid_draft_2020_12():
    jsonschema.Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA["$id"] and SCHEMA["title"] and SCHEMA["required"] == ["vpc"]


def test_every_table_refuses_unknown_keys_and_says_what_it_is():
    def tables(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                yield node
            for v in node.values():
                yield from tables(v)
        elif isinstance(node, list):
            for v in node:
                yield from tables(v)
    found = list(tables(SCHEMA))
    assert {t["title"] for t in found} == {t.title for t in fields.walk(LAB_FILE)}
    for t in found:
        assert t["additionalProperties"] is False, t["title"]
        assert t["description"], t["title"]
        for name, prop in t["properties"].items():
            assert prop.get("description"), f"{t['title']}.{name} has no description"


def test_enums_and_ranges_come_from_the_loaders_constants():
    fn = SCHEMA["properties"]["functions"]["items"]["properties"]
    assert fn["environments"]["items"]["enum"] == list(lc.ATTACH_KINDS)
    assert (fn["timeout"]["minimum"], fn["timeout"]["maximum"]) == (1, 900)
    assert fn["memory_size"]["maximum"] == 10240
    life = SCHEMA["properties"]["lifecycle"]["properties"]
    assert life["profile"]["enum"] == list(lc.LIFECYCLE_PROFILES)
    assert re.match(fn["runtime"]["pattern"], "python3.12")
    assert re.match(fn["runtime"]["pattern"], "provided.al2023")
    assert not re.match(fn["runtime"]["pattern"], "nodejs20.x")


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_every_shipped_lab_passes_the_schema_and_the_loader(name):
    doc = tomllib.loads(SHIPPED[name])
    assert schema_errors(doc) == []
    if name.startswith("examples"):
        lc.load(Path(REPO) / name)
    else:
        lc.loads(SHIPPED[name], source=name)


def test_the_example_files_name_the_schema():
    for p in sorted(EXAMPLES.rglob("*.toml")):
        first, blank = p.read_text().splitlines()[:2]
        assert first.startswith("#:schema ") and blank == "", p
        target = (p.parent / first.split(" ", 1)[1]).resolve()
        assert target == Path(REPO) / "docs" / "lab.schema.json", p


@pytest.mark.parametrize("where, field", [
    ((), "colour"),
    (("vpc",), "vpc.colour"),
    (("subnets", 0), "subnets[0].colour"),
    (("functions", 0, "vpc_config"), "functions[0].vpc_config.colour"),
    (("security_groups", 0), "security_groups[0].colour"),
])
def test_an_unknown_key_is_refused_by_the_schema_and_the_loader(where, field):
    doc = base_doc()
    table = doc
    for step in where:
        table = table[step]
    table["colour"] = "blue"
    errors = schema_errors(doc)
    assert len(errors) == 1 and "'colour' was unexpected" in errors[0], errors
    refused(doc, field, "unknown key 'colour'")


def test_a_nested_rule_with_an_unknown_key_is_refused_by_both():
    doc = base_doc()
    doc["security_groups"][0]["egress"] = [{"protocol": "tcp", "from_port": 1, "to_port": 2,
                                             "cidr": "0.0.0.0/0", "port": 3}]
    assert any("'port' was unexpected" in e for e in schema_errors(doc))
    refused(doc, "security_groups[0].egress[0].port", "unknown key 'port'")


def test_a_missing_required_key_is_refused_by_both():
    doc = base_doc()
    del doc["subnets"][0]["cidr"]
    assert any("'cidr' is a required property" in e for e in schema_errors(doc))
    refused(doc, "subnets[0].cidr", "missing")


def test_schema_and_loader_agree_on_bad_enum_and_range_values():
    for path, value, field in [(("functions", 0, "environments"), ["wire"],
                                "functions[0].environments[0]"),
                               (("functions", 0, "timeout"), 901, "functions[0].timeout")]:
        doc = base_doc()
        table = doc
        for step in path[:-1]:
            table = table[step]
        table[path[-1]] = value
        assert schema_errors(doc), path
        refused(doc, field)


# ---- the model covers everything the loader reads -------------------------------------------
LABCONFIG = Path(REPO) / "hyperplane" / "labconfig"


def test_every_table_the_loader_reads_is_in_the_model():
    """check_keys is how the loader reads a table's keys: each call must name a Table of the
    model (not a list of names the schema would not know), and each Table must hang under
    loading.LAB_FILE. A new section: declare its Table and add one Key line to LAB_FILE."""
    missing = []
    for path in sorted(LABCONFIG.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "check_keys":
                known = node.args[2] if len(node.args) > 2 else None
                if not isinstance(known, (ast.Name, ast.Attribute)):
                    missing.append(f"{path.name}:{node.lineno}: check_keys(..., "
                                   f"{ast.unparse(node.args[1])}, [...]) has no model entry: "
                                   "declare a fields.Table and pass it")
    reachable = {id(t) for t in fields.walk(LAB_FILE)}
    for path in sorted(LABCONFIG.glob("*.py")):
        mod = importlib.import_module(f"hyperplane.labconfig.{path.stem}")
        for name, value in vars(mod).items():
            if isinstance(value, fields.Table) and id(value) not in reachable:
                missing.append(f"{path.name}: {name} ({value.title}) is not under "
                               "loading.LAB_FILE: add a Key(...) line for it")
    assert not missing, "\n".join(missing)




def _doc_blocks():
    for path in [Path(REPO) / "README.md", *sorted((Path(REPO) / "docs").glob("*.md"))]:
        for m in re.finditer(r"```toml\n(.*?)```", path.read_text(), re.S):
            try:
                yield path.name, tomllib.loads(m.group(1))
            except tomllib.TOMLDecodeError:
                continue   # an excerpt with "..." in it


def test_the_lab_file_excerpts_of_the_docs_use_only_known_keys():
    blocks = list(_doc_blocks())
    assert len(blocks) >= 5, blocks
    for name, doc in blocks:
        doc.setdefault("vpc", {"cidr": "198.18.0.0/16"})   # an excerpt may leave it out
        assert schema_errors(doc) == [], name
