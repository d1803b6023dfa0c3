"""`difforge import`: a diffusers UNet2DModel + scheduler folder as a difforge model; `difforge
push`: an exported model to the Hugging Face Hub."""

from __future__ import annotations

import click

from difforge.cli.common import _fail, cli


@cli.command(name="import")
@click.argument("model_dir", type=click.Path())
@click.option("--out", required=True, help="New or empty directory for the difforge model (model.safetensors, "
              "config.json, README.md).")
@click.option("--scheduler", type=click.Path(exists=True), help="The scheduler config (scheduler_config.json or its "
              "folder) when MODEL_DIR is a bare UNet folder without one.")
@click.option("--null-class", is_flag=True, help="The UNet's last class embedding is the null class of "
              "classifier-free guidance (without it, a class-conditional model samples at --cfg 1).")
@click.option("--dataset", help="The dataset it was trained on, for the model card (e.g. cifar10).")
@click.option("--class-names", help="Comma-separated class names of a class-conditional model.")
@click.option("--overwrite", is_flag=True, help="Replace a difforge model already in --out.")
def import_(model_dir, out, scheduler, null_class, dataset, class_names, overwrite) -> None:
    """Import a diffusers UNet2DModel and its DDPM/DDIM scheduler (a folder written by
    save_pretrained, or a Hub id in the local cache) as a difforge model directory, which
    every sampler, task, evaluate and serve then take."""
    try:
        from difforge.interop import import_diffusers

        names = None if class_names is None else [n.strip() for n in class_names.split(",") if n.strip()]
        path = import_diffusers(model_dir, out, scheduler=scheduler, null_class=null_class, dataset=dataset,
                                class_names=names, overwrite=overwrite)
    except (ValueError, FileNotFoundError, ImportError) as e:
        _fail(e)
    click.echo(f"wrote {path / 'model.safetensors'} and {path / 'config.json'} (and README.md)")


@cli.command()
@click.argument("model_dir", type=click.Path())
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repository as private (when it does not exist yet).")
@click.option("--message", help="Commit message. [default: Upload a difforge model (N files)]")
def push(model_dir, repo_id, private, message) -> None:
    """Upload an exported model (difforge export, export --format diffusers, or import) to the
    Hugging Face Hub as REPO_ID (OWNER/NAME), in one commit: its README.md model card, config
    and weights; other files in the folder stay local. Needs huggingface_hub and a token with
    write access (`hf auth login`, or HF_TOKEN)."""
    try:
        from difforge.hub import push_files, push_model

        url = push_model(model_dir, repo_id, private=private, message=message)
    except (ValueError, FileNotFoundError, ImportError) as e:
        _fail(e)
    click.echo(f"pushed {', '.join(push_files(model_dir))} to {url}")
