"""`difforge serve`."""

from __future__ import annotations

import os
from pathlib import Path

import click

from difforge.cli.common import _fail, cli


def _token(token_file: str | None) -> str | None:
    """The token from --token-file or DIFFORGE_TOKEN (never from the command line)."""
    token = os.environ.get("DIFFORGE_TOKEN") or None
    if token_file is not None:
        if token is not None:
            raise ValueError("give --token-file or DIFFORGE_TOKEN, not both")
        token = Path(token_file).read_text().strip()
        if not token:
            raise ValueError(f"--token-file {token_file} is empty")
    return token


@cli.command()
@click.argument("model_dir", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; anything but loopback "
              "needs a token.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--token", "token_value", hidden=True, help="Refused: a token on the command line shows in `ps`.")
@click.option("--token-file", type=click.Path(dir_okay=False), help="File holding the token that /v1/* and /metrics "
              "require as 'Authorization: Bearer TOKEN' (or set DIFFORGE_TOKEN).")
@click.option("--allowed-host", "allowed_hosts", multiple=True, help="Another name clients may reach this server by "
              "(its Host header); repeatable. [default: localhost, 127.0.0.1, ::1 and --host; any for 0.0.0.0]")
@click.option("--max-n", type=int, default=16, show_default=True, help="Images per request.")
@click.option("--max-steps", type=int, default=1000, show_default=True, help="Sampler steps per request.")
@click.option("--max-batch", type=int, default=32, show_default=True, help="Images sampled together on the device; "
              "concurrent requests with the same settings are merged up to this.")
@click.option("--queue-size", type=int, default=32, show_default=True, help="Requests waiting for the device; more "
              "get 503 with Retry-After.")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True, help="Seconds a request may "
              "take, queueing included; then 504.")
@click.option("--max-body", "max_body_bytes", type=int, default=4 * 1024 * 1024, show_default=True,
              help="Largest request body in bytes; larger gets 413.")
@click.option("--max-connections", type=int, default=64, show_default=True, help="Open connections at once; more "
              "get 503.")
@click.option("--read-timeout", "read_timeout_s", type=float, default=30.0, show_default=True,
              help="Seconds a request's headers and body may take to arrive.")
@click.option("--max-prompt-chars", type=int, default=200, show_default=True, help="Characters per prompt of a "
              "text-to-image model (the model's token limit applies too).")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run.")
@click.option("--device", default="auto", show_default=True)
def serve(model_dir, host, port, token_value, token_file, allowed_hosts, ema, device, **limits) -> None:
    """Serve a run or exported model: JSON API, web page at /, /healthz, /readyz, /metrics.

    \b
    difforge serve runs/demo                      # http://127.0.0.1:8000/
    openssl rand -hex 16 > token && chmod 600 token
    difforge serve models/demo --host 0.0.0.0 --token-file token
    """
    if token_value is not None:
        _fail(ValueError("--token shows the token to every user of this machine (ps): use --token-file FILE or "
                         "DIFFORGE_TOKEN"))
    try:
        from difforge.runtime import resolve_device
        from difforge.serve import ServeConfig
        from difforge.serve import serve as run_server
        from difforge.serve.config import hosts_for_bind

        config = ServeConfig(token=_token(token_file), allowed_hosts=hosts_for_bind(host, tuple(allowed_hosts)),
                             **limits)
        run_server(model_dir, host=host, port=port, config=config, device=resolve_device(device), ema=ema,
                   log=click.echo)
    except (ValueError, FileNotFoundError, ImportError, OSError) as e:
        _fail(e)
