"""Signed releases (issue 13): real OpenSSF model-signing bundles over a real release directory
(``shelf get v1.0.0 -o DIR``), the trust policy in params.yaml read from the protected branch,
the signature in a real annotated tag's message, and SSH-signed tags.  Offline: keys and
certificates are made here with ``cryptography``."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from conftest import Project, add_remotes, copy_tree, environ, isolated_env
from modelshelf.errors import ConfigError, IntegrityError, ReleaseRefused, ShelfError
from modelshelf.gitrepo import GitRepo
from modelshelf.registry import signing
from modelshelf.registry.core import Workspace, open_registry
from modelshelf.registry.signing import KeySpec, TrustPolicy
from modelshelf.tags import SemVer


# --------------------------------------------------------------------------- helpers


def write_key(directory: Path, name: str, curve: ec.EllipticCurve | None = None) -> tuple[Path, Path]:
    """An EC key pair as PEM files ``NAME.key`` and ``NAME.pub``."""
    key = ec.generate_private_key(curve or ec.SECP256R1())
    directory.mkdir(parents=True, exist_ok=True)
    priv, pub = directory / f"{name}.key", directory / f"{name}.pub"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return priv, pub


def write_ca_and_leaf(directory: Path, name: str) -> tuple[Path, Path, Path]:
    """A CA certificate, and a code-signing leaf certificate it issued with its key:
    ``(ca.pem, leaf.key, leaf.pem)``."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} release signer")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=7))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, leaf_key_pem, leaf_pem = directory / "ca.pem", directory / "leaf.key", directory / "leaf.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    leaf_pem.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    leaf_key_pem.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                    serialization.NoEncryption()))
    return ca_pem, leaf_key_pem, leaf_pem


def set_policy(p: Project, commit: bool = True, **release: Any) -> None:
    """Set ``release.*`` keys in params.yaml (a value None deletes it), and commit on the branch."""
    p.set_params(release=release)
    if commit:
        p.commit("trust policy")


def refused(exc: pytest.ExceptionInfo[ShelfError], *words: str) -> str:
    """The one-line exit-4 message, checked to contain ``words``."""
    assert isinstance(exc.value, IntegrityError), exc.value
    assert exc.value.exit_code == 4
    message = exc.value.message
    assert "\n" not in message, message
    for word in words:
        assert word in message, message
    return message


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[min(offset, len(data) - 1)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def release_template(built_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Once per module: ``built`` + remotes + ``shelf release --push`` (model@v1.0.0), and
    ``shelf get v1.0.0 -o got``.  Tests work on copies (nothing here pushes)."""
    base = tmp_path_factory.mktemp("signed-release")
    with environ(isolated_env(base / "home")):
        p = add_remotes(Project(copy_tree(built_template, base / "proj")))
        p.shelf("release", "--push")
        p.shelf("get", "v1.0.0", "-o", str(base / "got"))
    return base


@pytest.fixture
def release_dir(release_template: Path, tmp_path: Path) -> tuple[Project, Path, dict[str, Any]]:
    """A private copy of the released project (model@v1.0.0), v1.0.0 as ``shelf get`` wrote it,
    and its card."""
    p = Project(copy_tree(release_template / "proj", tmp_path / "proj"))
    out = copy_tree(release_template / "got", tmp_path / "got")
    card = json.loads((out / "card.json").read_text())
    assert {"model.joblib", "onnx/model.onnx"} <= {r["file"] for r in card["artefacts"].values()}
    assert p.git("tag", "-l", "model@*").stdout.split() == ["model@v1.0.0"]
    return p, out, card


def trusted_project(p: Project, pub: Path, **release: Any) -> TrustPolicy:
    """Copy ``pub`` into the project as keys/release.pub, trust it in params.yaml on main."""
    (p.root / "keys").mkdir(exist_ok=True)
    shutil.copy(pub, p.root / "keys" / "release.pub")
    set_policy(p, trust={"keys": ["keys/release.pub"]}, **release)
    return TrustPolicy.effective(p.root)


# --------------------------------------------------------------------------- the release directory


def test_signed_release_directory_verifies_and_every_flipped_byte_is_refused(
        release_dir: tuple[Project, Path, dict[str, Any]], tmp_path: Path) -> None:
    p, got, card = release_dir
    priv, pub = write_key(tmp_path / "k", "release")
    policy = trusted_project(p, pub, require_signature=True)
    files = signing.release_files(card)
    assert files == ["card.json", "model.joblib", "onnx/model.onnx"]
    (got / "notes.txt").write_text("not part of the release\n")  # anything else is ignored
    bundle = signing.sign_release(got, card, KeySpec("key", priv))

    check = signing.verify(got, files, bundle, policy, where="model@v1.0.0", version="1.0.0", name="model")
    assert check.status == "verified" and check.required
    assert check.files == tuple(files) and "keys/release.pub" in check.signer

    # model-signing's own verifier accepts the directory and the sidecar as they are
    from model_signing import verifying

    signing.write_sidecar(got, bundle)
    assert signing.read_sidecar(got) == bundle
    verifying.Config().use_elliptic_key_verifier(public_key=pub).set_ignore_unsigned_files(True).verify(
        got, got / signing.SIGNATURE_FILE)

    for name in files:  # one flipped byte in the model, the ONNX copy, or the card
        copy = shutil.copytree(got, tmp_path / f"tampered-{name.replace('/', '-')}")
        flip_byte(copy / name)
        with pytest.raises(ShelfError) as exc:
            signing.verify(copy, files, bundle, policy, where="model@v1.0.0")
        refused(exc, "model@v1.0.0", name, "differs from the signed file")

    gone = shutil.copytree(got, tmp_path / "missing")
    (gone / "onnx" / "model.onnx").unlink()
    with pytest.raises(ShelfError) as exc:
        signing.verify(gone, files, bundle, policy)
    refused(exc, "model.onnx", "missing")

    # the signed card binds the version: the same bytes presented as another version are refused
    with pytest.raises(ShelfError) as exc:
        signing.verify(got, files, bundle, policy, version="2.0.0")
    refused(exc, "v1.0.0's, not v2.0.0's")


def test_untrusted_signer_and_missing_signature(release_dir: tuple[Project, Path, dict[str, Any]],
                                                tmp_path: Path) -> None:
    p, got, card = release_dir
    _, trusted_pub = write_key(tmp_path / "k", "release")
    other_priv, _ = write_key(tmp_path / "k", "intruder")
    files = signing.release_files(card)
    policy = trusted_project(p, trusted_pub, require_signature=True)
    forged = signing.sign_release(got, card, KeySpec("key", other_priv))

    with pytest.raises(ShelfError) as exc:
        signing.verify(got, files, forged, policy, where="model@v1.0.0")
    refused(exc, "model@v1.0.0", "signed by key sha256:", "does not trust")
    with pytest.raises(ShelfError) as exc:
        signing.verify(got, files, None, policy, where="model@v1.0.0")
    refused(exc, "unsigned", "requires every release to be signed")

    # a signature over other files (here: the card only) is refused, even by the trusted key
    trusted_priv = tmp_path / "k" / "release.key"
    partial = signing.sign(got, ["card.json"], KeySpec("key", trusted_priv))
    with pytest.raises(ShelfError) as exc:
        signing.verify(got, files, partial, policy)
    refused(exc, "covers card.json, not")

    # a bundle whose statement was edited no longer verifies
    doc = json.loads(signing.sign_release(got, card, KeySpec("key", trusted_priv)))
    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    statement["predicate"]["resources"][1]["digest"] = "0" * 64
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    with pytest.raises(ShelfError) as exc:
        signing.verify(got, files, json.dumps(doc).encode(), policy)
    refused(exc, "does not verify")

    # not required: unsigned passes, an unknown signer is reported (nothing can be checked)
    relaxed = trusted_project(p, trusted_pub, require_signature=False)
    assert signing.verify(got, files, None, relaxed).status == "unsigned"
    untrusted = signing.verify(got, files, forged, relaxed)
    assert untrusted.status == "untrusted" and not untrusted.required
    # ... but a trusted signature over other bytes is refused even then
    genuine = signing.sign_release(got, card, KeySpec("key", trusted_priv))
    flip_byte(got / "model.joblib")
    with pytest.raises(ShelfError) as exc:
        signing.verify(got, files, genuine, relaxed)
    refused(exc, "model.joblib differs from the signed file")


def test_hostile_bundles_are_refused_in_one_line(release_dir: tuple[Project, Path, dict[str, Any]],
                                                 tmp_path: Path) -> None:
    """Attacker-shaped bundles (a trusted key's hint on an intruder's signature, mangled JSON)
    are refused with exit 4 or reported untrusted: never another exception."""
    p, got, card = release_dir
    _, trusted_pub = write_key(tmp_path / "k", "release")
    intruder, _ = write_key(tmp_path / "k", "intruder")
    policy = trusted_project(p, trusted_pub, require_signature=True)
    files = signing.release_files(card)
    forged = json.loads(signing.sign_release(got, card, KeySpec("key", intruder)))
    forged["verificationMaterial"]["publicKey"]["hint"] = policy.keys[0].fingerprint.removeprefix("sha256:")
    with pytest.raises(ShelfError) as exc:  # claims the trusted key, signed by another
        signing.verify(got, files, json.dumps(forged).encode(), policy, where="model@v1.0.0")
    refused(exc, "does not verify")

    def mangled(material: dict[str, Any] | None = None, **envelope: Any) -> bytes:
        doc = json.loads(json.dumps(forged))
        if material is not None:
            doc["verificationMaterial"] = material
        doc["dsseEnvelope"].update(envelope)
        return json.dumps(doc).encode()

    hostile = [b"", b"\xff\xfe", b"[]", b"null", b'{"mediaType": "text/plain"}',
               mangled({"publicKey": "x"}), mangled({"publicKey": {"hint": 7}}), mangled({}),
               mangled({"publicKey": None}), mangled({"x509CertificateChain": {}}),
               mangled({"x509CertificateChain": {"certificates": []}}),
               mangled({"x509CertificateChain": {"certificates": [{"rawBytes": "AAAA"}]}}),
               mangled({"certificate": {"rawBytes": "AAAA"}}),
               mangled(payload="not base64!"), mangled(signatures=[]), mangled(signatures="x")]
    for bundle in hostile:
        with pytest.raises(ShelfError) as exc:
            signing.verify(got, files, bundle, policy)
        refused(exc)
        if bundle.startswith(b'{"mediaType": "application'):
            assert isinstance(signing.describe(bundle), str)  # never raises on what it cannot read

    for name in ("../outside.joblib", "/etc/passwd", "", "a\\..\\b"):
        with pytest.raises(ShelfError) as exc:
            signing.release_files({"artefacts": {"model": {"file": name, "sha256": "0" * 64}}})
        refused(exc, "not a file name inside the release directory")


def test_certificate_signing_chains_to_the_trusted_ca(release_dir: tuple[Project, Path, dict[str, Any]],
                                                      tmp_path: Path) -> None:
    p, got, card = release_dir
    ca, leaf_key, leaf = write_ca_and_leaf(tmp_path / "pki", "Acme")
    other_ca, other_key, other_leaf = write_ca_and_leaf(tmp_path / "pki2", "Evil")
    (p.root / "keys").mkdir()
    shutil.copy(ca, p.root / "keys" / "ca.pem")
    set_policy(p, trust={"certificates": ["keys/ca.pem"]}, require_signature=["prod"])
    policy = TrustPolicy.effective(p.root)
    files = signing.release_files(card)

    good = signing.sign_release(got, card, KeySpec("certificate", leaf_key, leaf))
    assert signing.describe(good) == "certificate CN=Acme release signer"
    check = signing.verify(got, files, good, policy, stages={"prod"})
    assert check.verified and check.required and "Acme" in check.signer

    evil = signing.sign_release(got, card, KeySpec("certificate", other_key, other_leaf))
    with pytest.raises(ShelfError) as exc:
        signing.verify(got, files, evil, policy, stages={"prod"}, where="model@v1.0.0")
    refused(exc, "CN=Evil release signer", "does not trust")
    assert signing.verify(got, files, evil, policy, stages={"dev"}).status == "untrusted"
    assert other_ca.exists()

    with pytest.raises(ConfigError) as cfg:
        KeySpec("certificate", other_key, leaf).check()  # Acme's certificate with Evil's key
    assert "not the certificate of" in cfg.value.message


# --------------------------------------------------------------------------- the tag


def test_signature_in_a_real_tag_message_roundtrips_and_gto_still_reads_it(
        release_dir: tuple[Project, Path, dict[str, Any]], tmp_path: Path) -> None:
    p, got, card = release_dir
    priv, pub = write_key(tmp_path / "k", "release")
    policy = trusted_project(p, pub, require_signature=["prod"])
    ws = Workspace.open(p.root)
    bundle = signing.sign_release(got, card, KeySpec("key", priv))
    original = signing.tag_message(ws.repo, "model@v1.0.0")
    assert original is not None and signing.extract(original) is None

    commit = p.git("rev-list", "-n", "1", "model@v1.0.0").stdout.strip()
    message = signing.embed(original, bundle)
    assert message.splitlines()[0] == "Registering artifact model version v1.0.0"
    p.git("tag", "-d", "model@v1.0.0")
    p.git("tag", "-a", "model@v1.0.0", "-m", message, commit)
    assert signing.bundle_at(ws.repo, "model@v1.0.0") == bundle
    assert signing.tag_message(ws.repo, "model@v1.0.0") == message

    shown = json.loads(p.run("gto", "show", "--json").stdout)
    assert shown["model"]["version"] == "v1.0.0", shown
    history = json.loads(p.run("gto", "history", "model", "--json").stdout)
    assert any(e.get("version") == "v1.0.0" for e in history), history
    assert "v1.0.0" in p.shelf("versions").stdout

    rel = open_registry(ws).find("v1.0.0")
    check = signing.check_release(ws, rel, got, policy=policy)
    assert check.verified and not check.required   # holds no stage: verified, not required
    assert signing.check_release(ws, rel, to="prod").verified  # promote: no bytes, the card at the tag

    # the card beside the files must be the card at the tag (the anchor), not a local one
    (got / "card.json").write_text((got / "card.json").read_text().replace('"1.0.0"', '"1.0.0" '))
    with pytest.raises(ShelfError) as exc:
        signing.check_release(ws, rel, got, policy=policy)
    refused(exc, "not the card at model@v1.0.0")

    # the same signature copied onto another version's tag is refused (core may refuse the tag
    # first, as the card at its commit names v1.0.0; the signature check does not rely on it)
    p.git("tag", "-a", "model@v2.0.0", "-m", signing.embed("Registering artifact model version v2.0.0", bundle),
          commit)
    other = dataclasses.replace(rel, tag="model@v2.0.0", version=SemVer.parse("2.0.0"))
    with pytest.raises(ShelfError) as exc:
        signing.check_release(ws, other, to="prod")
    refused(exc, "model@v2.0.0", "v1.0.0's, not v2.0.0's")


def test_per_stage_requirement_for_load_and_promote(release_dir: tuple[Project, Path, dict[str, Any]]) -> None:
    p, _, _ = release_dir
    (p.root / "keys").mkdir()
    signing.generate_keypair(p.root / "keys")
    (p.root / "keys" / "release.key").unlink()
    set_policy(p, trust={"keys": ["keys/release.pub"]}, require_signature=["prod"])
    ws = Workspace.open(p.root)
    rel = open_registry(ws).find("v1.0.0")
    assert rel.stages == ()

    assert signing.check_release(ws, rel).status == "unsigned"           # by version, holds nothing
    assert signing.check_release(ws, rel, to="staging").status == "unsigned"
    with pytest.raises(ShelfError) as exc:                               # promote --to prod
        signing.check_release(ws, rel, to="prod")
    refused(exc, "model@v1.0.0", "unsigned", "requires a signature for prod")

    assert p.shelf("promote", "v1.0.0", "--to", "prod", check=False).returncode == 4  # the CLI says the same
    # Assigned behind shelf's back (plain git, as GTO would): every use through prod is refused.
    p.git("tag", "-a", "model#prod#2", "-m", "Assigning stage prod to artifact model version v1.0.0", rel.commit)
    rel = open_registry(ws).find("v1.0.0")
    assert rel.stages == ("prod",)
    for spec in ("prod", "v1.0.0", "latest"):  # resolved by the stage, or while it holds it
        with pytest.raises(ShelfError) as exc:
            signing.check_release(ws, open_registry(ws).find(spec), spec=spec)
        refused(exc, "unsigned")


def test_damaged_signature_block_is_refused() -> None:
    bundle = json.dumps({"mediaType": signing._MEDIA_TYPES[0], "dsseEnvelope": {"payload": "e30="},
                         "verificationMaterial": {"publicKey": {"hint": "ab" * 32}}, "pad": "x" * 300}).encode()
    message = signing.embed("Registering artifact model version v1.0.0\n", bundle)
    assert signing.extract(message) == bundle
    assert signing.extract("Registering artifact model version v1.0.0\n") is None
    lines = message.splitlines()
    body = lines.index(signing.BEGIN) + 1
    damaged = {
        "truncated": "\n".join(lines[:-1]),
        "edited": "\n".join([*lines[:body], lines[body][:-2] + "AB", *lines[body + 1:]]),
        "doubled": message + "\n" + message,
        "not base64": message.replace(lines[body], "!!!!" + lines[body][4:]),
    }
    for what, text in damaged.items():
        with pytest.raises(ShelfError) as exc:
            signing.extract(text, "model@v1.0.0")
        assert "model@v1.0.0" in refused(exc, "signature block"), what
    with pytest.raises(ValueError):
        signing.embed(message, bundle)


# --------------------------------------------------------------------------- the policy


def test_policy_counts_from_the_protected_branch_and_the_working_tree_only_tightens(
        project: Project, tmp_path: Path) -> None:
    p = project
    _, pub_a = write_key(tmp_path / "k", "alice")
    _, pub_b = write_key(tmp_path / "k", "mallory")
    (p.root / "keys").mkdir()
    shutil.copy(pub_a, p.root / "keys" / "alice.pub")
    shutil.copy(pub_b, p.root / "keys" / "mallory.pub")
    set_policy(p, trust={"keys": ["keys/alice.pub"]}, require_signature=["prod"])
    main = TrustPolicy.effective(p.root)
    assert [k.path for k in main.keys] == ["keys/alice.pub"] and main.require == ("prod",)
    assert main.source.startswith("main:params.yaml")

    # a branch (what a pushed tag could point at) trusts mallory and drops the requirement
    p.git("checkout", "-q", "-b", "attacker")
    set_policy(p, trust={"keys": ["keys/alice.pub", "keys/mallory.pub"]}, require_signature=False)
    branch = TrustPolicy.effective(p.root)
    assert [k.path for k in branch.keys] == ["keys/alice.pub"]   # mallory is not trusted on main
    assert branch.require == ("prod",)                           # the requirement stays
    assert TrustPolicy.load(p.root).require is False             # (the branch alone would drop it)

    # the working tree may tighten at once: revoke alice, require everywhere
    p.git("checkout", "-q", "main")
    set_policy(p, commit=False, trust={"keys": ["keys/mallory.pub"]}, require_signature=True)
    tight = TrustPolicy.effective(p.root)
    assert tight.keys == () and tight.require is True
    assert tight.requires(()) and main.requires({"prod"}) and not main.requires({"dev", "staging"})

    # a key listed but missing is a ConfigError naming it, in the working tree and on main
    p.git("checkout", "-q", "--", "params.yaml")
    set_policy(p, commit=False, trust={"keys": ["keys/alice.pub", "keys/gone.pub"]})
    with pytest.raises(ConfigError) as cfg:
        TrustPolicy.effective(p.root)
    assert cfg.value.exit_code == 2 and "release.trust.keys[1]" in cfg.value.message
    assert "keys/gone.pub not found" in cfg.value.message
    p.git("checkout", "-q", "--", "params.yaml")
    (p.root / "keys" / "gone.pub").write_bytes(pub_b.read_bytes())
    set_policy(p, commit=False, trust={"keys": ["keys/gone.pub"]})
    p.git("add", "params.yaml")
    p.git("commit", "-q", "-m", "policy without its key file")   # the key file is not committed
    with pytest.raises(ConfigError) as cfg:
        TrustPolicy.effective(p.root)
    assert "main:params.yaml" in cfg.value.message and "keys/gone.pub not found at main" in cfg.value.message

    # a private key listed as trusted is refused with a remedy
    shutil.copy(tmp_path / "k" / "alice.key", p.root / "keys" / "oops.pem")
    set_policy(p, trust={"keys": ["keys/oops.pem"]})
    with pytest.raises(ConfigError) as cfg:
        TrustPolicy.effective(p.root)
    assert "is a private key" in cfg.value.message and "never commit a private key" in cfg.value.message


def test_release_preflight_refuses_what_the_policy_could_never_accept(project: Project, tmp_path: Path) -> None:
    p = project
    priv, pub = write_key(tmp_path / "k", "release")
    other, _ = write_key(tmp_path / "k", "other")
    trusted_project(p, pub, require_signature=True)
    with pytest.raises(ReleaseRefused) as exc:
        signing.release_preflight(p.root, None)
    assert exc.value.exit_code == 7 and "every release must be signed" in exc.value.message
    with pytest.raises(ReleaseRefused) as exc:
        signing.release_preflight(p.root, KeySpec("key", other))
    assert "is not in main:params.yaml" in exc.value.message
    assert signing.release_preflight(p.root, KeySpec("key", priv)).require is True


# --------------------------------------------------------------------------- keys


def test_key_specs_and_key_checks(tmp_path: Path) -> None:
    priv, pub = write_key(tmp_path, "release")
    assert KeySpec.from_options() is None
    assert KeySpec.from_options(key=str(priv)) == KeySpec("key", priv)
    assert KeySpec.from_options(sign=True, env={signing.SIGNING_KEY_ENV: str(priv)}) == KeySpec("key", priv)
    assert KeySpec.from_options(key="sigstore").kind == "sigstore"
    for kwargs in ({"sign": True, "env": {}}, {"chain": ["c.pem"]}, {"key": str(priv), "chain": ["c.pem"]}):
        with pytest.raises(ConfigError):
            KeySpec.from_options(**kwargs)  # type: ignore[arg-type]

    public = serialization.load_pem_public_key(pub.read_bytes())
    assert KeySpec("key", priv).check() == f"key {signing.fingerprint(public)}"
    rsa_key = tmp_path / "rsa.key"
    rsa_key.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    locked = tmp_path / "locked.key"
    locked.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"hunter2")))
    for path, words in ((tmp_path / "absent.key", "not found"), (pub, "not a PEM private key"),
                        (rsa_key, "only with EC keys"), (locked, "encrypted")):
        with pytest.raises(ConfigError) as cfg:
            KeySpec("key", path).check()
        assert cfg.value.exit_code == 2 and str(path) in cfg.value.message and words in cfg.value.message
    assert KeySpec("key", locked, password="hunter2").check().startswith("key sha256:")

    made_priv, made_pub = signing.generate_keypair(tmp_path / "gen")
    assert made_priv.stat().st_mode & 0o777 == 0o600
    assert KeySpec("key", made_priv).check().endswith(
        signing.fingerprint(serialization.load_pem_public_key(made_pub.read_bytes())))
    with pytest.raises(ConfigError):
        signing.generate_keypair(tmp_path / "gen")


# --------------------------------------------------------------------------- git tag signatures (SSH)


def test_ssh_signed_release_tag_verifies_against_allowed_signers(
        release_dir: tuple[Project, Path, dict[str, Any]], tmp_path: Path) -> None:
    if shutil.which("ssh-keygen") is None:
        pytest.skip("ssh-keygen is not installed")
    p, _, _ = release_dir
    keys = {}
    for who in ("releaser", "stranger"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f", str(tmp_path / who)],
                       check=True, capture_output=True)
        keys[who] = (tmp_path / f"{who}.pub").read_text().split()
    allowed = f"releaser@example.invalid {keys['releaser'][0]} {keys['releaser'][1]}\n".encode()
    repo = GitRepo(p.root)
    commit = p.git("rev-list", "-n", "1", "model@v1.0.0").stdout.strip()
    message = signing.tag_message(repo, "model@v1.0.0") or ""
    p.git("tag", "-d", "model@v1.0.0")
    p.git(*signing.ssh_signing_args(tmp_path / "releaser"), "tag", "-s", "model@v1.0.0", "-m", message, commit)
    assert "Good" in signing.verify_tag(repo, "model@v1.0.0", allowed)
    assert json.loads(p.run("gto", "show", "--json").stdout)["model"]["version"] == "v1.0.0"
    assert signing.extract(signing.tag_message(repo, "model@v1.0.0") or "") is None  # SSH block is not ours

    p.git(*signing.ssh_signing_args(tmp_path / "stranger"), "tag", "-s", "model@v1.1.0", "-m", "x", commit)
    p.git("tag", "-a", "model@v1.2.0", "-m", "unsigned", commit)
    for tag, words in (("model@v1.1.0", "not from an allowed signer"), ("model@v1.2.0", "not signed")):
        with pytest.raises(ShelfError) as exc:
            signing.verify_tag(repo, tag, allowed)
        refused(exc, tag, words)
    assert yaml.safe_load((p.root / "params.yaml").read_text())  # untouched
