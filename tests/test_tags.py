"""SemVer parsing and precedence, the GTO tag grammar, and version bumping."""

from __future__ import annotations

import random

import pytest

from modelshelf.errors import ConfigError
from modelshelf.tags import (
    SemVer,
    Tag,
    format_tag,
    is_valid_name,
    latest_release,
    next_version,
    parse_tag,
    release_message,
    release_tag,
)

# --------------------------------------------------------------------------- SemVer parsing


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0.0.0", SemVer(0, 0, 0)),
        ("1.2.3", SemVer(1, 2, 3)),
        ("10.20.30", SemVer(10, 20, 30)),
        ("1.0.0-alpha", SemVer(1, 0, 0, ("alpha",))),
        ("1.0.0-alpha.1", SemVer(1, 0, 0, ("alpha", "1"))),
        ("1.0.0-0.3.7", SemVer(1, 0, 0, ("0", "3", "7"))),
        ("1.0.0-x.7.z.92", SemVer(1, 0, 0, ("x", "7", "z", "92"))),
        ("1.0.0-x-y-z.--", SemVer(1, 0, 0, ("x-y-z", "--"))),
        ("1.0.0+20130313144700", SemVer(1, 0, 0, (), "20130313144700")),
        ("1.0.0-beta+exp.sha.5114f85", SemVer(1, 0, 0, ("beta",), "exp.sha.5114f85")),
        ("1.0.0+21AF26D3----117B344092BD", SemVer(1, 0, 0, (), "21AF26D3----117B344092BD")),
        ("1.2.3-rc.1+b5", SemVer(1, 2, 3, ("rc", "1"), "b5")),
    ],
)
def test_semver_parse_fields_and_str_round_trip(text: str, expected: SemVer) -> None:
    parsed = SemVer.parse(text)
    assert (parsed.major, parsed.minor, parsed.patch, parsed.pre, parsed.build) == (
        expected.major, expected.minor, expected.patch, expected.pre, expected.build)
    assert str(parsed) == text
    # with a leading v: same version, and str() drops the v
    with_v = SemVer.parse("v" + text)
    assert (with_v.pre, with_v.build) == (parsed.pre, parsed.build)
    assert with_v == parsed
    assert str(with_v) == text
    assert SemVer.is_valid(text) and SemVer.is_valid("v" + text)


@pytest.mark.parametrize(
    "text",
    [
        "01.0.0", "1.01.0", "1.0.01",            # leading zeros in numbers
        "1.0", "1", "", "v", "v1.0",             # too few parts
        "v1.0.0.0", "1.0.0.0",                   # too many parts
        "1.0.0-01",                              # leading zero in numeric pre-release id
        "1.0.0-", "1.0.0+", "1.0.0-alpha..1",    # empty identifiers
        "1.0.0-alpha_beta", "1.0.0+build_1",     # illegal characters
        "vv1.0.0", "V1.0.0", " 1.0.0", "1.0.0 ", "-1.0.0", "a.b.c", "1.2.3.DEV",
    ],
)
def test_semver_rejects_invalid(text: str) -> None:
    assert not SemVer.is_valid(text)
    with pytest.raises(ConfigError) as info:
        SemVer.parse(text)
    assert info.value.exit_code == 2
    assert f"'{text}' is not a SemVer version" in str(info.value)
    assert "MAJOR.MINOR.PATCH" in str(info.value)


def test_semver_rejects_trailing_newline() -> None:
    assert not SemVer.is_valid("1.0.0\n")


def test_semver_rejects_non_ascii_digits() -> None:
    assert not SemVer.is_valid("1\u0661.0.0")


def test_parse_tag_rejects_trailing_newline() -> None:
    assert parse_tag("model@v1.0.0\n") is None


# --------------------------------------------------------------------------- SemVer precedence

SPEC_ORDER = [
    "1.0.0-alpha",
    "1.0.0-alpha.1",
    "1.0.0-alpha.beta",
    "1.0.0-beta",
    "1.0.0-beta.2",
    "1.0.0-beta.11",
    "1.0.0-rc.1",
    "1.0.0",
    "1.0.1",
    "1.1.0",
    "1.9.0",
    "1.10.0",
    "2.0.0-0",
    "2.0.0",
    "10.0.0",
]


def test_semver_precedence_matches_spec_pairwise() -> None:
    versions = [SemVer.parse(t) for t in SPEC_ORDER]
    for i, low in enumerate(versions):
        for high in versions[i + 1:]:
            assert low < high, f"{low} < {high}"
            assert high > low
            assert low != high
            assert not high < low
            assert low <= high and high >= low


def test_semver_sort_is_by_precedence_not_by_text() -> None:
    shuffled = SPEC_ORDER[:]
    random.Random(1234).shuffle(shuffled)
    assert shuffled != SPEC_ORDER
    assert [str(v) for v in sorted(SemVer.parse(t) for t in shuffled)] == SPEC_ORDER
    # text order would put 1.10.0 before 1.9.0
    assert SemVer.parse("1.10.0") > SemVer.parse("1.9.0")
    assert SemVer.parse("1.0.0-beta.11") > SemVer.parse("1.0.0-beta.2")


def test_semver_numeric_identifiers_sort_below_alphanumeric() -> None:
    assert SemVer.parse("1.0.0-1") < SemVer.parse("1.0.0-a")
    assert SemVer.parse("1.0.0-999") < SemVer.parse("1.0.0-0a")
    assert SemVer.parse("1.0.0-alpha.9") < SemVer.parse("1.0.0-alpha.a")


def test_semver_build_metadata_ignored_in_equality_and_hash() -> None:
    a, b, c = SemVer.parse("1.0.0+build.1"), SemVer.parse("1.0.0+build.2"), SemVer.parse("1.0.0")
    assert a == b == c
    assert not a < b and not b < a
    assert len({a, b, c}) == 1
    assert str(a) != str(b)  # the metadata is still kept for display
    assert SemVer.parse("1.0.0-rc.1+x") == SemVer.parse("1.0.0-rc.1")
    assert SemVer.parse("1.0.0-rc.1+x") != SemVer.parse("1.0.0")


def test_semver_not_equal_to_other_types() -> None:
    assert SemVer(1, 0, 0) != "1.0.0"
    assert SemVer(1, 0, 0) != (1, 0, 0)


def test_semver_bump() -> None:
    v = SemVer.parse("1.2.3+meta")
    assert str(v.bump("major")) == "2.0.0"
    assert str(v.bump("minor")) == "1.3.0"
    assert str(v.bump("patch")) == "1.2.4"
    assert str(SemVer.parse("1.2.0-rc.1").bump("patch")) == "1.2.0"
    with pytest.raises(ValueError):
        v.bump("micro")


# --------------------------------------------------------------------------- tag grammar

ROUND_TRIP = [
    ("model@v1.3.0", Tag("release", "model", SemVer(1, 3, 0))),
    ("model@v1.3.0#7", Tag("release", "model", SemVer(1, 3, 0), number=7)),
    ("model@v1.0.0-rc.1+b5", Tag("release", "model", SemVer(1, 0, 0, ("rc", "1"), "b5"))),
    ("model@v1.3.0!", Tag("deregister", "model", SemVer(1, 3, 0))),
    ("model@v1.3.0!#4", Tag("deregister", "model", SemVer(1, 3, 0), number=4)),
    ("model#prod#3", Tag("assign", "model", stage="prod", number=3)),
    ("model#prod!#4", Tag("unassign", "model", stage="prod", number=4)),
    ("model@deprecated", Tag("deprecate", "model")),
    ("model@deprecated#9", Tag("deprecate", "model", number=9)),
    ("sub/dir=name@v2.0.0", Tag("release", "sub/dir=name", SemVer(2, 0, 0))),
    ("sub/dir=name#staging#1", Tag("assign", "sub/dir=name", stage="staging", number=1)),
    ("sub/dir=name@deprecated", Tag("deprecate", "sub/dir=name")),
    ("my-model_2/x@v0.1.0", Tag("release", "my-model_2/x", SemVer(0, 1, 0))),
]


@pytest.mark.parametrize(("text", "tag"), ROUND_TRIP, ids=[t for t, _ in ROUND_TRIP])
def test_parse_and_format_tag_round_trip(text: str, tag: Tag) -> None:
    parsed = parse_tag(text)
    assert parsed is not None
    assert (parsed.kind, parsed.name, parsed.stage, parsed.number) == (
        tag.kind, tag.name, tag.stage, tag.number)
    if tag.version is None:
        assert parsed.version is None
    else:
        assert parsed.version == tag.version and str(parsed.version) == str(tag.version)
    assert format_tag(parsed) == text
    assert format_tag(tag) == text
    assert str(tag) == text


@pytest.mark.parametrize(
    "text",
    [
        "v1.0.0",                 # a plain version tag
        "model@1.0.0",            # no v
        "model@v1.0",             # not SemVer
        "model@v01.0.0",
        "model@v1.0.0.0",
        "model@vlatest",
        "model@",
        "@v1.0.0",                # no name
        "-model@v1.0.0",          # name must start alphanumeric
        "model-@v1.0.0",          # ... and end alphanumeric
        "model#prod#",
        "model#prod#x",
        "model@deprecated!",
        "model@v1.0.0#x",
        "model@v1.0.0!!",
        "release-2021",           # lightweight junk
        "latest",
        "",
        "model v1.0.0",
    ],
)
def test_strings_outside_the_grammar_parse_to_none(text: str) -> None:
    assert parse_tag(text) is None


def test_release_tag_and_message() -> None:
    v = SemVer.parse("1.2.0")
    assert release_tag("model", v) == "model@v1.2.0"
    assert parse_tag(release_tag("model", v)) == Tag("release", "model", v)
    assert release_message("model", v) == "Registering artifact model version v1.2.0"


@pytest.mark.parametrize(("name", "ok"), [("model", True), ("a", True), ("my-model_2", True),
                                          ("sub/model", True), ("-model", False), ("model-", False),
                                          ("mo del", False), ("model@x", False), ("", False)])
def test_is_valid_name(name: str, ok: bool) -> None:
    assert is_valid_name(name) is ok


# --------------------------------------------------------------------------- latest_release


def test_latest_release_orders_by_semver_not_list_order() -> None:
    names = ["model@v1.10.0", "model@v1.9.0", "model@v2.0.0-rc.1", "model@v1.2.0"]
    assert str(latest_release(names, "model")) == "2.0.0-rc.1"
    names = ["model@v1.9.0", "model@v1.10.0", "model@v1.2.0"]
    assert str(latest_release(names, "model")) == "1.10.0"
    assert str(latest_release(list(reversed(names)), "model")) == "1.10.0"
    assert str(latest_release(["model@v1.0.0", "model@v1.0.0-rc.9"], "model")) == "1.0.0"


def test_latest_release_ignores_other_artefacts_and_non_release_tags() -> None:
    names = [
        "model@v1.1.0",
        "other@v9.0.0",                 # another artefact
        "sub/dir=model@v8.0.0",         # monorepo artefact with a different full name
        "model#prod#5",                 # assignment
        "model#prod!#6",                # unassignment
        "model@deprecated",             # deprecation
        "model@v7.0.0!",                # deregistration tag is not a release
        "v5.0.0",                       # junk
        "model@5.0.0",                  # junk
    ]
    assert str(latest_release(names, "model")) == "1.1.0"
    assert str(latest_release(names, "sub/dir=model")) == "8.0.0"
    assert latest_release(names, "missing") is None
    assert latest_release([], "model") is None
    assert latest_release(["model#prod#1", "model@deprecated"], "model") is None


def test_latest_release_counts_numbered_release_tags() -> None:
    assert str(latest_release(["model@v1.0.0", "model@v1.1.0#2"], "model")) == "1.1.0"


# --------------------------------------------------------------------------- next_version


def test_next_version_first_release_is_1_0_0() -> None:
    for bump in ("auto", "major", "minor", "patch"):
        for changed in (False, True):
            version, why = next_version(None, bump, changed)
            assert str(version) == "1.0.0"
            assert why == "first release"


def test_next_version_auto_minor_when_contract_unchanged() -> None:
    version, why = next_version(SemVer.parse("1.4.2"), "auto", False)
    assert str(version) == "1.5.0"
    assert why.startswith("minor")


def test_next_version_auto_major_when_contract_changed() -> None:
    version, why = next_version(SemVer.parse("1.4.2"), "auto", True)
    assert str(version) == "2.0.0"
    assert why.startswith("major") and "changed" in why


@pytest.mark.parametrize(("bump", "expected"), [("major", "2.0.0"), ("minor", "1.5.0"), ("patch", "1.4.3")])
@pytest.mark.parametrize("changed", [False, True])
def test_next_version_forced_bump_ignores_contract(bump: str, expected: str, changed: bool) -> None:
    version, why = next_version(SemVer.parse("1.4.2"), bump, changed)
    assert str(version) == expected
    assert why == f"{bump}: forced by release.bump"


def test_next_version_patch_on_prerelease_releases_it() -> None:
    version, why = next_version(SemVer.parse("1.2.0-rc.1"), "patch", False)
    assert str(version) == "1.2.0"
    assert version > SemVer.parse("1.2.0-rc.1")
    assert why.startswith("patch")


def test_next_version_drops_build_metadata_and_prerelease() -> None:
    version, _ = next_version(SemVer.parse("1.2.3-rc.1+b7"), "minor", False)
    assert (version.pre, version.build) == ((), "")
    assert str(version) == "1.3.0"


def test_bump_of_a_pre_release_on_the_boundary_releases_it() -> None:
    from modelshelf.tags import SemVer

    assert SemVer.parse("2.0.0-rc.1").bump("major") == SemVer(2, 0, 0)
    assert SemVer.parse("1.3.0-rc.1").bump("minor") == SemVer(1, 3, 0)
    assert SemVer.parse("1.3.1-rc.1").bump("minor") == SemVer(1, 4, 0)
    assert SemVer.parse("2.1.0-rc.1").bump("major") == SemVer(3, 0, 0)


def test_gto_simple_assignment_and_created_tags_parse() -> None:
    from modelshelf.tags import Tag, format_tag, next_counter, parse_tag

    simple = parse_tag("model#prod")
    assert simple == Tag("assign", "model", stage="prod", number=None)
    assert format_tag(simple) == "model#prod"
    assert parse_tag("model@created") == Tag("create", "model")
    names = ["model@v1.0.0", "model#prod#4", "model@v1.1.0#2", "other#prod#9", "junk"]
    assert next_counter(names, "model") == 5
    assert next_counter([], "model") == 1


# --------------------------------------------------------------------------- GTO's own grammar

GTO_CORPUS = [
    *(text for text, _ in ROUND_TRIP),
    "model@vv1.0.0", "model@Vv1.0.0", "model@v1.0.0-rc.1+b.5#3", "model@v1.0.0-01", "model@v1.0.0+",
    "model#prod!", "model#p#1", "model#-prod#1", "model#prod-#1", "model@deprecated#0",
    "a@v1.0.0", "a/b/c@v1.0.0", "dir/sub=model#prod#2", "dir=sub=model@v1.0.0", "m@v1.0.0!#12",
    "model@v1.0.0#", "model@v999999999999.0.0", "model#prod#007", "model #prod#1", "model\t@v1.0.0",
    "d%ir=model@v1.0.0", "d:ir=model@v1.0.0", "d?x=model#prod#1", "D_Z=model@v1.0.0", "./x=model#prod#1",
]


@pytest.mark.parametrize("text", GTO_CORPUS)
def test_parse_tag_reads_what_gto_reads(text: str) -> None:
    """Every tag name GTO's own parser accepts parses to the same event here, and no other."""
    from gto.constants import Action
    from gto.tag import parse_name

    theirs = parse_name(text, raise_on_fail=False)
    ours = parse_tag(text)
    if not theirs or "action" not in theirs:   # GTO knows `@created` by name only (and then fails)
        assert ours is None or ours.kind == "create", (text, ours)
        return
    assert ours is not None, (text, theirs)
    kinds = {Action.REGISTER: "release", Action.DEREGISTER: "deregister", Action.ASSIGN: "assign",
             Action.UNASSIGN: "unassign", Action.DEPRECATE: "deprecate"}
    assert ours.kind == kinds[theirs["action"]]
    assert ours.name.replace("=", ":") == theirs["name"]
    assert ours.stage == theirs.get("stage")
    assert ours.number == theirs.get("counter")
    if "version" in theirs:
        assert f"v{ours.version}" == theirs["version"]
