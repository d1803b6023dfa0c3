"""`difforge serve`."""

from __future__ import annotations

import click

from difforge.cli.common import _fail, cli


@cli.command()
@click.argument("model_dir", type=click.Path())
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; anything but loopback "
              "needs --token.")
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--token", envvar="DIFFORGE_TOKEN", help="Require 'Authorization: Bearer TOKEN' on /v1/* and /metrics "
              "(also read from DIFFORGE_TOKEN).")
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
@click.option("--ema/--no-ema", default=True, show_default=True, help="Use the EMA weights of a run.")
@click.option("--device", default="auto", show_default=True)
def serve(model_dir, host, port, ema, device, **limits) -> None:
    """Serve a run or exported model: JSON API, web page at /, /healthz, /readyz, /metrics.

    \b
    difforge serve runs/demo                      # http://127.0.0.1:8000/
    difforge serve models/demo --host 0.0.0.0 --token "$(openssl rand -hex 16)"
    """
    try:
        from difforge.serve import ServeConfig, serve as run_server
        from difforge.runtime import resolve_device

        run_server(model_dir, host=host, port=port, config=ServeConfig(**limits), device=resolve_device(device),
                   ema=ema, log=click.echo)
    except (ValueError, FileNotFoundError, ImportError, OSError) as e:
        _fail(e)
