"""`podfn token create | list | revoke`: access tokens (needs an admin token)."""

from __future__ import annotations

import click

from podfn.cli.support import (
    api,
    output_option,
    print_json,
    print_table,
    reports_errors,
    with_exit_codes,
)

SCOPES = ("submit", "invoke", "deploy", "read", "admin")


@click.group("token")
def token() -> None:
    """Create, list and revoke access tokens (needs an admin token).

    \b
    Scopes: submit (may send code, i.e. pickles), invoke (may invoke deployed
    functions with JSON, nothing else), deploy, read, admin.
    """


@token.command("create")
@click.option("--name", required=True, help="a unique name, e.g. the service using it")
@click.option("--scope", "scopes", multiple=True, required=True, type=click.Choice(SCOPES),
              help="a scope to grant; repeat for several")
@output_option
@reports_errors
def create(name: str, scopes: tuple[str, ...], output: str) -> None:
    """Create a token; its secret is printed once and never stored.

    \b
    Example: podfn token create --name billing --scope invoke
    """
    made = api().create_token(name, scopes)
    if output == "json":
        print_json(made)
        return
    click.echo(f"token {made['id']} ({made['name']}, scopes: {', '.join(made['scopes'])})")
    click.echo(made["token"])
    click.echo("Store it now: it cannot be shown again.", err=True)


@token.command("list")
@output_option
@reports_errors
def list_(output: str) -> None:
    """List tokens (never their secrets).

    \b
    Example: podfn token list
    """
    rows = api().tokens()
    if output == "json":
        print_json(rows)
        return
    print_table([(t["id"], t["name"], ",".join(t["scopes"]), t["created_at"],
                  t["revoked_at"] or "") for t in rows],
                ["id", "name", "scopes", "created", "revoked"])


@token.command("revoke")
@click.argument("ref")
@output_option
@reports_errors
def revoke(ref: str, output: str) -> None:
    """Revoke a token by id or name; it stops working at once.

    \b
    Example: podfn token revoke billing
    """
    row = api().revoke_token(ref)
    if output == "json":
        print_json(row)
        return
    click.echo(f"revoked {row['id']} ({row['name']})")


for _command in (token, create, list_, revoke):
    _command.help = with_exit_codes(_command.help)
COMMANDS = [token]
