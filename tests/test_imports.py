"""The import boundaries of docs/architecture.md (light imports), checked in fresh interpreters."""

import subprocess
import sys
from pathlib import Path


def _modules_after(stmt: str) -> set[str]:
    code = f"import sys; {stmt}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(out.split())


def _tops(mods: set[str]) -> set[str]:
    return {m.split(".")[0] for m in mods}


def _difforge_parts(mods: set[str]) -> set[str]:
    return {m.split(".")[1] for m in mods if m.startswith("difforge.")}


def test_import_difforge_is_light():
    tops = _tops(_modules_after("import difforge"))
    for heavy in ("torch", "click", "yaml", "PIL", "safetensors", "tqdm", "sklearn", "diffusers", "wandb",
                  "huggingface_hub"):
        assert heavy not in tops, heavy


def test_maths_and_samplers_import_only_torch():
    mods = _modules_after("import difforge.diffusion, difforge.sampling")
    # (tqdm is not listed: torch itself imports it.)
    for other in ("click", "yaml", "PIL", "safetensors", "sklearn", "wandb", "tensorboard"):
        assert other not in _tops(mods), other
    assert _difforge_parts(mods) <= {"diffusion", "sampling"}


def test_models_do_not_import_training_serving_or_cli():
    # the model object and its card too: the model side never imports train, eval, serve or tasks
    mods = _modules_after("import difforge.models, difforge.models.card, difforge.models.denoiser")
    parts = _difforge_parts(mods)
    assert parts <= {"models", "diffusion", "io"}, parts  # io: the pixels <-> model-space conversion
    assert "PIL" not in _tops(mods)
    # the diffusers-unet preset is registered without importing diffusers (optional: difforge[interop])
    assert not {"diffusers", "huggingface_hub"} & _tops(mods)


def test_the_command_line_and_its_help_do_not_import_torch():
    """`difforge --help` (and a command's help) answers at once: no torch, numpy or PIL."""
    for stmt in ("import difforge.cli", "from difforge.cli import main\nfor argv in (['--help'], ['train', '--help'], "
                 "['inpaint', '--help'], ['import', '--help']):\n    try: main(argv)\n    except SystemExit: pass"):
        code = f"import sys\n{stmt}\nprint('\\n'.join(sorted(sys.modules)), file=sys.stderr)"
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        tops = _tops(set(proc.stderr.split()))
        assert "click" in tops
        for heavy in ("torch", "numpy", "PIL", "yaml", "tqdm", "safetensors", "diffusers", "huggingface_hub"):
            assert heavy not in tops, (stmt, heavy)


def test_training_does_not_import_tasks():
    parts = _difforge_parts(_modules_after("import difforge.train.loop"))
    assert "tasks" not in parts and "serve" not in parts, parts
    import difforge.train

    for path in Path(difforge.train.__file__).parent.glob("*.py"):  # lazy imports included
        assert "difforge.tasks" not in path.read_text(), path
