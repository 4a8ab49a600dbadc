"""Shell completion scripts for bash and zsh, generated from the argparse parser so they never drift from it.

Pure: the parser in, the script text out. Completes commands, subcommands, options, option choices and file paths
for options that take one (-c/--config).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field


@dataclass
class Node:
    """One command level: its subcommands, its options, and the choices or file completion options take."""

    path: tuple[str, ...]
    commands: dict[str, Node] = field(default_factory=dict)
    options: list[str] = field(default_factory=list)
    choices: dict[str, list[str]] = field(default_factory=dict)  # option -> values
    files: list[str] = field(default_factory=list)  # options that take a path
    positional_choices: list[str] = field(default_factory=list)


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Node:
    node = Node(path)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                node.commands[name] = walk(sub, (*path, name))
            continue
        if not action.option_strings:
            if action.choices:
                node.positional_choices += [str(choice) for choice in action.choices]
            continue
        node.options += action.option_strings
        for option in action.option_strings:
            if action.choices:
                node.choices[option] = [str(choice) for choice in action.choices]
            elif action.type is not None and getattr(action.type, "__name__", "") in ("Path", "PurePath"):
                node.files.append(option)
    return node


def _nodes(node: Node) -> list[Node]:
    found = [node]
    for child in node.commands.values():
        found += _nodes(child)
    return found


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    root = walk(parser)
    if shell == "bash":
        return _bash(parser.prog, root)
    if shell == "zsh":
        return _zsh(parser.prog, root)
    raise ValueError(f"no completion for shell {shell!r}; expected bash or zsh")


def _bash(prog: str, root: Node) -> str:
    """A bash function: finds the command path among the words so far, then offers what that level takes."""
    function = f"_{prog}_complete"
    cases = []
    for node in _nodes(root):
        key = " ".join(node.path)
        words = " ".join([*node.commands, *node.options, *node.positional_choices])
        previous = [f'      {option}) COMPREPLY=($(compgen -W "{" ".join(values)}" -- "$cur")); return;;'
                    for option, values in node.choices.items()]
        previous += [f'      {option}) COMPREPLY=($(compgen -f -- "$cur")); return;;' for option in node.files]
        body = ""
        if previous:
            body = '    case "$prev" in\n' + "\n".join(previous) + "\n    esac\n"
        cases.append(f'  "{key}")\n{body}    COMPREPLY=($(compgen -W "{words}" -- "$cur"));;')
    levels = {" ".join(node.path): sorted(node.commands) for node in _nodes(root) if node.commands}
    lookups = "\n".join(f'    "{key}") subs="{" ".join(names)}";;' for key, names in levels.items())
    return f"""# bash completion for {prog}: eval "$({prog} completion bash)"
{function}() {{
  local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="${{COMP_WORDS[COMP_CWORD-1]}}" path="" subs word i
  for ((i = 1; i < COMP_CWORD; i++)); do
    word="${{COMP_WORDS[i]}}"
    case "$path" in
{lookups}
    *) subs="";;
    esac
    for sub in $subs; do
      if [[ "$word" == "$sub" ]]; then path="${{path:+$path }}$word"; break; fi
    done
  done
  case "$path" in
{chr(10).join(cases)}
  esac
}}
complete -o default -F {function} {prog}
"""


def _zsh(prog: str, root: Node) -> str:
    """A zsh completion function (#compdef): _arguments per level, with the subcommands as a described list."""
    functions = []
    for node in _nodes(root):
        name = "_" + "_".join((prog, *node.path)).replace("-", "_")
        specs = []
        for option in node.options:
            if option in node.choices:
                specs.append(f"'{option}[]:value:({' '.join(node.choices[option])})'")
            elif option in node.files:
                specs.append(f"'{option}[]:file:_files'")
            else:
                specs.append(f"'{option}[]'")
        if node.positional_choices:
            specs.append(f"'1:value:({' '.join(node.positional_choices)})'")
        if node.commands:
            commands = " ".join(f"'{command}'" for command in node.commands)
            specs += ["'1:command:->command'", "'*::argument:->argument'"]
            dispatch = "\n".join(f"        {command}) {name}_{command.replace('-', '_')};;"
                                 for command in node.commands)
            functions.append(f"""{name}() {{
  local state
  _arguments -s {' '.join(specs)}
  case $state in
    command) local -a commands; commands=({commands}); _describe 'command' commands;;
    argument)
      case $words[1] in
{dispatch}
      esac;;
  esac
}}""")
        else:
            functions.append(f"{name}() {{\n  _arguments -s {' '.join(specs)}\n}}")
    return f"#compdef {prog}\n# zsh completion for {prog}: {prog} completion zsh > \"${{fpath[1]}}/_{prog}\"\n\n" + \
        "\n\n".join(functions) + f'\n\n_{prog} "$@"\n'
