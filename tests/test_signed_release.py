"""Signed releases end to end, through the CLI: `shelf release --sign`, then `get`, `load`,
`serve` and `promote` under a trust policy in params.yaml (issue 13).

Keys are made here with ``cryptography``; nothing needs a network.  The policy is committed on
``main`` (the protected branch: the policy that counts is read there).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, Project
from test_signing import write_key

pytestmark = pytest.mark.slow


def trust(p: Project, pub: Path, require: bool | list[str]) -> None:
    """Commit ``pub`` under keys/ and a policy trusting it on main."""
    (p.root / "keys").mkdir(exist_ok=True)
    (p.root / "keys" / pub.name).write_bytes(pub.read_bytes())
    p.set_params(release={"trust": {"keys": [f"keys/{pub.name}"]}, "require_signature": require})
    p.commit("trust policy")


def load(p: Project, spec: str) -> subprocess.CompletedProcess[str]:
    """``modelshelf.load(spec)`` in a fresh interpreter; prints the loaded version."""
    code = ("import sys, modelshelf\nfrom modelshelf.errors import ShelfError\ntry:\n"
            f"    print(modelshelf.load({spec!r}).version)\n"
            "except ShelfError as exc:\n    sys.exit(print(exc.message, file=sys.stderr) or exc.exit_code)\n")
    return subprocess.run([str(BIN / "python"), "-c", code], cwd=p.root, capture_output=True, text=True,
                          check=False, timeout=120)


def serve_refusal(p: Project, spec: str) -> subprocess.CompletedProcess[str]:
    """``shelf serve`` that must refuse to start (a hang fails the test at the timeout)."""
    return subprocess.run([str(BIN / "shelf"), "serve", "--model", spec, "--port", "0"], cwd=p.root,
                          capture_output=True, text=True, check=False, timeout=120)


def one_line_exit_4(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    assert proc.returncode == 4, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, proc.stderr


def test_a_signed_release_is_served_and_loaded_and_an_unsigned_or_untrusted_one_is_refused(
        remote_project: Project, tmp_path: Path) -> None:
    p = remote_project
    p.shelf("keygen", str(tmp_path / "k"))
    trusted_key, trusted_pub = tmp_path / "k" / "release.key", tmp_path / "k" / "release.pub"
    assert trusted_key.stat().st_mode & 0o077 == 0
    stranger_key, _ = write_key(tmp_path / "k", "stranger")
    trust(p, trusted_pub, require=False)

    # v1.0.0 signed by the trusted key; the signature travels in the tag message.
    out = p.shelf("release", "--push", "--sign", "--sign-key", str(trusted_key)).stdout
    assert "signed" in out
    message = p.git("cat-file", "tag", "model@v1.0.0").stdout
    assert "BEGIN MODELSHELF SIGNATURE" in message and message.splitlines()[5].startswith("Registering")

    # A required signature that is there and trusted: every path serves it.
    trust(p, trusted_pub, require=True)
    assert load(p, "v1.0.0").stdout.strip() == "1.0.0"
    p.shelf("get", "v1.0.0", "-o", str(tmp_path / "got"), "--signature")
    assert (tmp_path / "got" / "model.joblib").is_file() and (tmp_path / "got" / "model.sig").is_file()

    # v1.1.0 unsigned (released while the policy did not require it), and v1.2.0 signed by a stranger.
    trust(p, trusted_pub, require=False)
    for n, key in ((150, None), (120, stranger_key)):
        p.set_params(train={"hyperparams": {"n_estimators": n}}, gate={"tolerance": 0.05})
        p.dvc("repro")
        p.commit(f"model n={n}")
        p.shelf("release", "--push", *(["--sign", "--sign-key", str(key)] if key else []))
    trust(p, trusted_pub, require=True)

    audit = p.shelf("verify", "--all", check=False)  # the audit applies the same policy to every release
    said = audit.stdout + audit.stderr
    assert audit.returncode == 4, said
    assert "model@v1.1.0: signature" in said and "model@v1.2.0: signature" in said, said
    assert "model@v1.0.0: signature" not in said, said

    for spec, words in (("v1.1.0", ("model@v1.1.0", "signed")), ("v1.2.0", ("model@v1.2.0", "trust"))):
        one_line_exit_4(load(p, spec), *words)
        one_line_exit_4(serve_refusal(p, spec), *words)
        one_line_exit_4(p.shelf("get", spec, "-o", str(tmp_path / f"out-{spec}"), check=False), *words)
        assert not (tmp_path / f"out-{spec}").exists() or not any((tmp_path / f"out-{spec}").iterdir())

    # A stage that requires a signature takes only a signed, trusted release.
    trust(p, trusted_pub, require=["prod"])
    assert p.shelf("promote", "v1.1.0", "--to", "prod", check=False).returncode == 4
    p.shelf("promote", "v1.0.0", "--to", "prod")
    assert load(p, "prod").stdout.strip() == "1.0.0"
    assert load(p, "v1.1.0").stdout.strip() == "1.1.0"  # not required outside prod


def test_a_release_whose_signed_bytes_were_replaced_is_refused(remote_project: Project, tmp_path: Path) -> None:
    p = remote_project
    key, pub = write_key(tmp_path / "k", "release")
    trust(p, pub, require=True)
    p.shelf("release", "--push", "--sign", "--sign-key", str(key))
    assert load(p, "v1.0.0").stdout.strip() == "1.0.0"

    # Flip one byte of the model in the local DVC cache and in the DVC remote: nowhere are the
    # signed bytes left, so loading and serving refuse (the card at the tag and the signature agree).
    model = (p.root / "models" / "model.joblib").read_bytes()
    for base in (p.root / ".dvc" / "cache", p.root.parent / f"{p.root.name}-dvcstore"):
        for obj in base.rglob("*"):
            if obj.is_file() and obj.read_bytes() == model:
                obj.chmod(0o644)
                data = bytearray(model)
                data[100] ^= 1
                obj.write_bytes(bytes(data))
    shutil.rmtree(p.root / ".dvc" / "tmp" / "modelshelf", ignore_errors=True)
    one_line_exit_4(load(p, "v1.0.0"), "model@v1.0.0")
    one_line_exit_4(serve_refusal(p, "v1.0.0"))


def ssh_key(directory: Path, who: str) -> tuple[Path, str]:
    """An ed25519 SSH key pair; returns the private key and its allowed_signers line."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", who, "-f", str(directory / who)],
                   check=True, capture_output=True)
    kind, blob = (directory / f"{who}.pub").read_text().split()[:2]
    return directory / who, f"{who}@example.invalid {kind} {blob}\n"


@pytest.mark.skipif(shutil.which("ssh-keygen") is None, reason="ssh-keygen is not installed")
def test_tag_signers_make_signed_release_tags_mandatory(remote_project: Project, tmp_path: Path) -> None:
    """``release.trust.tag_signers``: ``release --sign-tag KEY`` signs the tag with git's SSH
    signing; an unsigned tag, or one signed by another key, is refused by load, get, serve,
    promote and ``verify --all``, and ``release`` refuses to make one."""
    p = remote_project
    releaser, allowed = ssh_key(tmp_path / "ssh", "releaser")
    stranger, _ = ssh_key(tmp_path / "ssh", "stranger")
    (p.root / "keys").mkdir(exist_ok=True)
    (p.root / "keys" / "allowed_signers").write_text(allowed)
    p.set_params(release={"trust": {"tag_signers": "keys/allowed_signers"}})
    p.commit("tag signers")

    refused = p.shelf("release", "--push", check=False)   # would make a tag nothing accepts
    assert refused.returncode == 7 and "tag_signers" in refused.stderr and "--sign-tag" in refused.stderr
    assert not p.git("tag", "-l", "model@*").stdout.strip()
    wrong = p.shelf("release", "--push", "--sign-tag", str(stranger), check=False)
    assert wrong.returncode == 4 and "allowed signer" in wrong.stderr, wrong.stderr
    assert not p.git("tag", "-l", "model@*").stdout.strip()   # the refused tag was removed

    p.shelf("release", "--push", "--sign-tag", str(releaser))
    assert "BEGIN SSH SIGNATURE" in p.git("cat-file", "tag", "model@v1.0.0").stdout
    assert load(p, "v1.0.0").stdout.strip() == "1.0.0"
    assert p.shelf("verify", "--all").returncode == 0
    assert p.run("gto", "show", "--json").returncode == 0    # GTO reads a signed tag as any other

    # Someone with push rights re-creates the tag unsigned, then signed by another key.
    commit = p.git("rev-list", "-n", "1", "model@v1.0.0").stdout.strip()
    message = p.git("for-each-ref", "--format=%(contents:body)", "refs/tags/model@v1.0.0").stdout
    for how, words in ((["-a"], "not signed"), ([*("-c", "gpg.format=ssh", "-c", f"user.signingKey={stranger}"), "-s"],
                                                 "allowed signer")):
        p.git("tag", "-d", "model@v1.0.0")
        p.git(*how[:-1], "tag", how[-1], "model@v1.0.0", "-m", f"Registering artifact model version v1.0.0\n\n{message}",
              commit)
        one_line_exit_4(load(p, "v1.0.0"), "model@v1.0.0", words)
        one_line_exit_4(serve_refusal(p, "v1.0.0"), words)
        one_line_exit_4(p.shelf("get", "v1.0.0", "-o", str(tmp_path / "out"), check=False), words)
        assert not (tmp_path / "out").exists()
        one_line_exit_4(p.shelf("promote", "v1.0.0", "--to", "dev", check=False), words)
        audit = p.shelf("verify", "--all", check=False)
        assert audit.returncode == 4 and "model@v1.0.0: signature" in audit.stdout + audit.stderr
