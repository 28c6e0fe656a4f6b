"""``shelf`` subcommands on what a release is made of and who vouches for it: bom (a CycloneDX
1.6 ML-BOM), env (a requirements file that recreates its environment) and keygen (a signing key)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from modelshelf.commands import Add, console
from modelshelf.errors import ConfigError


def _emit(text: str, out: str | None, what: str, as_json: dict[str, Any] | None = None) -> int:
    """``text`` to stdout (no ``-o`` or ``-o -``) or atomically to the file ``out``; with
    ``as_json``, that document on stdout instead, with ``file``: where ``text`` went (None: nowhere)."""
    to_file = out not in (None, "-")
    if not to_file:
        if as_json is not None:
            console.emit_json({**as_json, "file": None})
        else:
            sys.stdout.write(text)
        return 0
    from modelshelf import artefacts

    path = Path(out)
    if path.is_dir():
        raise ConfigError(str(path), "is a directory", "give a file name, e.g. `-o bom.json`")
    try:
        artefacts.write_text(path, text)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot write it ({exc.strerror or type(exc).__name__})",
                          "pick a writable path, or `-o -` for stdout") from None
    console.say(f"wrote {what} to {path}", err=True)
    if as_json is not None:
        console.emit_json({**as_json, "file": str(path)})
    return 0


def cmd_bom(a: argparse.Namespace) -> int:
    import json

    from modelshelf import api

    text = api.bom(".", a.version)
    return _emit(text, a.out, "the CycloneDX 1.6 BOM",
                 {"release": a.version, "bom": json.loads(text)} if a.json else None)


def cmd_env(a: argparse.Namespace) -> int:
    from modelshelf import api

    text = api.requirements(".", a.version)
    found = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return _emit(text, a.out, "the requirements",
                 {"release": a.version, "requirements": found, "text": text} if a.json else None)


def cmd_keygen(a: argparse.Namespace) -> int:
    from modelshelf import api

    private, public = api.generate_keypair(a.directory, a.name)
    if a.json:
        console.emit_json({"private_key": str(private), "public_key": str(public)})
        return 0
    console.say(f"wrote {private} (keep it secret, out of git) and {public}: commit it and list it in "
                "params.yaml release.trust.keys, then `shelf release --sign --sign-key " + str(private) + "`")
    return 0


def register(add: Add) -> None:
    """Add these subcommands and their arguments."""
    p = add("bom", cmd_bom, "write a release's ML bill of materials (CycloneDX 1.6 JSON) from the card at its tag")
    p.add_argument("version", help="vX.Y.Z, latest or a stage")
    p.add_argument("-o", "--out", metavar="FILE", help="write to FILE (atomically) instead of stdout ('-')")
    p.add_argument("--json", action="store_true", help="print {release, bom, file} (the BOM parsed) as JSON")

    p = add("env", cmd_env, "print a requirements file that recreates a release's Python environment")
    p.add_argument("version", help="vX.Y.Z, latest or a stage")
    p.add_argument("-o", "--out", metavar="FILE", help="write to FILE (atomically) instead of stdout ('-')")
    p.add_argument("--json", action="store_true", help="print {release, requirements, text, file} as JSON")

    p = add("keygen", cmd_keygen, "make an EC P-256 key pair for signing releases (shelf release --sign)")
    p.add_argument("directory", type=Path, help="where to write NAME.key (mode 0600) and NAME.pub")
    p.add_argument("--name", default="release", help="file name stem (default: release)")
    p.add_argument("--json", action="store_true", help="print the two paths as JSON")
