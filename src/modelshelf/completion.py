"""Shell completion scripts for ``shelf`` (bash, zsh, fish), made from its argparse parser.

The script knows what the parser knows when it is made: the commands, each command's flags,
the choices of a choice flag, and which arguments are paths (completed as files).  Make it
again after an upgrade that adds commands.  Standard library only: no argcomplete, and the
script never runs ``shelf`` while completing.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field

SHELLS = ("bash", "zsh", "fish")

# Metavars that name a file or directory even when the argument's type is a plain str.
_PATH_METAVARS = frozenset(("FILE", "PATH", "DIR", "PNG", "KEY", "DIRECTORY", "CSV"))


@dataclass
class Arg:
    """One flag or positional argument, as completion sees it."""

    flags: list[str]  # empty for a positional
    name: str
    help: str = ""
    takes_value: bool = False
    choices: list[str] | None = None
    files: bool = False
    repeat: bool = False  # a flag that may be given again (count, append), or a positional of many
    optional: bool = False  # a positional that may be left out


@dataclass
class Command:
    """A subcommand (or, named "", the top level) with its flags and positionals."""

    name: str
    help: str = ""
    options: list[Arg] = field(default_factory=list)
    positionals: list[Arg] = field(default_factory=list)


def _is_path(action: argparse.Action) -> bool:
    kind = getattr(action.type, "__name__", "")
    return kind in ("Path", "path") or (action.metavar or "") in _PATH_METAVARS


def _arg(action: argparse.Action) -> Arg:
    choices = [str(c) for c in action.choices] if action.choices is not None else None
    many = action.nargs in ("*", "+", argparse.REMAINDER) or (isinstance(action.nargs, int) and action.nargs > 1)
    return Arg(flags=list(action.option_strings), name=action.dest, help=_one_line(action.help or ""),
               takes_value=action.nargs != 0, choices=choices, files=choices is None and _is_path(action),
               repeat=isinstance(action, argparse._CountAction | argparse._AppendAction) or
               (not action.option_strings and many),
               optional=action.nargs in ("?", "*"))


def _one_line(text: str) -> str:
    return " ".join(text.replace("%(default)s", "").replace("%(default)g", "").split())


def commands(parser: argparse.ArgumentParser) -> tuple[Command, list[Command]]:
    """The top level and every subcommand of ``parser``, in the order of ``--help``."""
    top = Command("")
    subs: list[Command] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                cmd = Command(name, _one_line(helps.get(name, "")))
                for a in sub._actions:
                    (cmd.options if a.option_strings else cmd.positionals).append(_arg(a))
                subs.append(cmd)
        elif action.option_strings:
            top.options.append(_arg(action))
    return top, subs


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (one of :data:`SHELLS`)."""
    top, subs = commands(parser)
    prog = parser.prog
    if shell == "bash":
        return _bash(prog, top, subs)
    if shell == "zsh":
        return _zsh(prog, top, subs)
    if shell == "fish":
        return _fish(prog, top, subs)
    raise ValueError(f"unknown shell {shell!r}; use one of {', '.join(SHELLS)}")


def _ident(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


# --- bash ---------------------------------------------------------------------------------------

def _bash_value(arg: Arg) -> str:
    if arg.choices is not None:
        return f'_{{fn}}_words "{" ".join(arg.choices)}"'
    if arg.files:
        return "_{fn}_files"
    return "COMPREPLY=()"


def _bash(prog: str, top: Command, subs: list[Command]) -> str:
    fn = _ident(prog)
    lines = [
        f"# bash completion for {prog} (made by `{prog} completion bash`; make it again after an upgrade)",
        f"_{fn}_words() {{ COMPREPLY=($(compgen -W \"$1\" -- \"$cur\")); }}",
        f"_{fn}_files() {{ local IFS=$'\\n'; compopt -o filenames 2>/dev/null; "
        f"COMPREPLY=($(compgen -f -- \"$cur\")); }}",
        "",
        f"# _{fn}_options COMMAND: the flags COMMAND takes (the top level's for '')",
        f"_{fn}_options() {{",
        '    case "$1" in',
    ]
    for cmd in [top, *subs]:
        flags = " ".join(f for o in cmd.options for f in o.flags)
        lines.append(f'        "{cmd.name}") echo "{flags}" ;;')
    lines += ["    esac", "}", "",
              f"# _{fn}_takes_value COMMAND FLAG: whether FLAG is followed by a value",
              f"_{fn}_takes_value() {{",
              '    case "$1 $2" in']
    valued = [f'"{cmd.name} {f}"' for cmd in [top, *subs] for o in cmd.options if o.takes_value for f in o.flags]
    if valued:
        lines.append(f"        {'|'.join(valued)}) return 0 ;;")
    lines += ["    esac", "    return 1", "}", "",
              f"# _{fn}_value COMMAND FLAG: complete FLAG's value",
              f"_{fn}_value() {{",
              '    case "$1 $2" in']
    for cmd in [top, *subs]:
        for o in cmd.options:
            if o.takes_value and (o.choices is not None or o.files):
                pattern = "|".join(f'"{cmd.name} {f}"' for f in o.flags)
                lines.append(f"        {pattern}) {_bash_value(o).format(fn=fn)} ;;")
    lines += ["        *) COMPREPLY=() ;;", "    esac", "}", "",
              f"# _{fn}_positional COMMAND N: complete COMMAND's Nth positional argument (from 0)",
              f"_{fn}_positional() {{",
              '    case "$1" in']
    for cmd in subs:
        if not cmd.positionals:
            continue
        branches = [f"{'*' if a.repeat else i}) {_bash_value(a).format(fn=fn)} ;;"
                    for i, a in enumerate(cmd.positionals)]
        lines.append(f'        "{cmd.name}") case "$2" in {" ".join(branches)} *) COMPREPLY=() ;; esac ;;')
    lines += ["        *) COMPREPLY=() ;;", "    esac", "}", "",
              f"_{fn}() {{",
              '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="" cmd="" word i npos=0 skip=0',
              "    COMPREPLY=()",
              "    for ((i = 1; i < COMP_CWORD; i++)); do",
              '        word="${COMP_WORDS[i]}"',
              '        if [[ $word == "=" ]]; then skip=1; continue; fi  # --flag = value: COMP_WORDBREAKS splits at =',
              "        if ((skip)); then skip=0; continue; fi",
              '        case "$word" in',
              "            --*=*) continue ;;",
              f'            -*) if _{fn}_takes_value "$cmd" "$word"; then skip=1; fi; continue ;;',
              "        esac",
              '        if [[ -z $cmd ]]; then cmd="$word"; else npos=$((npos + 1)); fi',
              "    done",
              '    ((COMP_CWORD > 0)) && prev="${COMP_WORDS[COMP_CWORD-1]}"',
              '    if [[ $cur == "=" ]]; then cur=""; fi  # --flag=<TAB>',
              '    if [[ $prev == "=" ]] && ((COMP_CWORD > 1)); then prev="${COMP_WORDS[COMP_CWORD-2]}"; fi',
              '    if [[ $cur == --*=* ]]; then  # --flag=value when = does not break words',
              '        prev="${cur%%=*}"; cur="${cur#*=}"; skip=1',
              "    fi",
              f'    if ((skip)); then _{fn}_value "$cmd" "$prev"; return 0; fi',
              f'    if [[ $cur == -* ]]; then _{fn}_words "$(_{fn}_options "$cmd")"; return 0; fi',
              f'    if [[ -z $cmd ]]; then _{fn}_words "{" ".join(c.name for c in subs)}"; return 0; fi',
              f'    _{fn}_positional "$cmd" "$npos"',
              "}",
              f"complete -F _{fn} {prog}",
              ""]
    return "\n".join(lines)


# --- zsh ----------------------------------------------------------------------------------------

def _zq(text: str) -> str:
    """``text`` single-quoted for zsh."""
    return "'" + text.replace("'", "'\\''") + "'"


def _zdesc(text: str) -> str:
    """``text`` fit for an ``_arguments`` description in brackets."""
    return re.sub(r"([\\\[\]:])", r"\\\1", text)


def _zname(name: str) -> str:
    """A ``_describe`` item's name: colons escaped."""
    return name.replace(":", "\\:")


def _zaction(arg: Arg) -> str:
    if arg.choices is not None:
        return "(" + " ".join(re.sub(r"([\\() ])", r"\\\1", c) for c in arg.choices) + ")"
    return "_files" if arg.files else " "


def _zspecs(cmd: Command) -> list[str]:
    specs: list[str] = []
    for o in cmd.options:
        value = f":{_zdesc(o.name)}:{_zaction(o)}" if o.takes_value else ""
        exclude = f"({' '.join(o.flags)})" if len(o.flags) > 1 and not o.repeat else ""
        star = "*" if o.repeat else ""
        for flag in o.flags:
            specs.append(_zq(f"{exclude}{star}{flag}[{_zdesc(o.help)}]{value}"))
    for i, p in enumerate(cmd.positionals, 1):
        where = "*" if p.repeat else str(i)
        colon = "::" if p.optional and not p.repeat else ":"
        specs.append(_zq(f"{where}{colon}{_zdesc(p.name)}:{_zaction(p)}"))
    return specs


def _zsh(prog: str, top: Command, subs: list[Command]) -> str:
    fn = _ident(prog)
    joiner = " \\\n    "
    lines = [f"#compdef {prog}",
             f"# zsh completion for {prog} (made by `{prog} completion zsh`; make it again after an upgrade)",
             ""]
    for cmd in subs:
        lines += [f"_{fn}_cmd_{_ident(cmd.name)}() {{",
                  f"  _arguments -s -S{joiner}" + joiner.join(_zspecs(cmd)),
                  "}", ""]
    described = " ".join(_zq(_zname(c.name) + ":" + c.help) for c in subs)
    lines += [f"_{fn}() {{",
              '  local curcontext="$curcontext" state state_descr line ret=1',
              "  typeset -A opt_args",
              f"  _arguments -C -s{joiner}" + joiner.join([*_zspecs(top), _zq("1:command:->command"),
                                                           _zq("*::argument:->argument")]) + " && ret=0",
              "  case $state in",
              "    command)",
              f"      local -a commands=({described})",
              f"      _describe -t commands {_zq(prog + ' command')} commands && ret=0 ;;",
              "    argument)",
              f'      curcontext="${{curcontext%:*:*}}:{prog}-$words[1]:"',
              "      case $words[1] in"]
    for cmd in subs:
        lines.append(f"        {cmd.name}) _{fn}_cmd_{_ident(cmd.name)} && ret=0 ;;")
    lines += ["      esac ;;",
              "  esac",
              "  return ret",
              "}",
              "",
              f'if [[ "$funcstack[1]" == "_{fn}" ]]; then',
              f'  _{fn} "$@"',
              "else",
              f"  compdef _{fn} {prog}",
              "fi",
              ""]
    return "\n".join(lines)


# --- fish ---------------------------------------------------------------------------------------

def _fq(text: str) -> str:
    """``text`` single-quoted for fish."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_flags(arg: Arg) -> str:
    parts: list[str] = []
    for flag in arg.flags:
        if flag.startswith("--"):
            parts.append(f"-l {flag[2:]}")
        elif len(flag) == 2:
            parts.append(f"-s {flag[1]}")
        else:
            parts.append(f"-o {flag[1:]}")
    return " ".join(parts)


def _fish_value(arg: Arg) -> str:
    if not arg.takes_value:
        return ""
    if arg.choices is not None:
        return " -x -a " + _fq(" ".join(arg.choices))
    return " -r -F" if arg.files else " -x"


def _fish(prog: str, top: Command, subs: list[Command]) -> str:
    names = " ".join(c.name for c in subs)
    none = f"not __fish_seen_subcommand_from {names}"
    lines = [f"# fish completion for {prog} (made by `{prog} completion fish`; make it again after an upgrade)",
             f"complete -c {prog} -e",
             f"complete -c {prog} -f  # no file names unless an argument is a path",
             ""]
    for cmd in subs:
        lines.append(f"complete -c {prog} -n {_fq(none)} -a {_fq(cmd.name)} -d {_fq(cmd.help)}")
    for o in top.options:
        lines.append(f"complete -c {prog} -n {_fq(none)} {_fish_flags(o)}{_fish_value(o)} -d {_fq(o.help)}")
    for cmd in subs:
        seen = _fq(f"__fish_seen_subcommand_from {cmd.name}")
        lines.append("")
        for o in cmd.options:
            lines.append(f"complete -c {prog} -n {seen} {_fish_flags(o)}{_fish_value(o)} -d {_fq(o.help)}")
        for p in cmd.positionals:
            if p.choices is not None:
                lines.append(f"complete -c {prog} -n {seen} -a {_fq(' '.join(p.choices))} -d {_fq(p.help or p.name)}")
            elif p.files:
                lines.append(f"complete -c {prog} -n {seen} -F")
    lines.append("")
    return "\n".join(lines)
