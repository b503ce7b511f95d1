"""`podfn migrate | serve | controller | dev | demo`: running the platform itself."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import platformdirs

from podfn.cli.support import reports_errors
from podfn.errors import ConfigurationError, PodfnError
from podfn.settings import Settings, write_profile


def _platform_modules() -> None:
    try:
        import flask  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(
            f"this command runs the platform, which needs the 'platform' extra ({exc.name} is "
            "missing): pip install 'podfn[platform]'"
        ) from None


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")


@click.command()
@reports_errors
def migrate() -> None:
    """Apply database migrations and grant the platform and runtime roles (PODFN_DATABASE_URL).

    Creates the roles PODFN_PLATFORM_ROLE and PODFN_RUNTIME_ROLE unless
    PODFN_MANAGE_ROLES=0; applying twice changes nothing.

    Example: PODFN_DATABASE_URL=postgresql://localhost/podfn podfn migrate
    """
    _platform_modules()
    from podfn_platform import migrations, roles
    from podfn_platform.database import Database

    settings = Settings.from_env()
    with Database(settings.require_database_url(), name="podfn-migrate") as db:
        applied = migrations.apply(db)
        roles.ensure(db, roles.Roles.from_settings(settings))
    if applied:
        for m in applied:
            click.echo(f"applied {m.version:04d}_{m.name}")
    else:
        click.echo("database is up to date")
    click.echo(f"roles granted: {settings.platform_role} (API, controller), "
               f"{settings.runtime_role} (runtime)")


@click.command()
@click.option("--host", help="address to bind (default PODFN_HOST or 127.0.0.1)")
@click.option("--port", type=int, help="port to bind (default PODFN_PORT or 8080)")
@reports_errors
def serve(host: str | None, port: int | None) -> None:
    """Run the HTTP API under gunicorn (PODFN_DATABASE_URL, PODFN_WORKERS, PODFN_THREADS).

    Example: podfn serve --host 0.0.0.0 --port 8080
    """
    _platform_modules()
    from podfn_platform.serving import serve as run_server

    run_server(Settings.from_env(host=host, port=port))


@click.command()
@reports_errors
def controller() -> None:
    """Run the controller: claims queued calls and launches their attempts.

    One controller is active at a time (a Postgres advisory lock); others stand by.
    SIGTERM stops it cleanly, handing back the attempts it was running.
    Example: PODFN_LAUNCHER=local podfn controller
    """
    _platform_modules()
    from podfn_platform.controller.service import run

    settings = Settings.from_env()
    _logging(settings)
    run(settings)


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("podfn"))


def stable_token(data_dir: Path) -> str:
    """The admin token of a data directory: made on its first run, the same on every
    restart, so clients and profiles that hold it keep working."""
    path = data_dir / "admin-token"
    with contextlib.suppress(FileNotFoundError):
        token = path.read_text().strip()
        if token:
            return token
    data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # readable by its owner only
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token


def running_platform(profile: Path) -> str | None:
    """The URL in `profile` if a platform answers there now, else None."""
    import httpx

    try:
        url = json.loads(profile.read_text())["url"]
        return str(url) if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200 else None
    except (OSError, ValueError, KeyError, TypeError, httpx.HTTPError):
        return None


@click.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="where the embedded Postgres keeps its data (default: user data dir)")
@click.option("--port", type=int, default=None, help="API port (default PODFN_PORT or 8080)")
@click.option("--launcher", type=click.Choice(["local", "kubernetes"]), default=None,
              help="how attempts run (default PODFN_LAUNCHER or local)")
@click.option("--no-auth", is_flag=True,
              help="accept requests without a token (only on a loopback address)")
@click.option("--verbose", "-v", is_flag=True,
              help="also print the API's access log (one JSON line per request)")
@reports_errors
def dev(data_dir: Path | None, port: int | None, launcher: str | None, no_auth: bool,
        verbose: bool) -> None:
    """Run the whole platform here: embedded Postgres, API and controller.

    Writes the client profile (URL and an admin token) so `@remote`
    functions and the podfn commands find it; Ctrl-C stops everything. Uses
    PODFN_DATABASE_URL instead of the embedded Postgres when set. The admin
    token is kept in the data directory, the same across restarts. A second
    `podfn dev` while the profile's platform runs is refused (give it its own
    PODFN_PROFILE).
    Example: podfn dev --port 8080
    """
    _platform_modules()
    from podfn_platform.dev import DevStack

    settings = Settings.from_env(launcher=launcher, insecure_no_auth=no_auth or None)
    # One profile per running platform: a second `podfn dev` would overwrite the
    # profile of the first, and leave it pointing at nothing when it exits.
    other = running_platform(settings.profile)
    if other is not None:
        raise ConfigurationError(
            f"a podfn platform is already running at {other} (profile {settings.profile}); "
            "use it, stop it first, or give this one a profile of its own: "
            "PODFN_PROFILE=/tmp/podfn-2.json podfn dev --port 8081 --data-dir /tmp/podfn-2")
    data_dir = data_dir or _default_data_dir()
    stack = DevStack(settings, data_dir, port or settings.port, token=stable_token(data_dir))
    # The API process reads it from the environment it inherits: a line per finished
    # call (below) says more to a person than a line per request.
    if verbose:
        os.environ["PODFN_ACCESS_LOG"] = "1"
    else:
        os.environ.setdefault("PODFN_ACCESS_LOG", "0")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    from podfn_platform.call_events import CallEvents

    with stack:
        write_profile(settings.profile, stack.url, stack.token)
        click.echo(f"podfn is running at {stack.url}")
        click.echo(f"  dashboard: {stack.url}/ui (sign in with the token in the profile)")
        click.echo(f"  database: {stack.database_url}")
        click.echo(f"  profile:  {settings.profile} (url and token for clients)")
        click.echo("Try: python examples/demo.py    Stop: Ctrl-C")
        events = CallEvents(stack.database_url, click.echo).start()
        try:
            code = stack.wait()
        except KeyboardInterrupt:
            click.echo("\nstopping podfn")
            return
        finally:
            events.stop()
    raise PodfnError(f"a platform process exited unexpectedly (code {code})")


def _default_demo_script() -> Path:
    return Path(__file__).resolve().parents[3] / "examples" / "demo.py"


@click.command()
@click.argument("script", type=click.Path(exists=True, path_type=Path), required=False)
@reports_errors
def demo(script: Path | None) -> None:
    """Start a throwaway platform, run an example script against it, stop it.

    Nothing is left running or written outside a temporary directory.
    Example: podfn demo             (runs examples/demo.py)
    """
    _platform_modules()
    from podfn_platform.dev import DevStack, free_port

    script = script or _default_demo_script()
    if not script.exists():
        raise ConfigurationError(f"no example script at {script}; pass one: podfn demo FILE")
    workdir = Path(tempfile.mkdtemp(prefix="podfn-demo-"))
    os.chmod(workdir, 0o755)
    try:
        settings = Settings.from_env(database_url=os.environ.get("PODFN_DATABASE_URL"))
        click.echo("starting a temporary podfn platform ...")
        with DevStack(settings, workdir, free_port(), temporary=True).start(quiet=True) as stack:
            click.echo(f"running {script} against {stack.url}\n")
            env = {**os.environ, "PODFN_URL": stack.url, "PODFN_TOKEN": stack.token}
            code = subprocess.call([sys.executable, str(script)], env=env)
        click.echo("\ntemporary platform stopped")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if code != 0:
        raise PodfnError(f"the demo script exited with code {code}")


COMMANDS = [migrate, serve, controller, dev, demo]
