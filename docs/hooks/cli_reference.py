"""mkdocs hook: the CLI reference page, rendered at build time from the typer app (`headstart.cli.app`).

Each command's usage, help and parameters come from the command objects typer builds from the app, so the
page cannot drift from `headstart COMMAND --help`. The help formatter prints to a terminal; reading the
objects instead gives plain Markdown. Typer vendors its own click, hence duck typing, not isinstance.
"""
from __future__ import annotations

from mkdocs.structure.files import File

PAGE = "reference/cli.md"


def _escape(text: str) -> str:
    """Help text as Markdown text: tables split on |, and * or _ could start emphasis."""
    return " ".join(text.split()).replace("|", "\\|").replace("*", "\\*").replace("_", "\\_")


def _param_row(param, ctx) -> str:
    kind = param.display_type(ctx).strip("<>")
    if param.param_type_name == "argument":
        name = f"`{param.name.upper()}`"
        kind += ", argument" + (", one or more" if param.nargs == -1 else "")
    else:
        name = " / ".join(f"`{f}`" for f in list(param.opts) + list(param.secondary_opts))
        if param.multiple and kind.startswith("list["):  # a repeated option: each use gives one element
            kind = kind[len("list["):-1]
        kind = "flag" if param.is_flag else kind + (", repeatable" if param.multiple else "")
    if param.required:
        default = "required"
    elif param.default in (None, (), []) or callable(param.default):
        default = ""
    else:
        default = f"`{param.default}`"
    return f"| {name} | {kind} | {default} | {_escape(getattr(param, 'help', None) or '')} |"


def render(app=None, prog: str = "headstart") -> str:
    """The Markdown of the whole CLI reference."""
    import typer

    if app is None:
        from headstart.cli import app
    group = typer.main.get_command(app)
    root = group.context_class(group, info_name=prog)
    lines = ["# Command line reference", "",
             f"Generated from the code at build time (`docs/hooks/cli_reference.py`); "
             f"`{prog} COMMAND --help` prints the same.", "", _escape(group.help or ""), ""]
    for name in group.list_commands(root):
        cmd = group.get_command(root, name)
        if cmd is None or cmd.hidden:
            continue
        ctx = cmd.context_class(cmd, info_name=name, parent=root)
        lines += [f"## {name}", "", "```text", f"{prog} {name} {' '.join(cmd.collect_usage_pieces(ctx))}", "```", "",
                  " ".join((cmd.help or "").split()), ""]
        params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False) and p.name != "help"]
        if params:
            lines += ["| parameter | type | default | what |", "|---|---|---|---|"]
            lines += [_param_row(p, ctx) for p in params]
            lines.append("")
    return "\n".join(lines)


def on_files(files, config):
    files.append(File.generated(config, PAGE, content=render()))
    return files
