"""Signed releases: OpenSSF model-signing bundles over a release's files, and the trust policy.

**What is signed.** A release directory laid out exactly as ``shelf get vX -o DIR`` writes it:
every file the card's ``artefacts`` lists (``model.joblib``, ``onnx/model.onnx``), relative to the
card's directory, plus ``card.json`` itself, which carries every sha256, the metrics and the gate
verdict.  Nothing else in the directory is signed or looked at.  The files are staged into a
private directory before signing, so the signed manifest names exactly these files (model-signing
would otherwise walk the whole directory and refuse any symlink in it, e.g. a DVC-linked
neighbour).  The bundle is model-signing's format: a Sigstore bundle (v0.3 JSON) whose DSSE
envelope carries an in-toto statement listing each file's sha256.  ``model_signing verify key
DIR --signature DIR/model.sig --public_key PUB --ignore_unsigned_files`` accepts it as it is.

**Where the signature lives.** In the annotated release tag's message, after GTO's subject line
and modelshelf's lines, as ``signed-by:`` and ``signature-sha256:`` lines and the base64 bundle
between ``-----BEGIN MODELSHELF SIGNATURE-----`` and ``-----END MODELSHELF SIGNATURE-----``
(:func:`embed`, :func:`extract`).  Reasons: the signature must be readable from git at the tag
with no workspace and no DVC remote (``git cat-file tag``); it cannot be a file in the tagged
commit, because it signs that commit's card (a signature commit after it would move the tag off
the commit the card and ``dvc.lock`` describe); and it travels with the tag on every push and
fetch, so a release and its signature cannot be separated.  GTO reads only the subject line:
``gto show`` and ``gto history`` list a signed release as any other.  ``shelf get`` can also
write it as ``model.sig`` beside the files (:func:`write_sidecar`), for model-signing's own CLI
or an air-gapped copy.

**Which policy counts.** ``release.trust`` and ``release.require_signature`` in params.yaml.
Whoever can push a tag can usually push a commit too, so the policy is never read from the
release's own commit.  :meth:`TrustPolicy.effective` reads it from the protected branch
``gate.baseline`` (``main``, else ``origin/main``), key files included, *tightened* by the working
tree: a signature is required where either requires one, and a signer is trusted only when both
trust it.  So a local edit can revoke a key or demand signatures at once, but a new key counts only
once it is merged to the protected branch.  With no such branch (a detached CI checkout without
it) the working tree's policy is used alone, and the result says so in ``source``.

**"Per stage".** ``require_signature: true`` requires a signature for every use of every release;
``false`` for none (a signature present and made by a trusted signer is still verified, so a
tampered signed release is refused either way).  A list of stages requires it when the release is
resolved by one of those stage names (``load("prod")``), currently holds one of them
(``load("v1.2.0")`` while v1.2.0 is prod), or is being promoted to one.

**What is refused** (:class:`~modelshelf.errors.IntegrityError`, exit 4, one line): an unsigned
release where a signature is required; a signature that does not verify; a signer the policy
does not trust (where required; elsewhere the result is ``"untrusted"``, not an error, because
nothing can be checked); a signature over other files than the release's; files that differ from
what was signed; a signed card whose name or version is not the tag's.  A malformed signature
block in a tag is refused always.

model-signing and its Sigstore stack are imported only when a signature is made or checked (they
cost about 0.4 s to import): projects that never sign do not pay.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import yaml

from modelshelf import artefacts
from modelshelf.card import CARD_FILE, parse_card
from modelshelf.errors import ConfigError, IntegrityError, ReleaseRefused
from modelshelf.gitrepo import GitRepo
from modelshelf.params import Params, TrustedIdentity, load_params, parse_params

if TYPE_CHECKING:
    from modelshelf.registry.core import Release, Workspace

SIGNATURE_FILE = "model.sig"
BEGIN = "-----BEGIN MODELSHELF SIGNATURE-----"
END = "-----END MODELSHELF SIGNATURE-----"
SIGNING_KEY_ENV = "SHELF_SIGNING_KEY"
SIGNING_PASSWORD_ENV = "SHELF_SIGNING_KEY_PASSWORD"
SIGSTORE = "sigstore"
_MEDIA_TYPES = ("application/vnd.dev.sigstore.bundle.v0.3+json", "application/vnd.dev.sigstore.bundle+json;version=0.3")
_CURVES = ("secp256r1", "secp384r1", "secp521r1")   # what model-signing accepts
_SIGN_REMEDY = "release a version signed by a trusted signer (`shelf release --sign`)"


# --- keys ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySpec:
    """How to sign: an EC private key (``key``), a certificate and its key (``certificate``), or
    keyless Sigstore (``sigstore``: needs a network and an OIDC identity)."""

    kind: Literal["key", "certificate", "sigstore"]
    private_key: Path | None = None
    certificate: Path | None = None
    chain: tuple[Path, ...] = ()
    password: str | None = field(default=None, repr=False)
    identity_token: str | None = field(default=None, repr=False)
    oidc_issuer: str | None = None
    use_staging: bool = False

    @classmethod
    def from_options(cls, *, sign: bool = False, key: str | None = None, cert: str | None = None,
                     chain: Sequence[str] = (), env: Mapping[str, str] | None = None) -> KeySpec | None:
        """The key the CLI options ask for, or None when not signing.

        Args:
            sign: ``--sign``: sign with ``key``, else ``$SHELF_SIGNING_KEY``.
            key: ``--sign-key PATH`` (implies ``sign``), or ``sigstore`` for keyless signing.
            cert: ``--sign-cert PATH``: the signing certificate for ``key``.
            chain: ``--sign-chain PATH``: intermediate certificates, leaf's issuer first.
            env: the environment (default ``os.environ``); ``$SHELF_SIGNING_KEY_PASSWORD``
                decrypts an encrypted key.

        Raises:
            ConfigError: signing was asked for without a key, or a chain without a certificate.
        """
        env = os.environ if env is None else env
        if not (sign or key or cert):
            if chain:
                raise ConfigError("--sign-chain", "given without --sign-cert", "add --sign-cert CERT")
            return None
        key = key or env.get(SIGNING_KEY_ENV) or None
        if key is None:
            raise ConfigError("--sign", f"no signing key: neither --sign-key nor ${SIGNING_KEY_ENV} is set",
                              f"pass --sign-key PATH (an EC private key, PEM) or set {SIGNING_KEY_ENV}")
        if key == SIGSTORE:
            if cert or chain:
                raise ConfigError("--sign-cert", "keyless Sigstore signing takes no certificate",
                                  "drop --sign-cert/--sign-chain or sign with a key")
            return cls("sigstore")
        password = env.get(SIGNING_PASSWORD_ENV) or None
        if chain and not cert:
            raise ConfigError("--sign-chain", "given without --sign-cert", "add --sign-cert CERT")
        if cert:
            return cls("certificate", Path(key), Path(cert), tuple(Path(c) for c in chain), password)
        return cls("key", Path(key), password=password)

    def check(self) -> str:
        """Load the key material now (before any tag or push) and describe the signer.

        Returns:
            ``key sha256:…`` (the public key's fingerprint) or ``certificate CN=…``.

        Raises:
            ConfigError: a file is missing or unreadable, not an EC key on P-256/384/521,
                or the certificate is not the key's.
        """
        if self.kind == "sigstore":
            return "sigstore (keyless)"
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        assert self.private_key is not None
        raw = _read(self.private_key, "signing key")
        try:
            private = serialization.load_pem_private_key(raw, self.password.encode() if self.password else None)
        except TypeError:
            raise ConfigError(str(self.private_key), "the key is encrypted",
                              f"set {SIGNING_PASSWORD_ENV} to its password") from None
        except ValueError:
            raise ConfigError(str(self.private_key), "not a PEM private key (or a wrong password)",
                              "give the private key PEM (`shelf keygen` or `openssl ecparam -genkey`)") from None
        if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name not in _CURVES:
            raise ConfigError(str(self.private_key), "model-signing signs only with EC keys on P-256, P-384, P-521",
                              "generate one: `openssl ecparam -name prime256v1 -genkey -noout`")
        if self.kind == "key":
            return f"key {fingerprint(private.public_key())}"
        assert self.certificate is not None
        from cryptography import x509

        try:
            cert = x509.load_pem_x509_certificate(_read(self.certificate, "signing certificate"))
        except ValueError:
            raise ConfigError(str(self.certificate), "not a PEM certificate", "give the signing certificate") from None
        for link in self.chain:
            try:
                x509.load_pem_x509_certificates(_read(link, "certificate chain"))
            except ValueError:
                raise ConfigError(str(link), "not a PEM certificate", "give the chain's certificates") from None
        if fingerprint(cert.public_key()) != fingerprint(private.public_key()):
            raise ConfigError(str(self.certificate), f"not the certificate of {self.private_key}",
                              "give the certificate issued for this key")
        return f"certificate {cert.subject.rfc4514_string()}"


def fingerprint(public_key: Any) -> str:
    """``sha256:HEX`` of the key's SubjectPublicKeyInfo PEM: model-signing's key hint."""
    from cryptography.hazmat.primitives import serialization

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(pem).hexdigest()


def generate_keypair(directory: str | Path, name: str = "release") -> tuple[Path, Path]:
    """Write a new EC P-256 key pair: ``NAME.key`` (private, mode 0600) and ``NAME.pub``.

    Commit the ``.pub`` and list it in ``release.trust.keys``; keep the ``.key`` out of git.

    Returns:
        The private and the public key's paths.

    Raises:
        ConfigError: either file already exists.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    directory = Path(directory)
    private_path, public_path = directory / f"{name}.key", directory / f"{name}.pub"
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(str(path), "already exists", "choose another directory or name")
    key = ec.generate_private_key(ec.SECP256R1())
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


# --- signing -------------------------------------------------------------------------------


def release_files(card: Mapping[str, Any]) -> list[str]:
    """The files a release signature covers: the card's artefacts and ``card.json``, sorted."""
    files = {CARD_FILE}
    for rec in card["artefacts"].values():
        files.add(_safe_name(rec["file"]))
    return sorted(files)


def sign(directory: str | Path, files: Iterable[str], key: KeySpec) -> bytes:
    """Sign ``files`` (paths relative to ``directory``) with model-signing; nothing else is signed.

    Args:
        directory: the release directory (e.g. the workspace's ``models/``).
        files: the files to sign, relative to ``directory`` (see :func:`release_files`).
        key: how to sign.

    Returns:
        The signature: a Sigstore bundle (JSON bytes).

    Raises:
        ConfigError: the key cannot be used.
        IntegrityError: a file is missing.
    """
    from model_signing import hashing, signing

    key.check()
    directory = Path(directory)
    names = sorted({_safe_name(f) for f in files})
    with tempfile.TemporaryDirectory(prefix="shelf-sign-") as tmp:
        staged = Path(tmp) / "release"
        for name in names:
            _stage(directory / name, staged / name)
        config = signing.Config().set_hashing_config(
            hashing.Config().use_file_serialization(hashing_algorithm="sha256", allow_symlinks=False)
            .set_ignored_paths(paths=[], ignore_git_paths=False))
        if key.kind == "key":
            assert key.private_key is not None
            config.use_elliptic_key_signer(private_key=key.private_key, password=key.password)
        elif key.kind == "certificate":
            # model-signing 1.1 cannot load an empty chain; the leaf itself is a harmless stand-in
            assert key.private_key is not None and key.certificate is not None
            config.use_certificate_signer(private_key=key.private_key, signing_certificate=key.certificate,
                                          certificate_chain=list(key.chain) or [key.certificate])
        else:
            config.use_sigstore_signer(identity_token=key.identity_token, oidc_issuer=key.oidc_issuer,
                                       use_staging=key.use_staging, use_ambient_credentials=True)
        out = Path(tmp) / SIGNATURE_FILE
        config.sign(staged, out)
        bundle = out.read_bytes()
    signed = _payload_digests(_parse_bundle(bundle, "signature"), "signature")
    if sorted(signed) != names:  # model-signing skips what is not a regular file
        raise IntegrityError(str(directory), f"signed {', '.join(sorted(signed))}, not {', '.join(names)}",
                             "the release's files must be regular files")
    return bundle


def sign_release(card_dir: str | Path, card: Mapping[str, Any], key: KeySpec) -> bytes:
    """Sign a release's files in ``card_dir`` and prove the signature covers the card's hashes.

    Args:
        card_dir: the directory holding ``card.json`` and the artefacts it lists.
        card: that card, as parsed (its ``artefacts`` give the files and their sha256).
        key: how to sign.

    Returns:
        The bundle (JSON bytes), to :func:`embed` in the release tag's message.

    Raises:
        ConfigError: the key cannot be used.
        IntegrityError: a file is missing or its bytes are not those the card records.
    """
    card_dir = Path(card_dir)
    bundle = sign(card_dir, release_files(card), key)
    signed = _payload_digests(_parse_bundle(bundle, "signature"), "signature")
    want = {_safe_name(rec["file"]): rec["sha256"] for rec in card["artefacts"].values()}
    for name, digest in want.items():
        if signed.get(name) != digest:  # the file changed after the card was checked
            raise IntegrityError(str(card_dir / name), "its bytes are not those the card records",
                                 "run `dvc repro` (or `dvc checkout`) and release again")
    return bundle


# --- the tag message and the sidecar -------------------------------------------------------


def embed(message: str, bundle: bytes) -> str:
    """``message`` with the signature appended: ``signed-by:``, ``signature-sha256:`` and the
    base64 bundle between the marker lines.  The first line (GTO's) is untouched.

    Raises:
        ValueError: ``message`` already holds a signature block.
    """
    if BEGIN in message:
        raise ValueError("the message already holds a signature block")
    encoded = base64.b64encode(bundle).decode("ascii")
    lines = [message.rstrip("\n"), "",
             f"signed-by: {describe(bundle)}",
             f"signature-sha256: {hashlib.sha256(bundle).hexdigest()}",
             BEGIN, *(encoded[i:i + 76] for i in range(0, len(encoded), 76)), END]
    return "\n".join(lines) + "\n"


def extract(message: str, where: str = "tag message") -> bytes | None:
    """The bundle :func:`embed` put in ``message``, or None when it holds none.

    Raises:
        IntegrityError: the block is damaged (truncated, two blocks, bad base64, or bytes that
            do not match its ``signature-sha256:`` line).
    """
    if BEGIN not in message and END not in message:
        return None
    lines = message.splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() == BEGIN]
    ends = [i for i, line in enumerate(lines) if line.strip() == END]
    sums = [line.split(":", 1)[1].strip() for line in lines if line.startswith("signature-sha256:")]
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0] or len(sums) != 1:
        raise IntegrityError(where, "the signature block is damaged (markers or signature-sha256 line)",
                             "re-create the tag from the release (or delete it) and release again")
    try:
        bundle = base64.b64decode("".join(lines[starts[0] + 1:ends[0]]).strip(), validate=True)
    except (binascii.Error, ValueError):
        raise IntegrityError(where, "the signature block is not base64", "re-create the tag") from None
    if hashlib.sha256(bundle).hexdigest() != sums[0]:
        raise IntegrityError(where, "the signature block does not match its signature-sha256 line",
                             "re-create the tag from the release")
    return bundle


def tag_message(repo: GitRepo, tag: str) -> str | None:
    """The full message of annotated tag ``tag`` (None for a lightweight or missing tag)."""
    proc = subprocess.run(["git", "cat-file", "tag", f"refs/tags/{tag}"], cwd=repo.root,
                          capture_output=True, check=False)
    if proc.returncode != 0:
        return None
    text = proc.stdout.decode("utf-8", errors="replace")
    _, _, body = text.partition("\n\n")
    return body


def bundle_at(repo: GitRepo, tag: str) -> bytes | None:
    """The signature stored in release tag ``tag``'s message, or None when it is unsigned."""
    message = tag_message(repo, tag)
    return None if message is None else extract(message, tag)


def write_sidecar(directory: str | Path, bundle: bytes) -> Path:
    """Write ``bundle`` as ``DIR/model.sig`` (atomically), beside files fetched by ``get``."""
    path = Path(directory) / SIGNATURE_FILE
    with artefacts.atomic_output(path) as out:
        out.write(bundle)
    return path


def read_sidecar(directory: str | Path) -> bytes | None:
    """``DIR/model.sig``, or None when there is none."""
    try:
        return (Path(directory) / SIGNATURE_FILE).read_bytes()
    except FileNotFoundError:
        return None


def describe(bundle: bytes) -> str:
    """Who a bundle says signed it (unverified): ``key sha256:…``, ``certificate CN=…`` or
    ``sigstore IDENTITY``; ``unknown`` when it does not say.

    Raises:
        IntegrityError: ``bundle`` is not a model-signing bundle.
    """
    material = _parse_bundle(bundle, "signature")["verificationMaterial"]
    try:
        return _describe(material)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):  # attacker-shaped JSON
        return "unknown"


def _describe(material: Mapping[str, Any]) -> str:
    from cryptography import x509

    if "publicKey" in material:
        return f"key sha256:{material['publicKey'].get('hint') or '?'}"
    chain = "x509CertificateChain" in material
    raw = material["x509CertificateChain"]["certificates"][0]["rawBytes"] if chain \
        else material["certificate"]["rawBytes"]
    cert = x509.load_der_x509_certificate(base64.b64decode(raw))
    if chain:
        return f"certificate {cert.subject.rfc4514_string()}"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(v) for v in san.get_values_for_type(x509.RFC822Name)] + \
            [str(v) for v in san.get_values_for_type(x509.UniformResourceIdentifier)]
    except x509.ExtensionNotFound:
        names = []
    return f"sigstore {names[0] if names else 'unknown'}"


# --- the trust policy ----------------------------------------------------------------------


@dataclass(frozen=True)
class TrustedKey:
    """A trusted EC public key: where the policy lists it, its PEM and fingerprint."""

    path: str
    pem: bytes = field(repr=False)
    fingerprint: str


@dataclass(frozen=True)
class TrustedCertificate:
    """A trusted CA certificate (PEM, one or more certificates)."""

    path: str
    pem: bytes = field(repr=False)


@dataclass(frozen=True)
class TrustPolicy:
    """Who may sign releases, and where a signature is required (see the module docstring)."""

    keys: tuple[TrustedKey, ...] = ()
    certificates: tuple[TrustedCertificate, ...] = ()
    identities: tuple[TrustedIdentity, ...] = ()
    require: bool | tuple[str, ...] = False
    tag_signers: bytes | None = field(default=None, repr=False)   # an SSH allowed_signers file
    source: str = "params.yaml"

    @property
    def anchors(self) -> bool:
        """True when any signer of model files is trusted."""
        return bool(self.keys or self.certificates or self.identities)

    def requires(self, stages: Iterable[str] = ()) -> bool:
        """Whether a release concerned with ``stages`` must be signed (``True`` requires it always)."""
        if self.require is True:
            return True
        return bool(self.require) and any(s in self.require for s in stages)  # type: ignore[operator]

    @classmethod
    def load(cls, root: str | Path, rev: str | None = None) -> TrustPolicy:
        """The policy in ``root``'s params.yaml: the working tree's, or at git revision ``rev``.

        Args:
            root: the project root (the directory of params.yaml).
            rev: a git revision to read params.yaml and the key files from; None for the
                working tree.

        Raises:
            ConfigError: params.yaml is invalid, or a listed key or certificate file is missing
                or is not a public EC key / PEM certificate.
        """
        root = Path(root)
        if rev is None:
            params, label = load_params(root / "params.yaml"), str(root / "params.yaml")

            def read(path: str) -> bytes | None:
                try:
                    return (root / path).read_bytes()
                except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                    return None
        else:
            repo = GitRepo.discover(root)
            prefix = PurePosixPath(repo.relpath(root))
            label = f"{rev}:{(prefix / 'params.yaml').as_posix()}"
            raw = repo.show(rev, (prefix / "params.yaml").as_posix())
            if raw is None:
                return cls(source=label + " (absent)")
            try:
                params = parse_params(yaml.safe_load(raw.decode("utf-8")), label)
            except (yaml.YAMLError, UnicodeDecodeError):
                raise ConfigError(label, "not valid UTF-8 YAML", f"fix params.yaml on {rev}") from None

            def read(path: str) -> bytes | None:
                return repo.show(rev, (prefix / path).as_posix())
        return cls._from_params(params, label, read, rev)

    @classmethod
    def _from_params(cls, params: Params, label: str, read: Any, rev: str | None) -> TrustPolicy:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        trust = params.release.trust
        remedy = f"commit it to {rev}" if rev else "add the file or fix the path"

        def need(path: str, key: str) -> bytes:
            raw = read(path)
            if raw is None:
                raise ConfigError(f"{label}: {key}", f"{path} not found" + (f" at {rev}" if rev else ""), remedy)
            return raw

        keys = []
        for i, path in enumerate(trust.keys):
            where = f"release.trust.keys[{i}]"
            raw = need(path, where)
            try:
                public = serialization.load_pem_public_key(raw)
            except ValueError:
                private = b"PRIVATE KEY" in raw
                what = "a private key" if private else "not a PEM public key"
                raise ConfigError(f"{label}: {where}", f"{path} is {what}",
                                  "list the public key (`openssl ec -in KEY -pubout`); never commit a private key"
                                  if private else "give an EC public key in PEM") from None
            if not isinstance(public, ec.EllipticCurvePublicKey) or public.curve.name not in _CURVES:
                raise ConfigError(f"{label}: {where}", f"{path} is not an EC P-256/384/521 public key",
                                  "model-signing verifies only EC keys")
            pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
            keys.append(TrustedKey(path, pem, fingerprint(public)))
        certs = []
        for i, path in enumerate(trust.certificates):
            raw = need(path, f"release.trust.certificates[{i}]")
            try:
                x509.load_pem_x509_certificates(raw)
            except ValueError:
                raise ConfigError(f"{label}: release.trust.certificates[{i}]", f"{path} is not a PEM certificate",
                                  "give the CA certificate(s) in PEM") from None
            certs.append(TrustedCertificate(path, raw))
        signers = need(trust.tag_signers, "release.trust.tag_signers") if trust.tag_signers else None
        return cls(tuple(keys), tuple(certs), trust.identities, params.release.require_signature, signers, label)

    @classmethod
    def effective(cls, root: str | Path) -> TrustPolicy:
        """The policy the registry enforces: the protected branch's (``gate.baseline``, else
        ``origin/`` + it), tightened by the working tree's; the working tree's alone when
        neither ref exists.

        Raises:
            ConfigError: either policy is invalid (see :meth:`load`).
        """
        root = Path(root)
        work = cls.load(root)
        baseline = load_params(root / "params.yaml").gate.baseline
        repo = GitRepo.discover(root)
        for ref in (baseline, f"origin/{baseline}"):
            if repo.resolve(ref):
                return cls.load(root, ref).tightened_by(work)
        return replace(work, source=f"{work.source} (working tree; {baseline} not found)")

    def tightened_by(self, other: TrustPolicy) -> TrustPolicy:
        """This policy, requiring a signature where ``other`` also does and trusting only the
        signers both trust."""
        if self.require is True or other.require is True:
            require: bool | tuple[str, ...] = True
        else:
            require = tuple(dict.fromkeys((*(self.require or ()), *(other.require or ()))))  # type: ignore[misc]
            require = require or False
        theirs_keys = {k.fingerprint for k in other.keys}
        theirs_certs = {c.pem for c in other.certificates}
        signers = _common_signers(self.tag_signers, other.tag_signers)
        return TrustPolicy(tuple(k for k in self.keys if k.fingerprint in theirs_keys),
                           tuple(c for c in self.certificates if c.pem in theirs_certs),
                           tuple(i for i in self.identities if i in other.identities),
                           require, signers, f"{self.source} tightened by {other.source}")


# --- verification --------------------------------------------------------------------------


@dataclass(frozen=True)
class SignatureCheck:
    """What a signature check found: ``verified``, ``unsigned`` or ``untrusted`` (signed by a
    signer the policy does not list, where no signature is required), whether one was required,
    who signed, and the files it covers."""

    status: Literal["verified", "unsigned", "untrusted"]
    required: bool
    signer: str = ""
    files: tuple[str, ...] = ()

    @property
    def verified(self) -> bool:
        return self.status == "verified"


def verify_digests(digests: Mapping[str, str], bundle: bytes | None, policy: TrustPolicy, *,
                   stages: Collection[str] = (), where: str = "signature") -> SignatureCheck:
    """Check ``bundle`` against the policy and the expected files' sha256, without reading files.

    Use it where the bytes were already checked against a trusted card (``digests`` are then
    that card's artefact hashes plus the card's own sha256) or where there are no bytes
    (``promote``).

    Args:
        digests: ``{file: sha256}``: exactly the files the signature must cover.
        bundle: the signature, or None when the release is unsigned.
        policy: the trust policy (see :meth:`TrustPolicy.effective`).
        stages: the stages in play (see the module docstring).
        where: what the error messages name (e.g. the tag).

    Returns:
        What was found.

    Raises:
        IntegrityError: refused (see the module docstring).
    """
    required = policy.requires(stages)
    listed = sorted(set(stages) & set(policy.require)) if isinstance(policy.require, tuple) else []
    why = ("release.require_signature requires every release to be signed" if policy.require is True
           else f"release.require_signature requires a signature for {', '.join(listed)}")
    if bundle is None:
        if required:
            raise IntegrityError(where, f"unsigned, but {why}", _SIGN_REMEDY)
        return SignatureCheck("unsigned", False)
    parsed = _parse_bundle(bundle, where)
    signer = describe(bundle)
    manifest = _verified_manifest(bundle, parsed, policy, where)
    if manifest is None:
        if required:
            raise IntegrityError(where, f"signed by {signer}, which {policy.source} release.trust does not trust",
                                 f"add its public key to release.trust on the protected branch, or {_SIGN_REMEDY}")
        return SignatureCheck("untrusted", False, signer)
    signer, signed = manifest
    want = {_safe_name(k): v for k, v in digests.items()}
    if set(signed) != set(want):
        raise IntegrityError(where, f"the signature covers {', '.join(sorted(signed)) or 'nothing'}, "
                             f"not the release's {', '.join(sorted(want))}", _SIGN_REMEDY)
    for name in sorted(want):
        if signed[name] != want[name]:
            raise IntegrityError(where, f"{name} differs from the signed file (sha256 {want[name][:12]}…, "
                                 f"signed {signed[name][:12]}…)", "fetch the release again; if it persists, "
                                 "the release was tampered with: do not use it")
    return SignatureCheck("verified", required, signer, tuple(sorted(want)))


def verify(directory: str | Path, files: Iterable[str], bundle: bytes | None, policy: TrustPolicy, *,
           stages: Collection[str] = (), where: str = "", version: str | None = None,
           name: str | None = None) -> SignatureCheck:
    """Check a release directory's ``files`` against ``bundle`` and the trust policy.

    Args:
        directory: the release directory (as ``shelf get`` writes it).
        files: the files the signature must cover (:func:`release_files` of the trusted card).
        bundle: the signature, or None when the release is unsigned.
        policy: the trust policy (see :meth:`TrustPolicy.effective`).
        stages: the stages in play (see the module docstring).
        where: what the error messages name (default: the directory).
        version: when given, the signed ``card.json`` must be this version's.
        name: when given, the signed ``card.json`` must be this model's.

    Returns:
        What was found.

    Raises:
        IntegrityError: refused (see the module docstring), or a file is missing.
    """
    directory = Path(directory)
    where = where or str(directory)
    digests = {}
    for f in files:
        path = directory / _safe_name(f)
        try:
            digests[f] = artefacts.sha256_file(path)
        except (FileNotFoundError, IsADirectoryError):
            raise IntegrityError(str(path), "missing", "fetch the release again (`shelf get`)") from None
    check = verify_digests(digests, bundle, policy, stages=stages, where=where)
    if check.verified and (version is not None or name is not None):
        _check_identity(parse_card((directory / CARD_FILE).read_bytes(), str(directory / CARD_FILE)),
                        where, version, name)
    return check


def check_release(ws: Workspace, rel: Release, directory: str | Path | None = None, *,
                  spec: str | None = None, to: str | None = None,
                  policy: TrustPolicy | None = None) -> SignatureCheck:
    """The registry's one call: check release ``rel``'s signature (from its tag) against the
    effective trust policy, for the files in ``directory`` or, without one, for the card at
    the tag.

    Args:
        ws: the workspace.
        rel: the release (its tag, version and the stages it holds now).
        directory: the release's files as written by ``restore``; they are hashed here.  Without
            it only the card at the tag is read (for ``promote``).
        spec: what the release was resolved by (``prod`` makes ``prod`` a stage in play).
        to: the stage it is being promoted to.
        policy: the policy to use (default :meth:`TrustPolicy.effective`; pass it to reuse one).

    Returns:
        What was found.

    Raises:
        IntegrityError: refused.
        ConfigError: the policy is invalid.
    """
    policy = TrustPolicy.effective(ws.root) if policy is None else policy
    stages = {*rel.stages, *(s for s in (spec, to) if s)}
    if policy.tag_signers is not None:  # release.trust.tag_signers: the tag itself must be signed
        verify_tag(ws.repo, rel.tag, policy.tag_signers)
    bundle = bundle_at(ws.repo, rel.tag)
    raw = ws.repo.show(rel.tag, ws.card)
    if raw is None:
        raise IntegrityError(rel.tag, f"no {ws.card} at this release", "this tag is not a modelshelf release")
    card = parse_card(raw, f"{rel.tag}:{ws.card}")
    if directory is not None:
        directory = Path(directory)
        if (directory / CARD_FILE).read_bytes() != raw:  # the anchor is the card at the tag
            raise IntegrityError(str(directory / CARD_FILE), f"not the card at {rel.tag}", "fetch the release again")
        return verify(directory, release_files(card), bundle, policy, stages=stages, where=rel.tag,
                      version=str(rel.version), name=ws.name)
    digests = {_safe_name(rec["file"]): rec["sha256"] for rec in card["artefacts"].values()}
    digests[CARD_FILE] = hashlib.sha256(raw).hexdigest()
    check = verify_digests(digests, bundle, policy, stages=stages, where=rel.tag)
    if check.verified:
        _check_identity(card, rel.tag, str(rel.version), ws.name)
    return check


def release_preflight(root: str | Path, key: KeySpec | None) -> TrustPolicy:
    """Before releasing: refuse an unsigned release the policy could never accept, or a key it
    does not trust; check the key material.  Returns the effective policy.

    Raises:
        ReleaseRefused: ``require_signature: true`` and no key, or a required signature by a
            key the policy does not list.
        ConfigError: the key or the policy cannot be used.
    """
    policy = TrustPolicy.effective(root)
    signer = key.check() if key is not None else None
    if key is None and policy.require is True:
        raise ReleaseRefused("release.require_signature", "every release must be signed",
                             f"pass --sign (with --sign-key PATH or {SIGNING_KEY_ENV})")
    if key is not None and key.kind == "key" and policy.require and policy.keys:
        if signer and signer.split(" ", 1)[1] not in {k.fingerprint for k in policy.keys}:
            raise ReleaseRefused(str(key.private_key), f"{signer} is not in {policy.source} release.trust.keys",
                                 "sign with a trusted key, or add its public key on the protected branch")
    return policy


def tag_preflight(repo: GitRepo, policy: TrustPolicy, sign_tag: str | Path | bool | None) -> list[str] | None:
    """How to sign the release tag (the ``signed`` options of ``create_tag``; None: unsigned).

    ``sign_tag``: an SSH private key, True for git's own signing configuration, or None (git
    signs anyway when its ``tag.gpgSign`` is true).

    Raises:
        ReleaseRefused: ``release.trust.tag_signers`` is set and the tag would not be signed.
        ConfigError: the key cannot be read.
    """
    if sign_tag is None or sign_tag is False:
        configured = repo.run("config", "--bool", "tag.gpgSign", check=False).stdout.strip() == "true"
        if configured:
            return []
        if policy.tag_signers is not None:
            raise ReleaseRefused("release.trust.tag_signers", "release tags must be signed by an allowed signer",
                                 "pass --sign-tag KEY (an SSH private key), or set git's tag.gpgSign and user.signingKey")
        return None
    if sign_tag is True:
        return []
    _read(Path(sign_tag), "the tag signing key")
    return ssh_signing_args(sign_tag)


# --- git tag signatures (SSH) --------------------------------------------------------------

_TAG_SIGNATURE_MARKS = ("-----BEGIN SSH SIGNATURE-----", "-----BEGIN PGP SIGNATURE-----")


def ssh_signing_args(key: str | Path) -> list[str]:
    """Options to put before ``tag -s`` (``git -c … tag -s …``) to sign a tag with SSH key ``key``."""
    return ["-c", "gpg.format=ssh", "-c", f"user.signingKey={Path(key).resolve()}"]


def _tag_is_signed(message: str | None) -> bool:
    """Whether a tag's message carries git's signature block (SSH or OpenPGP)."""
    return message is not None and any(m in message for m in _TAG_SIGNATURE_MARKS)


def _common_signers(ours: bytes | None, theirs: bytes | None) -> bytes | None:
    """The allowed signers both files list (an entry is a whole line); either alone stands."""
    if ours is None or theirs is None:
        return ours if theirs is None else theirs
    mine = [line for line in ours.splitlines() if line.strip() and not line.lstrip().startswith(b"#")]
    other = {line.strip() for line in theirs.splitlines()}
    return b"".join(line + b"\n" for line in mine if line.strip() in other)


def verify_tag(repo: GitRepo, tag: str, allowed_signers: bytes) -> str:
    """Verify tag ``tag``'s SSH signature against an ``allowed_signers`` file's contents.

    Returns:
        git's ``Good "git" signature for PRINCIPAL …`` line.

    Raises:
        IntegrityError: the tag is unsigned, or not signed by an allowed signer.
    """
    message = tag_message(repo, tag)
    if not _tag_is_signed(message):
        raise IntegrityError(tag, "the tag is not signed", "sign release tags with a key in release.trust.tag_signers")
    with tempfile.TemporaryDirectory(prefix="shelf-tag-") as tmp:
        signers = Path(tmp) / "allowed_signers"
        signers.write_bytes(allowed_signers)
        proc = repo.run("-c", "gpg.format=ssh", "-c", f"gpg.ssh.allowedSignersFile={signers}",
                        "verify-tag", f"refs/tags/{tag}", check=False)
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    if proc.returncode != 0:
        raise IntegrityError(tag, "the tag's signature is not from an allowed signer",
                             "sign release tags with a key in release.trust.tag_signers")
    return next((line for line in lines if line.startswith("Good")), lines[-1] if lines else "good")


# --- internals -----------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(str(path), f"{what} not found", "give the right path") from None
    except OSError as exc:
        raise ConfigError(str(path), f"{what} cannot be read ({exc.strerror})", "check its permissions") from None


def _safe_name(name: str) -> str:
    """A card file name, refused if it could leave the release directory."""
    pure = PurePosixPath(name)
    if not name or pure.is_absolute() or ".." in pure.parts or "\\" in name:
        raise IntegrityError(name or "(empty)", "not a file name inside the release directory",
                             "the card is malformed: do not use this release")
    return pure.as_posix()


def _stage(src: Path, dst: Path) -> None:
    """Hard-link (else copy) ``src`` to ``dst``, following a symlink at ``src``."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not src.is_file():
        raise IntegrityError(str(src), "missing", "run `dvc repro` (or `dvc checkout`) first")
    try:
        os.link(src.resolve(), dst)
    except OSError:
        shutil.copyfile(src, dst)


def _parse_bundle(bundle: bytes, where: str) -> dict[str, Any]:
    try:
        parsed = json.loads(bundle)
    except (ValueError, UnicodeDecodeError):
        raise IntegrityError(where, "the signature is not a JSON Sigstore bundle", _SIGN_REMEDY) from None
    if not isinstance(parsed, dict) or parsed.get("mediaType") not in _MEDIA_TYPES \
            or not isinstance(parsed.get("verificationMaterial"), dict) or "dsseEnvelope" not in parsed:
        raise IntegrityError(where, "the signature is not a model-signing bundle (Sigstore v0.3, DSSE)",
                             _SIGN_REMEDY)
    return parsed


def _payload_digests(parsed: Mapping[str, Any], where: str) -> dict[str, str]:
    """``{file: sha256}`` from a bundle's in-toto statement (authentic only once verified)."""
    try:
        statement = json.loads(base64.b64decode(parsed["dsseEnvelope"]["payload"]))
        resources = statement["predicate"]["resources"]
        out = {}
        for r in resources:
            if r["algorithm"] != "sha256":
                raise IntegrityError(where, f"the signature uses {r['algorithm']}, not sha256", _SIGN_REMEDY)
            out[str(r["name"])] = str(r["digest"])
        return out
    except (AttributeError, KeyError, TypeError, ValueError):
        raise IntegrityError(where, "the signature's statement is malformed", _SIGN_REMEDY) from None


def _verified_manifest(bundle: bytes, parsed: Mapping[str, Any], policy: TrustPolicy,
                       where: str) -> tuple[str, dict[str, str]] | None:
    """``(signer, {file: sha256})`` once model-signing has verified the bundle with a signer the
    policy trusts; None when no trusted signer could have made it.

    This uses model-signing's verifier classes directly (``model_signing._signing``): its public
    ``verifying.Config.verify`` always re-hashes the files, and ``promote`` has no files.
    """
    from model_signing._signing import sign_certificate, sign_ec_key, sign_sigstore, sign_sigstore_pb

    material = parsed["verificationMaterial"]
    with tempfile.TemporaryDirectory(prefix="shelf-verify-") as tmp:
        sig_path = Path(tmp) / SIGNATURE_FILE
        sig_path.write_bytes(bundle)
        if "publicKey" in material:
            public_key = material["publicKey"]
            hint = public_key.get("hint") if isinstance(public_key, dict) else None
            if not hint or not isinstance(hint, str):  # model-signing would print a warning and try the key anyway
                raise IntegrityError(where, "the signature names no key (pre-1.0 model-signing format)", _SIGN_REMEDY)
            trusted = [k for k in policy.keys if k.fingerprint == f"sha256:{hint}"]
            if not trusted:
                return None
            key_path = Path(tmp) / "trusted.pub"
            key_path.write_bytes(trusted[0].pem)
            signer = f"key {trusted[0].path} ({trusted[0].fingerprint[:19]}…)"
            return signer, _run_verifier(lambda: sign_ec_key.Verifier(key_path),
                                         lambda: sign_sigstore_pb.Signature.read(sig_path), where)
        if "x509CertificateChain" in material:
            if not policy.certificates:
                return None
            cert_path = Path(tmp) / "trusted-ca.pem"
            cert_path.write_bytes(b"\n".join(c.pem for c in policy.certificates))
            try:
                digests = _run_verifier(lambda: sign_certificate.Verifier([cert_path]),
                                        lambda: sign_sigstore_pb.Signature.read(sig_path), where, chain=True)
            except _Untrusted:
                return None
            return describe(bundle), digests
        if "certificate" in material:  # keyless: Sigstore's trust root (TUF) needs the network
            for ident in policy.identities:
                try:
                    verifier = sign_sigstore.Verifier(identity=ident.identity, oidc_issuer=ident.issuer)
                except Exception as exc:  # noqa: BLE001 - e.g. TUFError offline: nothing can be checked
                    raise IntegrityError(where, f"the keyless signature cannot be checked here ({type(exc).__name__})",
                                         "Sigstore verification needs a network; retry where there is one") from None
                try:
                    return f"sigstore {ident.identity} ({ident.issuer})", _run_verifier(
                        lambda v=verifier: v, lambda: sign_sigstore.Signature.read(sig_path), where)
                except IntegrityError:
                    continue  # signed by another identity: try the next trusted one
            return None
    raise IntegrityError(where, "the signature carries no key, certificate or chain", _SIGN_REMEDY)


class _Untrusted(Exception):
    """A certificate chain that does not lead to a trusted CA."""


def _run_verifier(make: Any, read: Any, where: str, chain: bool = False) -> dict[str, str]:
    try:
        verifier, signature = make(), read()
    except Exception as exc:  # noqa: BLE001 - any failure to read the bundle means no valid signature
        raise IntegrityError(where, f"the signature cannot be read ({type(exc).__name__})", _SIGN_REMEDY) from None
    try:
        manifest = verifier.verify(signature)
    except Exception as exc:  # noqa: BLE001 - whatever the verifier raises, nothing was verified
        if chain and type(exc).__name__ == "X509StoreContextError":
            raise _Untrusted from None
        detail = str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__
        raise IntegrityError(where, f"the signature does not verify ({detail})",
                             "the release or its tag was altered: do not use it") from None
    out = {}
    for rd in manifest.resource_descriptors():
        if rd.digest.algorithm != "sha256":
            raise IntegrityError(where, f"the signature uses {rd.digest.algorithm}, not sha256", _SIGN_REMEDY)
        out[rd.identifier] = rd.digest.digest_hex
    return out


def _check_identity(card: Mapping[str, Any], where: str, version: str | None, name: str | None) -> None:
    """A signed card is bound to its version and model: a signature copied to another tag fails."""
    if version is not None and str(card.get("version")) != version:
        raise IntegrityError(where, f"the signed card is v{card.get('version')}'s, not v{version}'s",
                             "the signature was copied from another release: do not use it")
    if name is not None and card.get("name") != name:
        raise IntegrityError(where, f"the signed card is model '{card.get('name')}''s, not '{name}''s",
                             "the signature was copied from another model: do not use it")


__all__ = ["BEGIN", "END", "SIGNATURE_FILE", "SIGNING_KEY_ENV", "KeySpec", "SignatureCheck", "TrustPolicy",
           "TrustedCertificate", "TrustedKey", "bundle_at", "check_release", "describe", "embed", "extract",
           "fingerprint", "generate_keypair", "read_sidecar", "release_files", "release_preflight", "sign",
           "sign_release", "ssh_signing_args", "tag_message", "tag_preflight", "verify", "verify_digests",
           "verify_tag", "write_sidecar"]
