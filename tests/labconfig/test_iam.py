"""IAM checks for VPC settings (hyperplane.labconfig.iam): the example policies of the Lambda guide's
"IAM condition keys for VPC settings" section, each with a request it allows and one it denies;
IAM's evaluation rules (explicit deny wins, implicit deny, wildcards, condition semantics);
the execution role's ENI permissions; malformed policies refused with the exact field path.
Pure Python: no privileges, no namespaces."""
from __future__ import annotations

import json
import random

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from hyperplane.labconfig import iam
from hyperplane.labconfig.iam import AccessDenied, IamPolicyError, check_vpc_config, evaluate

ACCOUNT = "123456789012"
CREATE = "lambda:CreateFunction"
UPDATE = "lambda:UpdateFunctionConfiguration"
FN_ARN = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:fn-a"
VPC_ACTIONS = [CREATE, UPDATE]


def policy(*statements):
    return {"Version": "2012-10-17", "Statement": list(statements)}


def stmt(effect, condition=None, sid=None, action=None, resource="*"):
    s = {"Effect": effect, "Action": action or VPC_ACTIONS, "Resource": resource}
    if sid:
        s["Sid"] = sid
    if condition:
        s["Condition"] = condition
    return s


ALLOW_ALL_LAMBDA = policy(stmt("Allow", sid="AllowLambda", action="lambda:*"))


def ctx(vpc=None, subnets=(), sgs=()):
    return iam.vpc_context(vpc, list(subnets), list(sgs))


def decide(policies, context, action=CREATE, resource=FN_ARN):
    return evaluate(policies, action, resource, context)[0]


# ---- the Lambda guide's example policies, as fixtures ---------------------------------------
# Each example is a Deny or a restricting Allow; the Deny examples are evaluated together with
# an Allow for every Lambda action (as they would be in a real account), the Allow examples on
# their own.
@pytest.fixture
def enforce_vpc_function():
    """Only VPC-connected functions: deny when lambda:VpcIds is absent."""
    return [ALLOW_ALL_LAMBDA, policy(stmt("Deny", {"Null": {"lambda:VpcIds": "true"}},
                                          sid="EnforceVPCFunction"))]


@pytest.fixture
def deny_vpcs():
    return [ALLOW_ALL_LAMBDA, policy(stmt(
        "Deny", {"StringEquals": {"lambda:VpcIds": ["vpc-1", "vpc-2"]}}, sid="EnforceOutOfVPC"))]


@pytest.fixture
def deny_subnets():
    return [ALLOW_ALL_LAMBDA, policy(stmt(
        "Deny", {"ForAnyValue:StringEquals": {"lambda:SubnetIds": ["subnet-1", "subnet-2"]}},
        sid="EnforceOutOfSubnet"))]


@pytest.fixture
def deny_security_groups():
    return [ALLOW_ALL_LAMBDA, policy(stmt(
        "Deny", {"ForAnyValue:StringEquals": {"lambda:SecurityGroupIds": ["sg-1", "sg-2"]}},
        sid="EnforceOutOfSecurityGroups"))]


@pytest.fixture
def allow_vpcs():
    return [policy(stmt("Allow", {"StringEquals": {"lambda:VpcIds": ["vpc-1", "vpc-2"]}},
                        sid="EnforceStayInSpecificVpc"))]


@pytest.fixture
def allow_subnets():
    return [policy(stmt(
        "Allow", {"ForAllValues:StringEquals": {"lambda:SubnetIds": ["subnet-1", "subnet-2"]}},
        sid="EnforceStayInSpecificSubnets"))]


@pytest.fixture
def allow_security_groups():
    return [policy(stmt(
        "Allow", {"ForAllValues:StringEquals": {"lambda:SecurityGroupIds": ["sg-1", "sg-2"]}},
        sid="EnforceStayInSpecificSecurityGroup"))]


@pytest.mark.parametrize("action", VPC_ACTIONS)
def test_example_enforce_vpc_function(enforce_vpc_function, action):
    assert decide(enforce_vpc_function, ctx("vpc-1", ["subnet-1"], ["sg-1"]), action) == "Allow"
    assert evaluate(enforce_vpc_function, action, FN_ARN, ctx()) == (
        "ExplicitDeny", "EnforceVPCFunction")
    # A function detached from its VPC (empty subnet list) carries no keys either.
    assert decide(enforce_vpc_function, ctx("vpc-1", [], ["sg-1"]), action) == "ExplicitDeny"


def test_example_deny_vpcs(deny_vpcs):
    assert decide(deny_vpcs, ctx("vpc-3", ["subnet-9"], ["sg-9"])) == "Allow"
    assert decide(deny_vpcs, ctx("vpc-2", ["subnet-9"], ["sg-9"])) == "ExplicitDeny"
    assert decide(deny_vpcs, ctx("vpc-1", ["subnet-9"], ["sg-9"]), UPDATE) == "ExplicitDeny"
    # StringEquals is case-sensitive, and a function outside any VPC is not denied by it.
    assert decide(deny_vpcs, ctx("VPC-1", ["subnet-9"], ["sg-9"])) == "Allow"
    assert decide(deny_vpcs, ctx()) == "Allow"


def test_example_deny_subnets(deny_subnets):
    assert decide(deny_subnets, ctx("vpc-1", ["subnet-3", "subnet-4"], ["sg-1"])) == "Allow"
    # One forbidden subnet among allowed ones is enough to deny (ForAnyValue).
    assert evaluate(deny_subnets, CREATE, FN_ARN, ctx("vpc-1", ["subnet-3", "subnet-2"])) == (
        "ExplicitDeny", "EnforceOutOfSubnet")
    assert decide(deny_subnets, ctx()) == "Allow"


def test_example_deny_security_groups(deny_security_groups):
    assert decide(deny_security_groups, ctx("vpc-1", ["subnet-1"], ["sg-3"])) == "Allow"
    assert decide(deny_security_groups, ctx("vpc-1", ["subnet-1"], ["sg-3", "sg-1"])) == \
        "ExplicitDeny"


def test_example_allow_vpcs(allow_vpcs):
    assert decide(allow_vpcs, ctx("vpc-2", ["subnet-1"], ["sg-1"])) == "Allow"
    assert decide(allow_vpcs, ctx("vpc-3", ["subnet-1"], ["sg-1"])) == "ImplicitDeny"
    # No VPC: the key is absent, StringEquals is false, nothing allows the call.
    assert decide(allow_vpcs, ctx()) == "ImplicitDeny"


def test_example_allow_subnets(allow_subnets):
    assert decide(allow_subnets, ctx("vpc-1", ["subnet-1"], ["sg-1"])) == "Allow"
    assert decide(allow_subnets, ctx("vpc-1", ["subnet-2", "subnet-1"], ["sg-1"])) == "Allow"
    # Every subnet must be in the list (ForAllValues: the request set is a subset).
    assert decide(allow_subnets, ctx("vpc-1", ["subnet-1", "subnet-3"], ["sg-1"])) == \
        "ImplicitDeny"


def test_example_allow_security_groups(allow_security_groups):
    assert decide(allow_security_groups, ctx("vpc-1", ["subnet-1"], ["sg-1", "sg-2"])) == "Allow"
    assert decide(allow_security_groups, ctx("vpc-1", ["subnet-1"], ["sg-4"])) == "ImplicitDeny"


def test_forallvalues_allows_a_function_without_vpc_unless_paired_with_null(allow_subnets,
                                                                             enforce_vpc_function):
    """IAM's documented trap: ForAllValues over an absent key is true (empty set), so the
    'allow specific subnets' example alone also allows a function with no VPC at all. The
    'only VPC-connected functions' deny closes that gap."""
    assert decide(allow_subnets, ctx()) == "Allow"
    both = allow_subnets + [enforce_vpc_function[1]]
    assert decide(both, ctx()) == "ExplicitDeny"
    assert decide(both, ctx("vpc-1", ["subnet-1"], ["sg-1"])) == "Allow"
    assert decide(both, ctx("vpc-1", ["subnet-7"], ["sg-1"])) == "ImplicitDeny"


# ---- IAM evaluation rules ------------------------------------------------------------------
def test_explicit_deny_beats_allow_in_any_order():
    allow = stmt("Allow", sid="Yes", action="lambda:*")
    deny = stmt("Deny", {"StringEquals": {"lambda:VpcIds": "vpc-1"}}, sid="No")
    c = ctx("vpc-1", ["subnet-1"])
    assert evaluate([policy(allow, deny)], CREATE, FN_ARN, c) == ("ExplicitDeny", "No")
    assert evaluate([policy(deny, allow)], CREATE, FN_ARN, c) == ("ExplicitDeny", "No")
    assert evaluate([policy(deny), policy(allow)], CREATE, FN_ARN, c) == ("ExplicitDeny", "No")
    assert evaluate([policy(allow, deny)], CREATE, FN_ARN, ctx("vpc-9", ["subnet-1"])) == (
        "Allow", "Yes")


def test_implicit_deny():
    assert evaluate([], CREATE, FN_ARN, {}) == ("ImplicitDeny", None)
    only_update = policy(stmt("Allow", action=UPDATE))
    assert evaluate([only_update], CREATE, FN_ARN, {}) == ("ImplicitDeny", None)
    # A Deny that does not apply does not allow anything either.
    assert decide([policy(stmt("Deny", action="s3:*"))], {}) == "ImplicitDeny"


def test_statement_without_sid_is_named_by_position():
    pols = [ALLOW_ALL_LAMBDA, policy(stmt("Allow", action="s3:*"), stmt("Deny", action=CREATE))]
    assert evaluate(pols, CREATE, FN_ARN, {}) == ("ExplicitDeny", "policies[1].Statement[1]")


@pytest.mark.parametrize("pattern,action,hit", [
    ("lambda:*", CREATE, True),
    ("LAMBDA:createfunction", CREATE, True),            # actions are case-insensitive
    ("lambda:Create*", UPDATE, False),
    ("lambda:*Function*", UPDATE, True),
    ("ec2:*NetworkInterface*", "ec2:DescribeNetworkInterfaces", True),
    ("ec2:*NetworkInterface*", "ec2:DescribeSubnets", False),
    ("ec2:?eleteNetworkInterface", "ec2:DeleteNetworkInterface", True),
    ("ec2:?NetworkInterface", "ec2:DeleteNetworkInterface", False),
    ("*", "ec2:DeleteNetworkInterface", True),
    ("s3:*", CREATE, False),
])
def test_action_wildcards(pattern, action, hit):
    result = decide([policy(stmt("Allow", action=pattern))], {}, action=action)
    assert result == ("Allow" if hit else "ImplicitDeny")


@pytest.mark.parametrize("pattern,hit", [
    ("*", True),
    (f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:fn-*", True),
    (f"arn:aws:lambda:*:{ACCOUNT}:function:fn-?", True),
    (f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:FN-A", False),   # ARNs are case-sensitive
    (f"arn:aws:lambda:us-west-2:{ACCOUNT}:function:*", False),
    ("arn:aws:lambda:us-east-1:999999999999:function:fn-a", False),
])
def test_resource_wildcards(pattern, hit):
    result = decide([policy(stmt("Allow", resource=pattern))], {})
    assert result == ("Allow" if hit else "ImplicitDeny")


def test_not_action_and_not_resource():
    everything_but_lambda = policy({"Effect": "Allow", "NotAction": "lambda:*", "Resource": "*"})
    assert decide([everything_but_lambda], {}) == "ImplicitDeny"
    assert decide([everything_but_lambda], {}, action="ec2:CreateNetworkInterface") == "Allow"
    not_fn_b = policy({"Effect": "Deny", "Action": "lambda:*",
                       "NotResource": "arn:aws:lambda:*:*:function:fn-b"})
    assert decide([ALLOW_ALL_LAMBDA, not_fn_b], {}) == "ExplicitDeny"
    fn_b = f"arn:aws:lambda:us-east-1:{ACCOUNT}:function:fn-b"
    assert decide([ALLOW_ALL_LAMBDA, not_fn_b], {}, resource=fn_b) == "Allow"


# ---- condition semantics ---------------------------------------------------------------------
def matches(op, key, values, context):
    """Whether an Allow with this single condition applies to the request."""
    return decide([policy(stmt("Allow", {op: {key: values}}))], context) == "Allow"


SUBNETS = "lambda:SubnetIds"


@pytest.mark.parametrize("op,values,request_value,expected", [
    # missing key
    ("StringEquals", ["a"], None, False),
    ("StringNotEquals", ["a"], None, True),
    ("StringEqualsIfExists", ["a"], None, True),
    ("ForAnyValue:StringEquals", ["a"], None, False),
    ("ForAllValues:StringEquals", ["a"], None, True),
    ("ForAllValues:StringNotEquals", ["a"], None, True),
    ("Null", ["true"], None, True),
    ("Null", ["false"], None, False),
    # empty list = null data set
    ("ForAnyValue:StringEquals", ["a"], [], False),
    ("ForAllValues:StringEquals", ["a"], [], True),
    ("Null", ["true"], [], True),
    # present
    ("Null", ["true"], ["a"], False),
    ("Null", [False], ["a"], True),                         # bool value read as "false"
    ("ForAnyValue:StringEquals", ["a", "b"], ["c", "b"], True),
    ("ForAnyValue:StringEquals", ["a", "b"], ["c", "d"], False),
    ("ForAllValues:StringEquals", ["a", "b"], ["a", "b"], True),
    ("ForAllValues:StringEquals", ["a", "b"], ["a", "c"], False),
    ("ForAnyValue:StringNotEquals", ["a"], ["a", "c"], True),   # c is not a
    ("ForAnyValue:StringNotEquals", ["a"], ["a"], False),
    ("ForAllValues:StringNotEquals", ["a", "b"], ["c", "d"], True),
    ("ForAllValues:StringNotEquals", ["a", "b"], ["c", "b"], False),
    ("ForAllValues:StringLike", ["subnet-0*"], ["subnet-01", "subnet-02"], True),
    ("ForAllValues:StringLike", ["subnet-0*"], ["subnet-01", "subnet-12"], False),
    ("ForAnyValue:StringEqualsIgnoreCase", ["SUBNET-1"], ["subnet-1"], True),
    ("ForAnyValue:StringEquals", ["SUBNET-1"], ["subnet-1"], False),
    # plain operator on a multivalued key: documented choice (any value matches / none does)
    ("StringEquals", ["a"], ["b", "a"], True),
    ("StringEquals", ["a"], ["b", "c"], False),
    ("StringNotEquals", ["a"], ["b", "a"], False),
    ("StringNotEquals", ["a"], ["b", "c"], True),
])
def test_condition_operators_on_a_multivalued_key(op, values, request_value, expected):
    context = {} if request_value is None else {SUBNETS: request_value}
    assert matches(op, SUBNETS, values, context) is expected


@pytest.mark.parametrize("op,values,vpc,expected", [
    ("StringEquals", ["vpc-1", "vpc-2"], "vpc-2", True),       # values ORed
    ("StringNotEquals", ["vpc-1", "vpc-2"], "vpc-2", False),   # negated: values NORed
    ("StringNotEquals", ["vpc-1", "vpc-2"], "vpc-3", True),
    ("StringLike", ["vpc-?"], "vpc-7", True),
    ("StringLike", ["vpc-?"], "vpc-77", False),
    ("StringNotLike", ["vpc-0*"], "vpc-1", True),
    ("StringEqualsIgnoreCase", ["VPC-1"], "vpc-1", True),
    ("StringNotEqualsIgnoreCase", ["VPC-1"], "vpc-1", False),
])
def test_condition_operators_on_a_single_valued_key(op, values, vpc, expected):
    assert matches(op, "lambda:VpcIds", values, {"lambda:VpcIds": vpc}) is expected


def test_condition_key_names_are_case_insensitive_but_values_are_not():
    assert matches("StringEquals", "Lambda:VPCIDS", "vpc-1", {"lambda:VpcIds": "vpc-1"})
    assert not matches("StringEquals", "lambda:VpcIds", "vpc-1", {"lambda:VpcIds": "VPC-1"})


def test_keys_and_operators_are_anded():
    cond = {"StringEquals": {"lambda:VpcIds": "vpc-1"},
            "ForAllValues:StringEquals": {"lambda:SubnetIds": ["subnet-1", "subnet-2"],
                                          "lambda:SecurityGroupIds": ["sg-1"]}}
    pols = [policy(stmt("Allow", cond))]
    assert decide(pols, ctx("vpc-1", ["subnet-2"], ["sg-1"])) == "Allow"
    assert decide(pols, ctx("vpc-2", ["subnet-2"], ["sg-1"])) == "ImplicitDeny"  # operator 1
    assert decide(pols, ctx("vpc-1", ["subnet-3"], ["sg-1"])) == "ImplicitDeny"  # key 1
    assert decide(pols, ctx("vpc-1", ["subnet-2"], ["sg-2"])) == "ImplicitDeny"  # key 2


# ---- property tests ----------------------------------------------------------------------------
IDS = st.sampled_from(["subnet-1", "subnet-2", "subnet-3", "subnet-4"])
ID_LISTS = st.lists(IDS, max_size=4)


@settings(max_examples=200, deadline=None)
@given(request=ID_LISTS, listed=st.lists(IDS, min_size=1, max_size=4))
def test_set_operators_are_subset_and_intersection(request, listed):
    context = {SUBNETS: request}
    assert matches("ForAllValues:StringEquals", SUBNETS, listed, context) is \
        set(request).issubset(listed)
    assert matches("ForAnyValue:StringEquals", SUBNETS, listed, context) is \
        bool(set(request) & set(listed))
    # A negated plain operator is always the exact negation of its positive twin.
    assert matches("StringNotEquals", SUBNETS, listed, context) is \
        (not matches("StringEquals", SUBNETS, listed, context))


STATEMENTS = st.builds(
    lambda effect, action, listed: stmt(effect, {"ForAnyValue:StringEquals": {SUBNETS: listed}},
                                        action=action),
    st.sampled_from(["Allow", "Deny"]), st.sampled_from([CREATE, UPDATE, "lambda:*", "s3:*"]),
    st.lists(IDS, min_size=1, max_size=3))


@settings(max_examples=200, deadline=None)
@given(statements=st.lists(STATEMENTS, min_size=1, max_size=6), request=ID_LISTS,
       seed=st.integers(0, 2**32 - 1))
def test_decision_ignores_order_and_follows_deny_allow_default(statements, request, seed):
    context = {SUBNETS: request}
    decision = decide([policy(*statements)], context)
    shuffled = list(statements)
    random.Random(seed).shuffle(shuffled)
    split = [policy(s) for s in shuffled]
    assert decide(split, context) == decision
    applies = [s["Effect"] for s in statements
               if decide([policy(dict(s, Effect="Allow"))], context) == "Allow"]
    expected = "ExplicitDeny" if "Deny" in applies else "Allow" if applies else "ImplicitDeny"
    assert decision == expected


def test_vpc_context_sends_only_the_keys_it_has():
    assert iam.vpc_context("vpc-1", ["subnet-1", "subnet-2"], ["sg-1"]) == {
        "lambda:VpcIds": "vpc-1", "lambda:SubnetIds": ["subnet-1", "subnet-2"],
        "lambda:SecurityGroupIds": ["sg-1"]}
    assert iam.vpc_context(None, ["subnet-1"], []) == {"lambda:SubnetIds": ["subnet-1"]}
    assert iam.vpc_context("vpc-1", [], ["sg-1"]) == {}


# ---- check_vpc_config: the caller --------------------------------------------------------------
def check(**overrides):
    args = dict(action=CREATE, function_name="fn-a", account_id=ACCOUNT, identity_policies=None,
                role_name=None, role_policies=None, vpc_id="vpc-1", subnet_ids=["subnet-1"],
                security_group_ids=["sg-1"])
    args.update(overrides)
    return check_vpc_config(**args)


def test_no_identity_policies_means_no_caller_check():
    assert check(identity_policies=None) is None


def test_caller_explicit_deny_reads_like_aws(deny_vpcs):
    with pytest.raises(AccessDenied) as info:
        check(identity_policies=deny_vpcs, vpc_id="vpc-2")
    err = info.value
    assert err.code == "AccessDeniedException"
    assert err.statement == "EnforceOutOfVPC"
    assert str(err) == (
        f"AccessDeniedException: User: arn:aws:iam::{ACCOUNT}:user/lab is not authorized to "
        f"perform: lambda:CreateFunction on resource: {FN_ARN} with an explicit deny in an "
        f"identity-based policy")
    assert check(identity_policies=deny_vpcs, vpc_id="vpc-3") is None


def test_caller_implicit_deny_reads_like_aws(allow_subnets):
    with pytest.raises(AccessDenied) as info:
        check(action=UPDATE, region="eu-west-1", function_name="fn-b",
              identity_policies=allow_subnets, subnet_ids=["subnet-1", "subnet-9"])
    assert str(info.value) == (
        f"AccessDeniedException: User: arn:aws:iam::{ACCOUNT}:user/lab is not authorized to "
        f"perform: lambda:UpdateFunctionConfiguration on resource: "
        f"arn:aws:lambda:eu-west-1:{ACCOUNT}:function:fn-b because no identity-based policy "
        f"allows the lambda:UpdateFunctionConfiguration action")
    check(action=UPDATE, identity_policies=allow_subnets, subnet_ids=["subnet-2", "subnet-1"])


def test_caller_without_vpc_config_sends_no_keys(enforce_vpc_function):
    with pytest.raises(AccessDenied, match="explicit deny"):
        check(identity_policies=enforce_vpc_function, vpc_id=None, subnet_ids=[],
              security_group_ids=[])
    with pytest.raises(AccessDenied, match="explicit deny"):
        check(identity_policies=enforce_vpc_function, subnet_ids=[])


def test_caller_principal_may_be_a_full_arn():
    with pytest.raises(AccessDenied, match=r"User: arn:aws:iam::111122223333:role/dev is not"):
        check(identity_policies=[], principal="arn:aws:iam::111122223333:role/dev")


def test_unknown_action_is_a_programming_error():
    with pytest.raises(ValueError, match="action must be one of"):
        check(action="lambda:InvokeFunction")


# ---- check_vpc_config: the execution role ------------------------------------------------------
VPC_ROLE = "arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"


def test_managed_vpc_access_policy_grants_the_eni_permissions():
    doc = iam.validate_policy("AWSLambdaVPCAccessExecutionRole", "p")
    assert doc == iam.validate_policy(VPC_ROLE, "p")
    for perm in iam.ENI_PERMISSIONS + ("ec2:AssignPrivateIpAddresses",
                                       "ec2:UnassignPrivateIpAddresses", "ec2:DescribeSubnets"):
        assert evaluate([doc], perm, "*", {})[0] == "Allow", perm
    assert evaluate([doc], "ec2:RunInstances", "*", {})[0] == "ImplicitDeny"
    assert check(role_name="lab-role", role_policies=[doc]) is None


@pytest.mark.parametrize("missing", iam.ENI_PERMISSIONS)
def test_role_lacking_an_eni_permission_is_refused(missing):
    granted = [p for p in iam.ENI_PERMISSIONS if p != missing]
    role = [policy(stmt("Allow", action=granted))]
    with pytest.raises(AccessDenied) as info:
        check(role_name="lab-role", role_policies=role)
    call = missing.split(":")[1]
    assert info.value.code == "InvalidParameterValueException"
    assert str(info.value) == (f"InvalidParameterValueException: The provided execution role "
                               f"does not have permissions to call {call} on EC2")


def test_role_names_the_first_missing_permission_in_lambdas_order():
    with pytest.raises(AccessDenied, match="call CreateNetworkInterface on EC2"):
        check(role_name="lab-role", role_policies=[])


def test_role_deny_overrides_the_managed_policy():
    deny_delete = policy(stmt("Deny", action="ec2:DeleteNetworkInterface", sid="NoDelete"))
    with pytest.raises(AccessDenied, match="call DeleteNetworkInterface on EC2") as info:
        check(role_name="lab-role", role_policies=[VPC_ROLE, deny_delete])
    assert info.value.statement == "NoDelete"


def test_role_with_wildcard_ec2_network_interface_actions():
    role = [policy(stmt("Allow", action="ec2:*NetworkInterface*"))]
    assert check(role_name="lab-role", role_policies=role) is None


def test_role_permissions_are_only_needed_with_subnets():
    assert check(role_name="lab-role", role_policies=[], subnet_ids=[], vpc_id=None) is None


def test_missing_role_cannot_be_assumed():
    with pytest.raises(AccessDenied) as info:
        check(role_name="no-such-role", role_policies=None)
    assert str(info.value) == ("InvalidParameterValueException: The role defined for the "
                               "function cannot be assumed by Lambda.")


def test_caller_is_checked_before_the_role(deny_vpcs):
    with pytest.raises(AccessDenied, match="AccessDeniedException"):
        check(identity_policies=deny_vpcs, role_name="lab-role", role_policies=[])


# ---- validation: normalised form and JSON --------------------------------------------------------
def test_normalised_form():
    doc = {"Statement": {"Effect": "Deny", "Action": "lambda:CreateFunction", "Resource": "*",
                         "Condition": {"Null": {"lambda:VpcIds": True}}}}
    assert iam.validate_policy(doc, "p") == {
        "Version": "2008-10-17",
        "Statement": [{"Effect": "Deny", "Action": ["lambda:CreateFunction"], "Resource": ["*"],
                       "Condition": {"Null": {"lambda:VpcIds": ["true"]}}}]}
    once = iam.validate_policy(policy(stmt("Allow", {"StringEquals": {"lambda:VpcIds": "v"}},
                                           sid="A")), "p")
    assert iam.validate_policy(once, "p") == once
    assert json.loads(json.dumps(once)) == once


def test_json_string_policies_work(deny_subnets):
    text = json.dumps(deny_subnets[1], indent=2)
    pols = [ALLOW_ALL_LAMBDA, text]
    assert decide(pols, ctx("vpc-1", ["subnet-2"])) == "ExplicitDeny"
    assert decide(pols, ctx("vpc-1", ["subnet-5"])) == "Allow"
    assert iam.validate_policy(text, "p") == iam.validate_policy(deny_subnets[1], "p")


# ---- validation: refusals name the exact field -------------------------------------------------
def refused(doc, field, *words):
    with pytest.raises(IamPolicyError) as info:
        iam.validate_policy(doc, "iam.identity_policies[0]")
    err = info.value
    assert err.field == field, str(err)
    assert str(err).startswith(f"{field}: "), str(err)
    for w in words:
        assert w in str(err), f"{w!r} not in {str(err)!r}"
    return str(err)


P = "iam.identity_policies[0]"


@pytest.mark.parametrize("statement,field,words", [
    ({"Effect": "allow", "Action": "*", "Resource": "*"}, "Statement[1].Effect",
     ["'allow'", '"Allow"']),
    ({"Action": "*", "Resource": "*"}, "Statement[1].Effect", ["missing"]),
    ({"Effect": "Allow", "Resource": "*"}, "Statement[1].Action", ["missing", "NotAction"]),
    ({"Effect": "Allow", "Action": "*"}, "Statement[1].Resource", ["missing", '"*"']),
    ({"Effect": "Allow", "Action": "*", "NotAction": "s3:*", "Resource": "*"},
     "Statement[1].NotAction", ["not both"]),
    ({"Effect": "Allow", "Action": ["lambda:CreateFunction", "CreateFunction"], "Resource": "*"},
     "Statement[1].Action[1]", ["service:Action"]),
    ({"Effect": "Allow", "Action": [], "Resource": "*"}, "Statement[1].Action", ["non-empty"]),
    ({"Effect": "Allow", "Action": "*", "Resource": "function:fn-a"}, "Statement[1].Resource",
     ["an ARN"]),
    ({"Effect": "Allow", "Action": "*", "Resource": "*", "Principal": {"AWS": "*"}},
     "Statement[1].Principal", ["must not specify a principal"]),
    ({"Effect": "Allow", "Action": "*", "Resource": "*", "Conditions": {}},
     "Statement[1].Conditions", ["did you mean 'Condition'"]),
    ({"Effect": "Allow", "Action": "*", "Resource": "*", "Sid": "no-dashes"},
     "Statement[1].Sid", ["letters"]),
    ({"Effect": "Allow", "Action": "*", "Resource": "*",
      "Condition": {"StringEqual": {"lambda:VpcIds": "v"}}},
     "Statement[1].Condition.StringEqual", ["unknown condition operator",
                                            "did you mean 'StringEquals'"]),
    ({"Effect": "Allow", "Action": "*", "Resource": "*",
      "Condition": {"ForSomeValues:StringEquals": {"lambda:VpcIds": "v"}}},
     "Statement[1].Condition.ForSomeValues:StringEquals", ["ForAnyValue:"]),
    ({"Effect": "Allow", "Action": "*", "Resource": "*",
      "Condition": {"NumericLessThan": {"aws:MultiFactorAuthAge": "3600"}}},
     "Statement[1].Condition.NumericLessThan", ["does not evaluate"]),
    ({"Effect": "Allow", "Action": "*", "Resource": "*",
      "Condition": {"ForAllValues:Null": {"lambda:VpcIds": "true"}}},
     "Statement[1].Condition.ForAllValues:Null", ["plain"]),
    ({"Effect": "Allow", "Action": "*", "Resource": "*",
      "Condition": {"Null": {"lambda:VpcIds": "yes"}}},
     "Statement[1].Condition.Null.lambda:VpcIds", ['"true"', '"false"']),
    ({"Effect": "Allow", "Action": "*", "Resource": "*",
      "Condition": {"StringEquals": {"VpcIds": "v"}}},
     "Statement[1].Condition.StringEquals.VpcIds", ["prefixed"]),
    ({"Effect": "Allow", "Action": "*", "Resource": "*",
      "Condition": {"StringEquals": {"lambda:VpcIds": [{"x": 1}]}}},
     "Statement[1].Condition.StringEquals.lambda:VpcIds[0]", ["strings"]),
    ({"Effect": "Allow", "Action": "*", "Resource": "*",
      "Condition": {"StringEquals": {"lambda:VpcIds": []}}},
     "Statement[1].Condition.StringEquals.lambda:VpcIds", ["at least one"]),
    ({"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {"StringEquals": {}}},
     "Statement[1].Condition.StringEquals", ["non-empty"]),
    ({"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {1: {}}},
     "Statement[1].Condition", ["must be strings"]),
])
def test_malformed_statement_names_the_field(statement, field, words):
    doc = policy({"Effect": "Allow", "Action": "*", "Resource": "*"}, statement)
    refused(doc, f"{P}.{field}", *words)


def test_malformed_policy_documents():
    refused([], P, "Version and Statement")
    refused({"Version": "2012-10-17"}, f"{P}.Statement", "missing")
    refused({"Version": "2012-10-17", "Statement": []}, f"{P}.Statement", "non-empty")
    refused({"Version": "2020-01-01", "Statement": []}, f"{P}.Version", "2012-10-17")
    refused({"Version": "2012-10-17", "Statements": []}, f"{P}.Statements",
            "did you mean 'Statement'")
    refused({"Statement": {"Action": "*", "Resource": "*"}}, f"{P}.Statement.Effect")
    refused('{"Version": "2012-10-17", "Statement": [', P, "not valid JSON", "line 1")
    refused("AWSLambdaFullAccess", P, "unknown managed policy", "AWSLambdaVPCAccessExecutionRole")
    dup = policy(stmt("Allow", sid="Same"), stmt("Deny", sid="Same"))
    refused(dup, f"{P}.Statement[1].Sid", "duplicate", "Statement[0]")


def test_evaluate_rejects_malformed_policies():
    with pytest.raises(IamPolicyError, match=r"^policies\[1\]\.Statement\.Effect: "):
        evaluate([ALLOW_ALL_LAMBDA, {"Statement": {"Effect": "Permit", "Action": "*",
                                                   "Resource": "*"}}], CREATE, FN_ARN, {})


# ---- the [iam] section -----------------------------------------------------------------------
def test_parse_iam_section():
    table = {
        "identity_policies": [ALLOW_ALL_LAMBDA, json.dumps(policy(stmt(
            "Deny", {"Null": {"lambda:VpcIds": "true"}})))],
        "roles": [{"name": "lab-role", "policies": ["AWSLambdaVPCAccessExecutionRole"]},
                  {"name": "bare-role"}],
    }
    out = iam.parse_iam_section(table)
    assert len(out["identity_policies"]) == 2
    assert out["identity_policies"][1]["Statement"][0]["Condition"] == {
        "Null": {"lambda:VpcIds": ["true"]}}
    assert sorted(out["roles"]) == ["bare-role", "lab-role"]
    assert out["roles"]["bare-role"] == []
    assert out["roles"]["lab-role"][0]["Statement"][0]["Sid"] == \
        "AWSLambdaVPCAccessExecutionPermissions"
    check(identity_policies=out["identity_policies"], role_name="lab-role",
          role_policies=out["roles"]["lab-role"])
    with pytest.raises(AccessDenied, match="CreateNetworkInterface"):
        check(identity_policies=out["identity_policies"], role_name="bare-role",
              role_policies=out["roles"]["bare-role"])
    assert iam.parse_iam_section({}) == {"identity_policies": None, "roles": {}}
    assert iam.parse_iam_section({"identity_policies": []})["identity_policies"] == []


@pytest.mark.parametrize("table,field,words", [
    ([], "iam", ["must be a table"]),
    ({"identity_policy": []}, "iam.identity_policy", ["did you mean 'identity_policies'"]),
    ({"identity_policies": ALLOW_ALL_LAMBDA}, "iam.identity_policies", ["list"]),
    ({"identity_policies": [ALLOW_ALL_LAMBDA, {"Statement": {"Effect": "Allow",
                                                             "Resource": "*"}}]},
     "iam.identity_policies[1].Statement.Action", ["missing"]),
    ({"roles": {"name": "r"}}, "iam.roles", ["list of tables"]),
    ({"roles": ["r"]}, "iam.roles[0]", ["table"]),
    ({"roles": [{"policies": []}]}, "iam.roles[0].name", ["name"]),
    ({"roles": [{"name": "has space"}]}, "iam.roles[0].name", ["1-64"]),
    ({"roles": [{"name": "r"}, {"name": "r"}]}, "iam.roles[1].name", ["duplicate role name"]),
    ({"roles": [{"name": "r", "policy": []}]}, "iam.roles[0].policy", ["did you mean 'policies'"]),
    ({"roles": [{"name": "r", "policies": "AWSLambdaVPCAccessExecutionRole"}]},
     "iam.roles[0].policies", ["list"]),
    ({"roles": [{"name": "r", "policies": ["AWSLambdaVPCAccessExecutionRole", {
        "Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Action": "ec2", "Resource":
                                                "*"}]}]}]},
     "iam.roles[0].policies[1].Statement[0].Action", ["service:Action"]),
])
def test_parse_iam_section_errors(table, field, words):
    with pytest.raises(IamPolicyError) as info:
        iam.parse_iam_section(table)
    assert info.value.field == field, str(info.value)
    assert str(info.value).startswith(f"{field}: ")
    for w in words:
        assert w in str(info.value), f"{w!r} not in {str(info.value)!r}"


def test_toml_iam_section_round_trip():
    """The section as a lab config would write it in TOML."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib
    text = '''
[[iam.identity_policies]]
Version = "2012-10-17"
[[iam.identity_policies.Statement]]
Sid = "AllowLambda"
Effect = "Allow"
Action = "lambda:*"
Resource = "*"
[[iam.identity_policies.Statement]]
Sid = "EnforceOutOfSubnet"
Effect = "Deny"
Action = ["lambda:CreateFunction", "lambda:UpdateFunctionConfiguration"]
Resource = "*"
Condition = { "ForAnyValue:StringEquals" = { "lambda:SubnetIds" = ["subnet-b"] } }

[[iam.roles]]
name = "lab-role"
policies = ["arn:aws:iam::aws:policy/service-role/AWSLambdaVPCAccessExecutionRole"]
'''
    out = iam.parse_iam_section(tomllib.loads(text)["iam"])
    pols = out["identity_policies"]
    check(identity_policies=pols, role_name="lab-role", role_policies=out["roles"]["lab-role"],
          subnet_ids=["subnet-a"])
    with pytest.raises(AccessDenied, match="explicit deny") as info:
        check(identity_policies=pols, subnet_ids=["subnet-a", "subnet-b"])
    assert info.value.statement == "EnforceOutOfSubnet"
