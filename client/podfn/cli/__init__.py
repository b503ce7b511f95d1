"""The `podfn` command: run a platform, deploy and invoke functions, manage calls and tokens."""

from __future__ import annotations

import click

from podfn.cli import calls, functions, server, tokens
from podfn.cli.support import EXIT_CODES_HELP


@click.group(context_settings={"help_option_names": ["-h", "--help"]},
             help=f"""podfn: Python functions on Kubernetes, one pod per call.

\b
Start a platform on this machine and try it:
    podfn dev                 # embedded Postgres + API + controller
    podfn demo                # the same on temporary state, runs an example
Settings come from PODFN_* environment variables (see docs/settings.md).

{EXIT_CODES_HELP}""")
@click.version_option(package_name="podfn")
def cli() -> None:
    pass


for _module in (server, calls, functions, tokens):
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli()
