"""IAM: the permission checks Lambda makes when a function is attached to a VPC.

A small, faithful evaluator of AWS IAM *identity-based* policies, just big enough for the two
checks that ``CreateFunction`` and ``UpdateFunctionConfiguration`` make about a VpcConfig
(facts from the Lambda developer guide, "Configuring a Lambda function to access resources in a
VPC" and its section on IAM condition keys for VPC settings, and from the IAM User Guide):

1. **The caller** (here the lab user ``user/lab``) must be allowed ``lambda:CreateFunction`` /
   ``lambda:UpdateFunctionConfiguration`` on ``arn:aws:lambda:REGION:ACCOUNT:function:NAME``.
   The request carries three Lambda condition keys that policies can test:

   - ``lambda:VpcIds``: the VPC of the function's subnets (single-valued; it is not a request
     parameter, Lambda derives it from the subnets and security groups);
   - ``lambda:SubnetIds`` and ``lambda:SecurityGroupIds``: the VpcConfig's lists
     (multivalued: test them with ``ForAnyValue:`` / ``ForAllValues:``).

   A function without a VpcConfig sends none of the three keys, which is how the documented
   "only VPC-connected functions" policy works: ``Deny`` when ``Null: lambda:VpcIds = true``.
2. **The execution role** must grant ``ec2:CreateNetworkInterface``,
   ``ec2:DescribeNetworkInterfaces`` and ``ec2:DeleteNetworkInterface`` (the managed policy
   ``AWSLambdaVPCAccessExecutionRole`` does), or Lambda refuses the call with
   ``InvalidParameterValueException: The provided execution role does not have permissions to
   call CreateNetworkInterface on EC2``. These are needed to create and delete the Hyperplane
   ENIs only; invoking a function needs none of them.

Theory of operation (IAM "policy evaluation logic", identity-based policies only; no SCPs,
permission boundaries, session or resource-based policies are modelled):

- A statement *applies* to a request when its ``Action`` (or ``NotAction``) matches the action,
  its ``Resource`` (or ``NotResource``) matches the resource, and every condition is true.
- **An explicit Deny in any applying statement wins.** Otherwise an applying Allow allows.
  Otherwise the request is **implicitly denied** (nothing allowed it). Statement order and
  policy order never matter.
- Action names match case-insensitively, resource ARNs case-sensitively; both take the
  wildcards ``*`` (any run of characters) and ``?`` (one character).
- Conditions: operators in one ``Condition`` block are ANDed; the keys under one operator are
  ANDed; the values listed for one key are ORed, except for negated operators
  (``StringNotEquals``, ``StringNotLike``...), where they are NORed: the key must equal none of
  them. Condition key *names* are case-insensitive; ``StringEquals`` values are case-sensitive.
- A key absent from the request: ``StringEquals``/``StringLike`` are false, the negated
  operators are true, ``...IfExists`` operators are true, ``ForAnyValue:`` is false,
  ``ForAllValues:`` is **true** (every member of the empty set matches; pair it with
  ``Null: false`` when that is not what you want), ``Null: "true"`` is true.
- ``ForAnyValue:OP`` is true when at least one request value satisfies ``OP``;
  ``ForAllValues:OP`` when every request value does (so ``ForAllValues:StringEquals`` means
  "the request's set is a subset of the listed values").
- A plain (set-less) operator used on a multivalued key is something the IAM guide tells you
  not to write and leaves undefined. Our choice, applied consistently: a positive operator is
  true when *any* request value matches (as ``ForAnyValue:``), and a negated operator is the
  exact negation of its positive twin (true when *no* request value matches). An empty list in
  the request context counts as an absent key.

What is refused the way IAM refuses it (:class:`IamPolicyError`, naming the field path): an
``Effect`` other than ``Allow``/``Deny``, a statement without ``Action``/``NotAction`` or without
``Resource``/``NotResource`` (or with both of a pair), a ``Principal`` in an identity policy,
actions without a ``service:`` prefix, resources that are neither ``*`` nor an ARN, condition
keys without a prefix, non-alphanumeric or duplicate ``Sid`` values, unknown keys. Condition
operators this lab does not implement (``Numeric*``, ``Date*``, ``IpAddress``, ``Arn*``...) are
refused with that reason. Policy variables (``${aws:username}``) are not expanded.
"""
from __future__ import annotations

import difflib
import functools
import json
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from hyperplane.labconfig.fields import Key, Table

__all__ = [
    "IamPolicyError", "AccessDenied", "ENI_PERMISSIONS", "VPC_CONDITION_KEYS", "MANAGED_POLICIES",
    "POLICY_VERSIONS", "LAMBDA_VPC_ACTIONS", "validate_policy", "parse_iam_section", "evaluate",
    "vpc_context", "function_arn", "principal_arn", "check_vpc_config",
]

#: The execution-role permissions Lambda needs to manage a function's Hyperplane ENIs, in the
#: order Lambda checks them (its error names the first one missing).
ENI_PERMISSIONS: Tuple[str, ...] = (
    "ec2:CreateNetworkInterface",
    "ec2:DescribeNetworkInterfaces",
    "ec2:DeleteNetworkInterface",
)

#: The two Lambda API actions that take a VpcConfig and carry the VPC condition keys.
LAMBDA_VPC_ACTIONS: Tuple[str, ...] = ("lambda:CreateFunction", "lambda:UpdateFunctionConfiguration")

#: The Lambda condition keys for VPC settings.
VPC_CONDITION_KEYS: Tuple[str, ...] = ("lambda:VpcIds", "lambda:SubnetIds", "lambda:SecurityGroupIds")

#: Policy language versions IAM accepts. A policy without ``Version`` is read as 2008-10-17.
POLICY_VERSIONS: Tuple[str, ...] = ("2012-10-17", "2008-10-17")

#: AWS managed policies a config may attach by name or ARN (the statements as AWS publishes
#: them, policy version v3 of AWSLambdaVPCAccessExecutionRole).
MANAGED_POLICIES: Dict[str, Dict[str, Any]] = {
    "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole": {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "AWSLambdaVPCAccessExecutionPermissions",
            "Effect": "Allow",
            "Action": [
                "logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                "ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces",
                "ec2:DescribeSubnets", "ec2:DeleteNetworkInterface",
                "ec2:AssignPrivateIpAddresses", "ec2:UnassignPrivateIpAddresses",
            ],
            "Resource": "*",
        }],
    },
    "arn:aws:iam::aws:policy/service-role/AWSLambdaBasicExecutionRole": {
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Action": ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": "*",
        }],
    },
}
_MANAGED_BY_NAME = {arn.rsplit("/", 1)[1]: arn for arn in MANAGED_POLICIES}


class IamPolicyError(ValueError):
    """A policy document (or the ``[iam]`` table) is malformed. ``field`` is the path of the
    offending value (``iam.roles[0].policies[1].Statement[2].Effect``); the message says what
    is wrong and how to fix it."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class AccessDenied(Exception):
    """A refused API call, worded like the AWS error. ``code`` is the AWS error code
    (``AccessDeniedException``, ``InvalidParameterValueException``); ``statement`` names the
    statement that decided an explicit deny (its Sid, else its position), when there is one."""

    def __init__(self, code: str, message: str, *, action: str = "",
                 statement: Optional[str] = None):
        self.code = code
        self.message = message
        self.action = action
        self.statement = statement
        super().__init__(f"{code}: {message}")


# ---- condition operators ----------------------------------------------------------------------
@functools.lru_cache(maxsize=4096)
def _compiled_glob(pattern: str, ignore_case: bool) -> "re.Pattern[str]":
    """IAM wildcards: ``*`` matches any run of characters (also none), ``?`` exactly one."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(body, re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _glob(value: str, pattern: str, ignore_case: bool = False) -> bool:
    return _compiled_glob(pattern, ignore_case).fullmatch(value) is not None


#: Base operator -> (does one request value match one policy value?, negated?). A negated
#: operator is true for a value when the value matches NONE of the policy values (NOR).
_OPERATORS: Dict[str, Tuple[Callable[[str, str], bool], bool]] = {
    "StringEquals": (lambda v, p: v == p, False),
    "StringNotEquals": (lambda v, p: v == p, True),
    "StringEqualsIgnoreCase": (lambda v, p: v.casefold() == p.casefold(), False),
    "StringNotEqualsIgnoreCase": (lambda v, p: v.casefold() == p.casefold(), True),
    "StringLike": (lambda v, p: _glob(v, p), False),
    "StringNotLike": (lambda v, p: _glob(v, p), True),
    "Bool": (lambda v, p: v.lower() == p.lower(), False),
}
_SET_QUALIFIERS = ("ForAnyValue", "ForAllValues")
#: Valid IAM operators this lab does not evaluate: refused with a reason, not as typos.
_UNSUPPORTED = (
    "NumericEquals", "NumericNotEquals", "NumericLessThan", "NumericLessThanEquals",
    "NumericGreaterThan", "NumericGreaterThanEquals", "DateEquals", "DateNotEquals",
    "DateLessThan", "DateLessThanEquals", "DateGreaterThan", "DateGreaterThanEquals",
    "BinaryEquals", "IpAddress", "NotIpAddress", "ArnEquals", "ArnLike", "ArnNotEquals",
    "ArnNotLike",
)


def _split_operator(op: str) -> Tuple[Optional[str], str, bool]:
    """``"ForAllValues:StringEqualsIfExists"`` -> ``("ForAllValues", "StringEquals", True)``."""
    qualifier: Optional[str] = None
    base = op
    if ":" in op:
        qualifier, base = op.split(":", 1)
    if_exists = base.endswith("IfExists")
    if if_exists:
        base = base[: -len("IfExists")]
    return qualifier, base, if_exists


def _check_operator(op: str, where: str) -> None:
    qualifier, base, if_exists = _split_operator(op)
    known = sorted(_OPERATORS) + ["Null"]
    if qualifier is not None and qualifier not in _SET_QUALIFIERS:
        raise IamPolicyError(where, f"unknown set operator '{qualifier}:'; use ForAnyValue: or "
                             f"ForAllValues: (or no prefix for a single-valued key)")
    if base == "Null":
        if qualifier or if_exists:
            raise IamPolicyError(where, "Null takes no ForAnyValue:/ForAllValues: prefix and no "
                                 "IfExists suffix; write it as plain \"Null\"")
        return
    if base in _OPERATORS:
        return
    if base in _UNSUPPORTED:
        raise IamPolicyError(where, f"condition operator '{base}' is valid IAM but this lab "
                             f"does not evaluate it; use one of: {', '.join(known)}")
    folded = {k.lower(): k for k in known}
    close = folded.get(base.lower()) or next(iter(difflib.get_close_matches(base, known, n=1)),
                                             None)
    hint = f"did you mean '{close}'? " if close else ""
    raise IamPolicyError(where, f"unknown condition operator '{op}'; {hint}operators: "
                         f"{', '.join(known)}, each optionally prefixed ForAnyValue: or "
                         f"ForAllValues: or suffixed IfExists")


ContextValue = Union[None, str, Sequence[str]]


def _request_values(context: Mapping[str, ContextValue], key: str) -> Optional[List[str]]:
    """The request's values for ``key`` (key names are case-insensitive), or None when absent.
    An empty list is a null data set, the same as an absent key."""
    want = key.lower()
    for name, value in context.items():
        if name.lower() != want:
            continue
        if value is None:
            return None
        values = [value] if isinstance(value, str) else [str(v) for v in value]
        return values or None
    return None


def _key_matches(op: str, key: str, policy_values: Sequence[str],
                 context: Mapping[str, ContextValue]) -> bool:
    """One (operator, key, values) entry of a Condition block against the request context."""
    qualifier, base, if_exists = _split_operator(op)
    request = _request_values(context, key)
    if base == "Null":
        # "true": the key must be absent; "false": present. Several values are ORed.
        return any((p.lower() == "true") == (request is None) for p in policy_values)
    compare, negated = _OPERATORS[base]
    if request is None:
        if if_exists:
            return True
        if qualifier == "ForAllValues":
            return True        # vacuous truth: all members of the empty set match
        if qualifier == "ForAnyValue":
            return False       # no member to match
        return negated         # "is not equal to any of these" holds for a missing key

    def value_ok(value: str) -> bool:
        hit = any(compare(value, p) for p in policy_values)
        return not hit if negated else hit

    if qualifier == "ForAllValues":
        return all(value_ok(v) for v in request)
    if qualifier == "ForAnyValue":
        return any(value_ok(v) for v in request)
    # Plain operator (see the module docstring for the multivalued case).
    any_hit = any(any(compare(v, p) for p in policy_values) for v in request)
    return not any_hit if negated else any_hit


# ---- validation --------------------------------------------------------------------------------
_SID = re.compile(r"^[A-Za-z0-9]*$")
_ACTION = re.compile(r"^[A-Za-z0-9-]+:[A-Za-z0-9*?]+$")
_CONDITION_KEY = re.compile(r"^[A-Za-z0-9-]+:\S+$")
_ROLE_NAME = re.compile(r"^[\w+=,.@-]{1,64}$")
_STATEMENT_KEYS = ("Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition")
_POLICY_KEYS = ("Version", "Id", "Statement")


def _unknown_key(where: str, key: Any, known: Sequence[str]) -> IamPolicyError:
    close = difflib.get_close_matches(str(key), known, n=1)
    if not close:
        close = [k for k in known if k.lower() == str(key).lower()]
    hint = f"did you mean '{close[0]}'? " if close else ""
    return IamPolicyError(f"{where}.{key}", f"unknown key '{key}'; {hint}known keys: "
                          f"{', '.join(known)} (IAM key names are case-sensitive)")


def _string_list(value: Any, where: str, what: str) -> List[str]:
    """A string or a non-empty list of strings (the IAM grammar for Action/Resource)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise IamPolicyError(where, f"{what} must be a string or a non-empty list of strings, "
                             f"got {value!r}")
    for i, item in enumerate(items):
        if not isinstance(item, str) or not item:
            raise IamPolicyError(f"{where}[{i}]" if isinstance(value, list) else where,
                                 f"{what} entries must be non-empty strings, got {item!r}")
    return list(items)


def _condition_value(value: Any, where: str) -> str:
    """Condition values are strings in IAM; JSON/TOML booleans and numbers are read as text
    (``true`` -> ``"true"``), as IAM does."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, str):
        return value
    raise IamPolicyError(where, f"condition values must be strings, booleans or numbers, "
                         f"got {value!r}")


def _validate_condition(cond: Any, where: str) -> Dict[str, Dict[str, List[str]]]:
    if not isinstance(cond, dict) or not cond:
        raise IamPolicyError(where, "Condition must be a table of operator -> {key: values}, "
                             "e.g. {\"StringEquals\": {\"lambda:VpcIds\": \"vpc-1\"}}")
    out: Dict[str, Dict[str, List[str]]] = {}
    for op, block in cond.items():
        op_where = f"{where}.{op}"
        if not isinstance(op, str):
            raise IamPolicyError(where, f"condition operator names must be strings, got {op!r}")
        _check_operator(op, op_where)
        if not isinstance(block, dict) or not block:
            raise IamPolicyError(op_where, "must be a non-empty table of condition key -> "
                                 "value(s), e.g. {\"lambda:VpcIds\": [\"vpc-1\"]}")
        keys: Dict[str, List[str]] = {}
        for key, raw in block.items():
            key_where = f"{op_where}.{key}"
            if not isinstance(key, str) or not _CONDITION_KEY.match(key):
                raise IamPolicyError(key_where, f"condition key {key!r} must be prefixed by its "
                                     f"service, e.g. lambda:VpcIds or aws:SourceIp")
            items = raw if isinstance(raw, list) else [raw]
            if not items:
                raise IamPolicyError(key_where, "needs at least one value")
            values = [_condition_value(v, f"{key_where}[{i}]" if isinstance(raw, list)
                                       else key_where) for i, v in enumerate(items)]
            if op == "Null":
                for i, v in enumerate(values):
                    if v.lower() not in ("true", "false"):
                        raise IamPolicyError(key_where, f"Null takes \"true\" (key must be "
                                             f"absent) or \"false\" (key must be present), "
                                             f"got {v!r}")
            if _split_operator(op)[1] == "Bool":
                for v in values:
                    if v.lower() not in ("true", "false"):
                        raise IamPolicyError(key_where, f"Bool takes \"true\" or \"false\", "
                                             f"got {v!r}")
            keys[key] = values
        out[op] = keys
    return out


def _validate_statement(st: Any, where: str) -> Dict[str, Any]:
    if not isinstance(st, dict):
        raise IamPolicyError(where, f"a statement must be a table/object, got {st!r}")
    for key in st:
        if key in ("Principal", "NotPrincipal"):
            raise IamPolicyError(f"{where}.{key}", "an identity-based policy must not specify a "
                                 "principal (it applies to whoever it is attached to); remove "
                                 f"{key}")
        if key not in _STATEMENT_KEYS:
            raise _unknown_key(where, key, _STATEMENT_KEYS)
    out: Dict[str, Any] = {}
    if "Sid" in st:
        sid = st["Sid"]
        if not isinstance(sid, str) or not _SID.match(sid):
            raise IamPolicyError(f"{where}.Sid", f"Sid must contain only letters A-Z, a-z and "
                                 f"digits 0-9, got {sid!r}")
        out["Sid"] = sid
    effect = st.get("Effect")
    if effect not in ("Allow", "Deny"):
        if effect is None:
            raise IamPolicyError(f"{where}.Effect", "missing; add Effect = \"Allow\" or "
                                 "\"Deny\"")
        raise IamPolicyError(f"{where}.Effect", f"unknown Effect {effect!r}; use \"Allow\" or "
                             f"\"Deny\" (case-sensitive)")
    out["Effect"] = effect
    for pos, neg, what in (("Action", "NotAction", "action"),
                           ("Resource", "NotResource", "resource")):
        if pos in st and neg in st:
            raise IamPolicyError(f"{where}.{neg}", f"a statement takes {pos} or {neg}, not "
                                 f"both; remove one")
        name = pos if pos in st else neg if neg in st else None
        if name is None:
            example = '"lambda:CreateFunction"' if pos == "Action" else '"*"'
            raise IamPolicyError(f"{where}.{pos}", f"missing; every statement needs {pos} (or "
                                 f"{neg}), e.g. {pos} = {example}")
        items = _string_list(st[name], f"{where}.{name}", what)
        for i, item in enumerate(items):
            item_where = f"{where}.{name}[{i}]" if isinstance(st[name], list) else \
                f"{where}.{name}"
            if pos == "Action" and item != "*" and not _ACTION.match(item):
                raise IamPolicyError(item_where, f"action {item!r} must be \"*\" or "
                                     f"service:Action, e.g. \"lambda:CreateFunction\" or "
                                     f"\"ec2:*NetworkInterface*\"")
            if pos == "Resource" and item != "*" and not item.startswith("arn:"):
                raise IamPolicyError(item_where, f"resource {item!r} must be \"*\" or an ARN, "
                                     f"e.g. \"arn:aws:lambda:us-east-1:123456789012:function:*\"")
        out[name] = items
    if "Condition" in st:
        out["Condition"] = _validate_condition(st["Condition"], f"{where}.Condition")
    return out


def _managed_policy(name: str, field: str) -> Dict[str, Any]:
    arn = name if name in MANAGED_POLICIES else _MANAGED_BY_NAME.get(name)
    if arn is None:
        known = ", ".join(sorted(_MANAGED_BY_NAME))
        raise IamPolicyError(field, f"unknown managed policy {name!r}; this lab knows {known} "
                             f"(by name or ARN); write any other policy out as a document")
    return MANAGED_POLICIES[arn]


def validate_policy(doc: Any, field: str) -> Dict[str, Any]:
    """Check one policy document and return it normalised.

    ``doc`` is a dict (a TOML table or parsed JSON), a JSON string, or the name or ARN of a
    managed policy in :data:`MANAGED_POLICIES`. The result always has ``Version`` and a list
    ``Statement``; each statement has ``Effect``, ``Action``/``NotAction`` and
    ``Resource``/``NotResource`` as lists of strings, ``Condition`` (when given) as
    ``{operator: {key: [string values]}}`` and ``Sid`` when given. The normalised form is valid
    input again (validation is idempotent) and is plain JSON.
    """
    if isinstance(doc, str):
        text = doc.strip()
        if not text.startswith("{"):
            doc = _managed_policy(text, field)
        else:
            try:
                doc = json.loads(text)
            except json.JSONDecodeError as e:
                raise IamPolicyError(field, f"not valid JSON ({e.msg} at line {e.lineno} "
                                     f"column {e.colno}); fix the policy text") from None
    if not isinstance(doc, dict):
        raise IamPolicyError(field, f"a policy must be a table/JSON object with Version and "
                             f"Statement, got {type(doc).__name__}")
    for key in doc:
        if key not in _POLICY_KEYS:
            raise _unknown_key(field, key, _POLICY_KEYS)
    version = doc.get("Version", "2008-10-17")
    if version not in POLICY_VERSIONS:
        raise IamPolicyError(f"{field}.Version", f"unknown policy version {version!r}; use "
                             f"\"2012-10-17\"")
    out: Dict[str, Any] = {"Version": version}
    if "Id" in doc:
        if not isinstance(doc["Id"], str):
            raise IamPolicyError(f"{field}.Id", f"Id must be a string, got {doc['Id']!r}")
        out["Id"] = doc["Id"]
    if "Statement" not in doc:
        raise IamPolicyError(f"{field}.Statement", "missing; a policy needs at least one "
                             "statement")
    raw = doc["Statement"]
    if isinstance(raw, dict):
        statements = [_validate_statement(raw, f"{field}.Statement")]
    elif isinstance(raw, list) and raw:
        statements = [_validate_statement(st, f"{field}.Statement[{i}]")
                      for i, st in enumerate(raw)]
    else:
        raise IamPolicyError(f"{field}.Statement", f"must be a statement or a non-empty list "
                             f"of statements, got {raw!r}")
    seen: Dict[str, int] = {}
    for i, st in enumerate(statements):
        sid = st.get("Sid")
        if sid:
            if sid in seen:
                raise IamPolicyError(f"{field}.Statement[{i}].Sid", f"duplicate Sid {sid!r} "
                                     f"(also Statement[{seen[sid]}]); Sids in one policy must "
                                     f"be unique")
            seen[sid] = i
    out["Statement"] = statements
    return out


#: The [iam] table and its roles as the lab file writes them (hyperplane.labconfig.fields):
#: the keys parse_iam_section accepts, and the lab file's schema.
ROLE_TABLE = Table("[[iam.roles]]", "An execution role a function can name.", (
    Key("name", "string", "the role's name (1-64 of letters, digits and +=,.@_-)",
        required=True, pattern=_ROLE_NAME.pattern),
    Key("policies", "array", "policy documents or AWS managed policy names "
        '(e.g. "AWSLambdaVPCAccessExecutionRole")', items=Key(
            "policy", ("table", "string"), "a policy document or a managed policy name")),
))
IAM_TABLE = Table("[iam]", "IAM policies checked when each function's VpcConfig is created "
            "(lambda:CreateFunction), as AWS checks them.", (
    Key("identity_policies", "array", "the lab user's own policy documents (absent: not "
        "checked; [] denies every call)", items=Key("policy", "any", "a policy document "
                                                    "(Version, Statement)")),
    Key("roles", "array", "execution roles", items=ROLE_TABLE),
))


def parse_iam_section(table: Any, field: str = "iam") -> Dict[str, Any]:
    """Validate the lab config's ``[iam]`` table.

    Keys: ``identity_policies`` (optional list of policy documents: the lab user's own
    policies; absent means the caller is not checked, an empty list denies every call) and
    ``roles`` (optional list of ``{name = "...", policies = [...]}``: execution roles a
    function can name). Returns ``{"identity_policies": [normalised docs] | None,
    "roles": {name: [normalised docs]}}``.
    """
    if not isinstance(table, dict):
        raise IamPolicyError(field, f"must be a table, got {type(table).__name__}")
    known = IAM_TABLE.names
    for key in table:
        if key not in known:
            raise _unknown_key(field, key, known)
    identity: Optional[List[Dict[str, Any]]] = None
    if "identity_policies" in table:
        docs = table["identity_policies"]
        where = f"{field}.identity_policies"
        if not isinstance(docs, list):
            raise IamPolicyError(where, "must be a list of policy documents, e.g. "
                                 "identity_policies = [{ Version = \"2012-10-17\", "
                                 "Statement = [...] }]")
        identity = [validate_policy(d, f"{where}[{i}]") for i, d in enumerate(docs)]
    roles: Dict[str, List[Dict[str, Any]]] = {}
    raw_roles = table.get("roles", [])
    if not isinstance(raw_roles, list):
        raise IamPolicyError(f"{field}.roles", "must be a list of tables, e.g. "
                             "[[iam.roles]] name = \"lab-role\" policies = [...]")
    for i, role in enumerate(raw_roles):
        where = f"{field}.roles[{i}]"
        if not isinstance(role, dict):
            raise IamPolicyError(where, "a role must be a table with name and policies")
        for key in role:
            if key not in ROLE_TABLE.names:
                raise _unknown_key(where, key, ROLE_TABLE.names)
        name = role.get("name")
        if not isinstance(name, str) or not _ROLE_NAME.match(name):
            raise IamPolicyError(f"{where}.name", f"a role needs a name of 1-64 letters, digits "
                                 f"or +=,.@_- characters, got {name!r}")
        if name in roles:
            raise IamPolicyError(f"{where}.name", f"duplicate role name {name!r}; role names "
                                 f"must be unique")
        docs = role.get("policies", [])
        if not isinstance(docs, list):
            raise IamPolicyError(f"{where}.policies", "must be a list of policy documents or "
                                 "managed policy names, e.g. "
                                 "[\"AWSLambdaVPCAccessExecutionRole\"]")
        roles[name] = [validate_policy(d, f"{where}.policies[{j}]") for j, d in enumerate(docs)]
    return {"identity_policies": identity, "roles": roles}


# ---- evaluation --------------------------------------------------------------------------------
def _statement_applies(st: Dict[str, Any], action: str, resource: str,
                       context: Mapping[str, ContextValue]) -> bool:
    if "Action" in st:
        if not any(_glob(action, p, ignore_case=True) for p in st["Action"]):
            return False
    elif any(_glob(action, p, ignore_case=True) for p in st["NotAction"]):
        return False
    if "Resource" in st:
        if not any(_glob(resource, p) for p in st["Resource"]):
            return False
    elif any(_glob(resource, p) for p in st["NotResource"]):
        return False
    for op, keys in st.get("Condition", {}).items():
        for key, values in keys.items():
            if not _key_matches(op, key, values, context):
                return False
    return True


def evaluate(policies: Sequence[Dict[str, Any]], action: str, resource: str,
             context: Mapping[str, ContextValue]) -> Tuple[str, Optional[str]]:
    """Decide one request against identity policies, as IAM does.

    Returns ``("Allow" | "ExplicitDeny" | "ImplicitDeny", deciding statement)``: the Sid of the
    first applying Deny (for ExplicitDeny) or Allow (for Allow), or its position
    ``policies[P].Statement[S]`` when it has no Sid; None for ImplicitDeny.
    ``context`` maps condition keys to a string (single-valued), a list of strings
    (multivalued), or None (absent).
    """
    allowed_by: Optional[str] = None
    for p, doc in enumerate(policies):
        policy = validate_policy(doc, f"policies[{p}]")
        for s, st in enumerate(policy["Statement"]):
            if not _statement_applies(st, action, resource, context):
                continue
            label = st.get("Sid") or f"policies[{p}].Statement[{s}]"
            if st["Effect"] == "Deny":
                return "ExplicitDeny", label
            if allowed_by is None:
                allowed_by = label
    if allowed_by is not None:
        return "Allow", allowed_by
    return "ImplicitDeny", None


def vpc_context(vpc_id: Optional[str], subnet_ids: Sequence[str],
                security_group_ids: Sequence[str]) -> Dict[str, ContextValue]:
    """The request context Lambda builds from a VpcConfig. Without subnets there is no VPC
    attachment, so none of the keys is present (``Null: lambda:VpcIds = true`` holds)."""
    if not subnet_ids:
        return {}
    ctx: Dict[str, ContextValue] = {"lambda:SubnetIds": list(subnet_ids)}
    if vpc_id:
        ctx["lambda:VpcIds"] = vpc_id
    if security_group_ids:
        ctx["lambda:SecurityGroupIds"] = list(security_group_ids)
    return ctx


def function_arn(function_name: str, region: str, account_id: str) -> str:
    return f"arn:aws:lambda:{region}:{account_id}:function:{function_name}"


def principal_arn(principal: str, account_id: str) -> str:
    """``user/lab`` -> ``arn:aws:iam::ACCOUNT:user/lab``; a full ARN is kept as given."""
    return principal if principal.startswith("arn:") else f"arn:aws:iam::{account_id}:{principal}"


def check_vpc_config(*, action: str, function_name: str, region: str = "us-east-1",
                     account_id: str, principal: str = "user/lab",
                     identity_policies: Optional[Sequence[Dict[str, Any]]],
                     role_name: Optional[str], role_policies: Optional[Sequence[Dict[str, Any]]],
                     vpc_id: Optional[str], subnet_ids: Sequence[str],
                     security_group_ids: Sequence[str]) -> None:
    """The IAM checks of ``CreateFunction`` / ``UpdateFunctionConfiguration`` for a VpcConfig.
    Returns None when the call may proceed, raises :class:`AccessDenied` otherwise.

    1. The caller: skipped when ``identity_policies`` is None; otherwise ``action`` on the
       function's ARN with the VPC condition keys (:func:`vpc_context`) must be allowed.
    2. The execution role: a ``role_name`` without policies (``role_policies`` None) is a role
       that does not exist, which Lambda reports as a role it cannot assume. With ``subnet_ids``
       and ``role_policies`` given, every :data:`ENI_PERMISSIONS` action must be allowed on
       ``*``; Lambda names the first one missing. (Simplification: a role statement scoped to
       particular network-interface or subnet ARNs does not count as granting them here.)

    The identity check comes first, as in AWS: a caller who may not make the call learns
    nothing about the role.
    """
    if action not in LAMBDA_VPC_ACTIONS:
        raise ValueError(f"action must be one of {', '.join(LAMBDA_VPC_ACTIONS)}, got {action!r}")
    if identity_policies is not None:
        resource = function_arn(function_name, region, account_id)
        decision, by = evaluate(identity_policies, action, resource,
                                vpc_context(vpc_id, subnet_ids, security_group_ids))
        who = f"User: {principal_arn(principal, account_id)} is not authorized to perform: " \
              f"{action} on resource: {resource}"
        if decision == "ExplicitDeny":
            raise AccessDenied("AccessDeniedException",
                               f"{who} with an explicit deny in an identity-based policy",
                               action=action, statement=by)
        if decision == "ImplicitDeny":
            raise AccessDenied("AccessDeniedException",
                               f"{who} because no identity-based policy allows the {action} "
                               f"action", action=action)
    if role_name is not None and role_policies is None:
        raise AccessDenied("InvalidParameterValueException",
                           "The role defined for the function cannot be assumed by Lambda.",
                           action=action)
    if subnet_ids and role_policies is not None:
        for permission in ENI_PERMISSIONS:
            decision, by = evaluate(role_policies, permission, "*", {})
            if decision != "Allow":
                call = permission.split(":", 1)[1]
                raise AccessDenied("InvalidParameterValueException",
                                   f"The provided execution role does not have permissions to "
                                   f"call {call} on EC2", action=permission, statement=by)
