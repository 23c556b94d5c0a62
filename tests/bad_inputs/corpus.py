"""The bad-input corpus: every way a model, a dataset, a run file, an adapter or an output location can be
wrong that we know of, each with the message the user must get.

A case is declarative: a builder makes the bad input under ``Ctx.user`` (the user's files, which must come
out of the command unchanged) and returns the command line that meets it; ``expect`` is a regex the
``error:`` text must match (it names the problem) and ``hint`` one the ``hint:`` line must match (it says
what to do). The command runs in ``Ctx.cwd``, which must stay empty: a command that refuses its input
leaves no run folder or output behind. ``late`` cases are problems that can only be found once training has
loaded the model and tokenizer: they leave exactly one run folder, marked failed.

``test_bad_input_corpus.py`` drives every case through the CLI (in-process, and a few in a subprocess).
The window's tests can reuse the same inputs through ``GUI_CASES``: ``(id, builder, kind)`` with
``builder(tmp_path, tiny_model_dir) -> Built`` and ``kind`` in model, data, runfile, adapter; ``Built.target``
is the bad thing to open (a model folder or file, a data file, a run file, an adapter folder) and
``Built.related`` names the other inputs of the case (e.g. the base model of an adapter case).
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import struct
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import tomli_w

KINDS = ("model", "data", "runfile", "adapter", "output")
GUI_KINDS = ("model", "data", "runfile", "adapter")

# Shapes of the tiny llama (tests/tiny.py): hidden 64, 4 heads of 16, 2 key/value heads, 2 blocks.
LLAMA_OUT = {"q_proj": 64, "v_proj": 32}
LLAMA_IN = 64


@dataclass(frozen=True)
class Built:
    """What a builder made: the bad input, the command line that meets it, and the case's other inputs."""

    target: Path
    argv: list[str]
    related: dict[str, Any] = field(default_factory=dict)  # other inputs by role; "denied": paths out of reach


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # model | data | runfile | adapter | output
    build: Callable[["Ctx"], Built]
    expect: str  # regex over the error text: names the problem (and the file, field or row)
    hint: str = ""  # regex over the hint line: what to do (a hint line is always required)
    late: bool = False  # found after the model loaded: exactly one run folder is left, marked failed
    patch: str | None = None  # "disk-full" | "offline" | "no-permission": simulated conditions, see the test module
    xfail: str | None = None  # a known bug in a module this corpus does not own; the reason names the fix
    skip_if: str | None = None  # "cuda": the case is about a machine without a CUDA GPU
    subprocess: bool = False  # also run through `python -m workbench` to prove no traceback reaches stderr
    gui: bool = True  # the bad input is a file or folder the window can open (not a CLI flag)
    generated: bool = False  # made from the run-file schema (every field), not written by hand


class _Canary:
    """Unpickling this writes the file ``path``; a snapshot of the user's folder then shows it."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


class Ctx:
    """Where a case builds its inputs. ``user``: the user's files (snapshotted); ``cwd``: where the command runs."""

    def __init__(self, root: Path, tiny_model_dir: Callable[..., Path]):
        self.root = Path(root)
        self.user = self.root / "user"
        self.cwd = self.root / "cwd"
        self.user.mkdir(parents=True, exist_ok=True)
        self.cwd.mkdir(parents=True, exist_ok=True)
        self._models = tiny_model_dir
        self._good_model: Path | None = None

    # -- files ------------------------------------------------------------------------------------------
    def path(self, name: str) -> Path:
        return self.user / name

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.user / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.encode("utf-8")
        path.write_bytes(content)
        return path

    def jsonl(self, name: str, rows: list[Any]) -> Path:
        """One line per row: dicts and lists are written as JSON, strings as they are."""
        return self.write(name, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))

    def good_data(self, name: str = "train.jsonl") -> Path:
        return self.jsonl(name, [{"prompt": f"Question {i}?", "completion": f" Answer {i}."} for i in range(4)])

    # -- models -----------------------------------------------------------------------------------------
    def model(self, name: str = "model", arch: str = "llama") -> Path:
        """A private copy of a tiny model, in the user's folder."""
        folder = self.user / name
        shutil.copytree(self._models(arch), folder)
        return folder

    def shared_model(self) -> Path:
        """One good tiny llama per case, copied on first use (cases whose model is not the bad input)."""
        if self._good_model is None:
            self._good_model = self.model("good-model")
        return self._good_model

    def edit_config(self, folder: Path, **changes: Any) -> Path:
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(changes)
        (folder / "config.json").write_text(json.dumps(cfg))
        return folder

    def truncate(self, path: Path, keep: float = 0.5) -> Path:
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        return path

    def pickle_canary(self, path: Path) -> Path:
        """A pickle file that, if anything unpickled it, would create ``UNPICKLED`` in the user's folder."""
        path.write_bytes(pickle.dumps(_Canary(self.user / "UNPICKLED")))
        return path

    def pickled_model(self, name: str = "pickled") -> Path:
        """The tiny llama whose only weight file is pytorch_model.bin, a pickle canary (see ``pickle_canary``)."""
        folder = self.model(name)
        (folder / "model.safetensors").unlink()
        self.pickle_canary(folder / "pytorch_model.bin")
        return folder

    def sharded_model(self, name: str = "sharded") -> Path:
        """The tiny llama split into two safetensors shards with an index, as large models are saved."""
        from safetensors.torch import load_file, save_file

        folder = self.model(name)
        tensors = load_file(folder / "model.safetensors")
        (folder / "model.safetensors").unlink()
        keys = sorted(tensors)
        shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
                  "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
        weight_map = {}
        for file, names in shards.items():
            save_file({k: tensors[k].contiguous() for k in names}, folder / file, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(names, file))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
        return folder

    # -- adapters ---------------------------------------------------------------------------------------
    def adapter(self, name: str = "adapter", *, config: dict | None = None,
                tensors: Callable[[dict], dict] | None = None, dora: bool = False, base: Path | None = None) -> Path:
        """A PEFT LoRA adapter for the tiny llama (q_proj and v_proj of both blocks, r=4, alpha=8), written
        file by file as PEFT writes it; ``config`` overrides adapter_config.json, ``tensors`` edits the weights."""
        import torch
        from safetensors.torch import save_file

        folder = self.user / name
        folder.mkdir(parents=True)
        base = base or self.shared_model()
        cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"],
               "base_model_name_or_path": str(base), "use_dora": dora, "use_rslora": False, "bias": "none",
               "rank_pattern": {}, "alpha_pattern": {}, "task_type": "CAUSAL_LM"}
        cfg.update(config or {})
        (folder / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
        g = torch.Generator().manual_seed(0)
        weights: dict[str, Any] = {}
        for block in range(2):
            for module, out in LLAMA_OUT.items():
                prefix = f"base_model.model.model.layers.{block}.self_attn.{module}"
                weights[f"{prefix}.lora_A.weight"] = torch.randn(4, LLAMA_IN, generator=g)
                weights[f"{prefix}.lora_B.weight"] = torch.randn(out, 4, generator=g) * 0.01
                if dora:
                    weights[f"{prefix}.lora_magnitude_vector"] = torch.rand(out, generator=g) + 0.5
        if tensors is not None:
            weights = tensors(weights)
        save_file(weights, folder / "adapter_model.safetensors", metadata={"format": "pt"})
        return folder

    # -- run files --------------------------------------------------------------------------------------
    def runfile(self, name: str = "run.toml", *, source: Path | str | None = None, train_files: list[Path | str] | None = None,
                text: str | None = None, **sections: dict) -> Path:
        """A run file for a 1-step CPU run of ``source`` (default: a good tiny model) on ``train_files`` (default:
        good data), with ``sections`` ({field: value} per section) merged in; ``text`` writes the file verbatim."""
        if text is not None:
            return self.write(name, text)
        doc: dict[str, dict] = {
            "model": {"source": str(source if source is not None else self.shared_model())},
            "data": {"train_files": [str(p) for p in (train_files if train_files is not None else [self.good_data()])]},
            "training": {"max_steps": 1, "batch_size": 1, "device": "cpu"},
            "output": {"runs_root": str(self.cwd / "runs")},
        }
        for section, values in sections.items():
            doc.setdefault(section, {}).update(values)
        return self.write(name, tomli_w.dumps(doc))

    # -- command lines ----------------------------------------------------------------------------------
    def train(self, run: Path, *flags: str, target: Path | None = None, **related: Path) -> Built:
        return Built(target or run, ["train", str(run), "--quiet", *flags], {"run_file": run, **related})

    def train_data(self, data: Path | list[Path], **data_settings: Any) -> Built:
        files = data if isinstance(data, list) else [data]
        run = self.runfile(train_files=files, **({"data": data_settings} if data_settings else {}))
        return self.train(run, target=files[0])

    def train_model(self, model: Path | str, **model_settings: Any) -> Built:
        run = self.runfile(source=model, **({"model": model_settings} if model_settings else {}))
        return self.train(run, target=Path(model))


# ============================================================================================ the cases

CASES: list[Case] = []


def case(id: str, kind: str, expect: str, hint: str = "", **options: Any):
    """Register the decorated builder as a case."""
    assert kind in KINDS, kind

    def register(build: Callable[[Ctx], Built]) -> Callable[[Ctx], Built]:
        assert all(c.id != id for c in CASES), f"duplicate case id {id}"
        CASES.append(Case(id, kind, build, expect, hint, **options))
        return build

    return register


def inspect(path: Path, *flags: str) -> Built:
    return Built(path, ["inspect", str(path), *flags])


def inspect_adapter(adapter: Path, base: Path | None = None) -> Built:
    argv = ["inspect-adapter", str(adapter)] + (["--base", str(base)] if base else [])
    return Built(adapter, argv, {"base": base} if base else {})


def merge(ctx: Ctx, base: Path, adapter: Path, out: Path | None = None, *, target: Path | None = None) -> Built:
    out = out or ctx.cwd / "merged"
    return Built(target or base, ["merge", "--base", str(base), "--adapter", str(adapter), "--out", str(out)],
                 {"base": base, "adapter": adapter, "out": out})


def export(ctx: Ctx, adapter: Path, out: Path | None = None, *flags: str, target: Path | None = None) -> Built:
    out = out or ctx.cwd / "exported"
    return Built(target or adapter, ["export", str(adapter), "--out", str(out), *flags], {"adapter": adapter, "out": out})


def denied(built: Built, *paths: Path) -> Built:
    """Mark ``paths`` as out of the user's reach: the case chmods them, and the "no-permission" patch refuses
    them too, because permissions do not bind root (CI often runs as root)."""
    return Built(built.target, built.argv, {**built.related, "denied": list(paths)})


# -------------------------------------------------------------------------------------------------- models


@case("model-missing-folder", "model", r"model path does not exist: \S*no-such-model", r"check the path", subprocess=True)
def _(ctx):
    return inspect(ctx.path("no-such-model"))


@case("model-empty-folder", "model", r"empty-folder has no config\.json, so it is not a Hugging Face model folder",
      r"choose the folder that holds config\.json")
def _(ctx):
    folder = ctx.path("empty-folder")
    folder.mkdir()
    return inspect(folder)


@case("model-partial-without-config", "model", r"has no config\.json", r"choose the folder that holds config\.json")
def _(ctx):
    folder = ctx.model("partial")
    (folder / "config.json").unlink()
    return inspect(folder)


@case("model-partial-without-weights", "model", r"has no weight files \(no \*\.safetensors\)",
      r"download the full model")
def _(ctx):
    folder = ctx.model("no-weights")
    (folder / "model.safetensors").unlink()
    return ctx.train_model(folder)


@case("model-partial-missing-shard", "model",
      r"sharded is incomplete: model-00002-of-00002\.safetensors listed in model\.safetensors\.index\.json but missing",
      r"download the missing shards")
def _(ctx):
    folder = ctx.sharded_model()
    (folder / "model-00002-of-00002.safetensors").unlink()
    return merge(ctx, folder, ctx.adapter())


@case("model-partial-without-tokenizer", "model", r"cannot load the tokenizer of \S*no-tokenizer",
      r"tokenizer files \(tokenizer\.json or tokenizer\.model\)")
def _(ctx):
    folder = ctx.model("no-tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (folder / name).unlink()
    return ctx.train_model(folder)


@case("model-truncated-safetensors-merge", "model",
      r"model\.safetensors is not a readable safetensors file \(truncated: the header describes [\d,]+ bytes but the file has",
      r"download the model again")
def _(ctx):
    folder = ctx.model("truncated")
    ctx.truncate(folder / "model.safetensors")
    return merge(ctx, folder, ctx.adapter())


@case("model-truncated-safetensors-train", "model", r"truncated\S*model\.safetensors is damaged or incomplete|"
      r"cannot load the weights of \S*truncated", r"download the model again|incomplete or damaged")
def _(ctx):
    folder = ctx.model("truncated")
    ctx.truncate(folder / "model.safetensors")
    return ctx.train_model(folder)


@case("model-config-not-json", "model", r"config\.json is not valid JSON \(line 1: ", r"download it again",
      subprocess=True)
def _(ctx):
    folder = ctx.model("bad-json")
    (folder / "config.json").write_text('{"model_type": "llama", hidden_size: 64')
    return inspect(folder)


@case("model-config-empty-file", "model", r"config\.json is not valid JSON", r"download it again")
def _(ctx):
    folder = ctx.model("empty-config")
    (folder / "config.json").write_bytes(b"")
    return inspect(folder)


@case("model-config-not-an-object", "model", r"config\.json does not hold a JSON object", r"download it again")
def _(ctx):
    folder = ctx.model("list-config")
    (folder / "config.json").write_text("[1, 2, 3]")
    return inspect(folder)


@case("model-config-binary", "model", r"config\.json is not UTF-8 text", r"download it again")
def _(ctx):
    folder = ctx.model("binary-config")
    (folder / "config.json").write_bytes(b"\xff\xfe\x00\x01\x89PNG garbage")
    return inspect(folder)


@case("model-config-without-model-type", "model", r"config\.json has no model_type, so the architecture is unknown",
      r"choose a Hugging Face transformers model folder")
def _(ctx):
    folder = ctx.model("no-model-type")
    (folder / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2}))
    return inspect(folder)


@case("model-config-wrong-type", "model",
      r'config\.json has "hidden_size": "sixty-four", which is a string; it must be a whole number',
      r"fix the value|download the model again")
def _(ctx):
    return inspect(ctx.edit_config(ctx.model("wrong-type"), hidden_size="sixty-four"))


@case("model-config-wrong-type-merge-base", "model",
      r'wrong-type/config\.json: config\.json has "hidden_size": "sixty-four", which is a string', r"fix the value")
def _(ctx):
    return merge(ctx, ctx.edit_config(ctx.model("wrong-type"), hidden_size="sixty-four"), ctx.adapter())


@case("model-config-impossible-value", "model",
      r"config\.json has values transformers cannot use \(ZeroDivisionError", r"fix the value")
def _(ctx):
    return inspect(ctx.edit_config(ctx.model("zero-heads"), num_attention_heads=0))


@case("model-config-unknown-rope-type", "model",
      r"the llama model in \S*bad-rope cannot be built from its config\.json: KeyError: 'bogus'", r"fix the value")
def _(ctx):
    return inspect(ctx.edit_config(ctx.model("bad-rope"), rope_scaling={"rope_type": "bogus", "factor": 2.0}))


@case("model-config-absurd-layer-count", "model", r"says num_hidden_layers = 100,000,000; a real model has between 1",
      r"fix the value")
def _(ctx):
    # Not refused, this would build a hundred million blocks on the meta device: the window would hang.
    return inspect(ctx.edit_config(ctx.model("many-layers"), num_hidden_layers=100_000_000))


@case("model-config-field-of-the-wrong-type", "model",
      r'config\.json has "model_type": \["llama"\], which is a list; it must be a string', r"fix the value")
def _(ctx):
    return inspect(ctx.edit_config(ctx.model("list-type"), model_type=["llama"]))


@case("model-config-number-as-text-train", "model",
      r'config\.json has "hidden_size": "64", which is a string; it must be a whole number', r"fix the value")
def _(ctx):
    return ctx.train_model(ctx.edit_config(ctx.model("text-size"), hidden_size="64"))


@case("model-config-nested-too-deeply", "model", r"config\.json is nested too deeply", r"copy or download it again")
def _(ctx):
    folder = ctx.model("deep-config")
    (folder / "config.json").write_text('{"model_type": "llama", "x": ' + "[" * 50_000 + "]" * 50_000 + "}")
    return inspect(folder)


@case("model-config-is-a-fifo", "model", r"config\.json in \S*fifo-config is a FIFO \(named pipe\), not a regular file",
      r"ordinary file", subprocess=True)
def _(ctx):
    import os

    folder = ctx.model("fifo-config")
    (folder / "config.json").unlink()
    os.mkfifo(folder / "config.json")
    return inspect(folder)


@case("model-path-is-a-fifo", "model", r"model path \S*model\.gguf is a FIFO \(named pipe\)",
      r"choose a model folder or a \.gguf file")
def _(ctx):
    import os

    os.mkfifo(ctx.path("model.gguf"))
    return ctx.train_model(ctx.path("model.gguf"))


@case("model-shard-index-escapes-the-folder", "model",
      r"model\.safetensors\.index\.json: the shard '\.\./elsewhere/x\.safetensors' points outside",
      r"a model folder's files must lie inside it")
def _(ctx):
    folder = ctx.sharded_model("escaping")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = "../elsewhere/x.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (ctx.user / "elsewhere").mkdir()
    (ctx.user / "elsewhere" / "x.safetensors").write_bytes(b"not to be read")
    return ctx.train_model(folder)


@case("model-shard-index-absolute-path-train", "model", r"the shard '/\S*' points outside", r"lie inside it")
def _(ctx):
    folder = ctx.sharded_model("absolute")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = str(folder / "model-00001-of-00002.safetensors")
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return ctx.train_model(folder)


@case("model-shard-index-symlink-out-merge", "model",
      r"the shard 'model-00001-of-00002\.safetensors' points outside", r"lie inside it")
def _(ctx):
    # The shard's name is innocent; the file is a symbolic link to another folder's weights.
    folder = ctx.sharded_model("linked-out")
    (ctx.user / "elsewhere").mkdir()
    moved = ctx.user / "elsewhere" / "model-00001-of-00002.safetensors"
    (folder / "model-00001-of-00002.safetensors").rename(moved)
    (folder / "model-00001-of-00002.safetensors").symlink_to(moved)
    return merge(ctx, folder, ctx.adapter(base=folder))


@case("model-shard-index-all-shards-outside-train", "model", r"the shard '\.\./\.\./\S*' points outside",
      r"lie inside it")
def _(ctx):
    folder = ctx.sharded_model("escaping")
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"] = {k: "../../" + v for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return ctx.train_model(folder)


@case("model-tokenizer-is-a-fifo", "model", r"tokenizer\.json in \S*fifo-tokenizer is a FIFO \(named pipe\)",
      r"ordinary files only", subprocess=True)
def _(ctx):
    import os

    folder = ctx.model("fifo-tokenizer")
    (folder / "tokenizer.json").unlink()
    os.mkfifo(folder / "tokenizer.json")
    return ctx.train_model(folder)


@case("model-generation-config-link-loop", "model", r"generation_config\.json in \S* cannot be read: Too many levels",
      r"ordinary files only")
def _(ctx):
    folder = ctx.model("looped")
    (folder / "generation_config.json").unlink(missing_ok=True)
    (folder / "generation_config.json").symlink_to(folder / "generation_config.json")
    return inspect(folder)


@case("model-tokenizer-needs-remote-code-train", "model",
      r"the tokenizer of \S*custom-tokenizer needs its own Python code to run \(\S*tokenization_custom\.py\)",
      r"model\.trust_remote_code = true \(CLI: --trust-remote-code\)")
def _(ctx):
    folder = ctx.model("custom-tokenizer")
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.update(tokenizer_class="CustomTokenizer", auto_map={"AutoTokenizer": ["tokenization_custom.CustomTokenizer", None]})
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "tokenization_custom.py").write_text("raise SystemExit('this code must never run')\n")
    return ctx.train_model(folder)


@case("model-config-vocab-size-disagrees-with-weights", "model",
      r"config\.json does not match the weights: \S+ is \[300, 64\] in the weight files, but config\.json says "
      r"vocab_size = 320, so the model expects \[320, 64\]", r"restore the model's original config\.json")
def _(ctx):
    return ctx.train_model(ctx.edit_config(ctx.model("vocab"), vocab_size=320))


@case("model-config-layer-size-disagrees-with-weights", "model",
      r"model\.layers\.0\.mlp\.\w+_proj\.weight is \[\d+, \d+\] in the weight files, but config\.json says "
      r"intermediate_size = 200", r"the weights are as downloaded", subprocess=True)
def _(ctx):
    return ctx.train_model(ctx.edit_config(ctx.model("mlp"), intermediate_size=200))


@case("model-gguf-cut-in-half", "model", r"half\.gguf is truncated: expected [\d,]+ bytes, found [\d,]+ \(tensor ",
      r"download it again")
def _(ctx):
    from workbench.core.builtin import find_builtin_gguf

    whole = find_builtin_gguf().read_bytes()
    return inspect(ctx.write("half.gguf", whole[: len(whole) // 2]))


@case("model-gguf-base-cut-in-half-export", "model", r"base\.gguf is truncated: expected [\d,]+ bytes, found",
      r"download it again", gui=False)
def _(ctx):
    from workbench.core.builtin import find_builtin_gguf

    whole = find_builtin_gguf().read_bytes()
    cut = ctx.write("base.gguf", whole[: len(whole) // 2])
    return export(ctx, ctx.adapter(), None, "--gguf-adapter", "--base", str(ctx.shared_model()), "--base-gguf", str(cut),
                  target=cut)


@case("model-gguf-base-is-a-fifo-export", "model", r"GGUF base \S*base\.gguf is a FIFO \(named pipe\)",
      r"the \.gguf file of the base model", gui=False)
def _(ctx):
    import os

    os.mkfifo(ctx.path("base.gguf"))
    return export(ctx, ctx.adapter(), None, "--gguf-adapter", "--base", str(ctx.shared_model()), "--base-gguf",
                  str(ctx.path("base.gguf")), target=ctx.path("base.gguf"))


@case("model-unknown-architecture", "model", r"unknown model_type 'wizardlm9000' in \S*config\.json",
      r"upgrade transformers")
def _(ctx):
    return inspect(ctx.edit_config(ctx.model("unknown-arch"), model_type="wizardlm9000"))


@case("model-needs-remote-code", "model",
      r"needs its own Python code to run \(config\.json has auto_map: AutoConfig, AutoModelForCausalLM\)",
      r"model\.trust_remote_code = true \(CLI: --trust-remote-code\)")
def _(ctx):
    folder = ctx.edit_config(ctx.model("remote-code"), model_type="my_custom_arch",
                             auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                                       "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (folder / "modeling_custom.py").write_text("raise SystemExit('this code must never run')\n")
    return inspect(folder)


@case("model-needs-remote-code-train", "model", r"needs its own Python code to run", r"trust_remote_code = true")
def _(ctx):
    folder = ctx.edit_config(ctx.model("remote-code"), model_type="my_custom_arch",
                             auto_map={"AutoConfig": "configuration_custom.CustomConfig"})
    (folder / "configuration_custom.py").write_text("raise SystemExit('this code must never run')\n")
    return ctx.train_model(folder)


@case("model-pickle-only", "model", r"holds only pickle weights \(pytorch_model\.bin\); Workbench will not unpickle them",
      r"convert the model to safetensors, or .*allow_pickle = true")
def _(ctx):
    return inspect(ctx.pickled_model())


@case("model-pickle-only-train", "model", r"holds only pickle weights", r"allow_pickle = true")
def _(ctx):
    return ctx.train_model(ctx.pickled_model())


@case("model-pickle-only-merge-base", "model", r"holds only pickle weights", r"convert the model to safetensors")
def _(ctx):
    return merge(ctx, ctx.pickled_model(), ctx.adapter())


@case("model-path-is-a-file", "model", r"notes\.txt is a file, not a model folder or a \.gguf file",
      r"choose the folder that holds config\.json")
def _(ctx):
    return inspect(ctx.write("notes.txt", "my model is somewhere else\n"))


@case("model-gguf-not-gguf", "model", r"fake\.gguf: .*does not start with the GGUF magic bytes",
      r"damaged or not a GGUF model; download it again")
def _(ctx):
    return inspect(ctx.write("fake.gguf", b"<html>404 Not Found</html>\n"))


@case("model-gguf-truncated", "model", r"cut\.gguf: the file ends early or is damaged", r"download it again")
def _(ctx):
    # magic, version 3, tensor count 0, metadata count 2, then the file ends inside the first key
    return inspect(ctx.write("cut.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 2) + b"\x05\x00"))


@case("model-gguf-merge-base", "model", r"is a GGUF model; its quantized weights cannot be merged exactly",
      r"merge into the original safetensors model")
def _(ctx):
    return merge(ctx, ctx.write("model.Q4_0.gguf", b"GGUF" + struct.pack("<IQQ", 3, 0, 0)), ctx.adapter())


@case("model-folder-with-two-ggufs", "model", r"has no config\.json.*\(it holds 2 \.gguf files: choose one of them\)",
      r"or a \.gguf file")
def _(ctx):
    folder = ctx.path("ggufs")
    folder.mkdir()
    for name in ("a.Q4_0.gguf", "a.Q8_0.gguf"):
        (folder / name).write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 0))
    return inspect(folder)


@case("model-hub-id-offline", "model",
      r"workbench-tests/no-such-model is not in the local Hugging Face cache and the Hub cannot be reached \(offline\)",
      r"open a local model folder", patch="offline", gui=False)
def _(ctx):
    return Built(Path("workbench-tests/no-such-model"), ["inspect", "workbench-tests/no-such-model"])


@case("model-wrong-task", "model", r"clip cannot be built as a causal-lm model", r"set model.task to what the model is")
def _(ctx):
    folder = ctx.model("clip")
    (folder / "config.json").write_text(json.dumps({"model_type": "clip"}))
    return inspect(folder)


@case("model-gguf-export-unmapped-architecture", "model", r"architecture 'gpt2' has no GGUF mapping here",
      r"GGUF export supports these architectures \(config\.json model_type\): gemma, gemma2, gemma3_text, llama, mistral, "
      r"phi3, qwen2, qwen3, stablelm, starcoder2", gui=False)
def _(ctx):
    gpt2 = ctx.model("gpt2", arch="gpt2")
    return export(ctx, ctx.adapter(), None, "--gguf", "--base", str(gpt2), target=gpt2)


# ---------------------------------------------------------------------------------------------------- data


@case("data-missing-file", "data", r"missing\.jsonl: file not found", r"data\.train_files")
def _(ctx):
    return ctx.train_data(ctx.path("missing.jsonl"))


@case("data-missing-validation-file", "data", r"gone\.jsonl: file not found", r"data\.validation_files")
def _(ctx):
    return ctx.train(ctx.runfile(data={"validation_files": [str(ctx.path("gone.jsonl"))]}),
                     target=ctx.path("gone.jsonl"))


@case("data-no-train-files", "data", r"No training files are set", r"Add one or more files to data\.train_files")
def _(ctx):
    return ctx.train(ctx.runfile(train_files=[]))


@case("data-empty-file", "data", r"empty\.jsonl: the file is empty", r"Put examples in it")
def _(ctx):
    return ctx.train_data(ctx.write("empty.jsonl", b""))


@case("data-whitespace-only", "data", r"blank\.jsonl: the file is empty", r"Put examples in it")
def _(ctx):
    return ctx.train_data(ctx.write("blank.jsonl", "\n  \n\t\n"))


@case("data-unsupported-file-type", "data", r"sheet\.xlsx: unsupported file type '\.xlsx'",
      r"Use \.jsonl, \.json, \.csv, \.parquet, \.txt")
def _(ctx):
    return ctx.train_data(ctx.write("sheet.xlsx", b"PK\x03\x04 a spreadsheet"))


@case("data-binary-file", "data", r"photo\.jsonl: the file holds NUL bytes: it is a binary file", r"save it as UTF-8",
      subprocess=True)
def _(ctx):
    return ctx.train_data(ctx.write("photo.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 8))


@case("data-utf16", "data", r"utf16\.jsonl: the file is UTF-16 text, not UTF-8", r"save it as UTF-8")
def _(ctx):
    return ctx.train_data(ctx.write("utf16.jsonl", '{"prompt": "a", "completion": " b"}\n'.encode("utf-16")))


@case("data-latin1", "data", r"latin1\.jsonl: line 2: field 'completion': is not valid UTF-8 \(byte 0xE9\)",
      r"Fix the row, or set data\.skip_bad_rows = true")
def _(ctx):
    return ctx.train_data(ctx.write("latin1.jsonl", '{"prompt": "a", "completion": " b"}\n{"prompt": "c", "completion": " caf\xe9"}\n'
                                    .encode("latin-1")))


@case("data-jsonl-broken-json", "data", r"broken\.jsonl: line 2: not valid JSON: ", r"Fix the row")
def _(ctx):
    return ctx.train_data(ctx.jsonl("broken.jsonl", [{"prompt": "a", "completion": " b"}, '{"prompt": "unterminated']))


@case("data-fifo", "data", r"train\.jsonl is a FIFO \(named pipe\), not a regular file",
      r"Give an ordinary data file in data\.train_files", subprocess=True)
def _(ctx):
    # open() would wait for a writer forever: refused before it is opened.
    import os

    os.mkfifo(ctx.path("train.jsonl"))
    return ctx.train_data(ctx.path("train.jsonl"))


@case("data-symlink-loop", "data", r"loop\.jsonl cannot be read: Too many levels of symbolic links", r"data\.train_files")
def _(ctx):
    ctx.path("loop.jsonl").symlink_to(ctx.path("loop.jsonl"))
    return ctx.train_data(ctx.path("loop.jsonl"))


@case("data-validation-file-is-a-fifo", "data", r"val\.csv is a FIFO \(named pipe\), not a regular file",
      r"data\.validation_files")
def _(ctx):
    import os

    os.mkfifo(ctx.path("val.csv"))
    return ctx.train_data(ctx.good_data(), validation_files=[str(ctx.path("val.csv"))])


@case("data-parquet-is-a-socket", "data", r"table\.parquet is a socket, not a regular file", r"ordinary data file")
def _(ctx):
    import socket

    with socket.socket(socket.AF_UNIX) as sock:  # the socket file stays after the socket is closed
        sock.bind(str(ctx.path("table.parquet")))
    return ctx.train_data(ctx.path("table.parquet"))


@case("data-jsonl-nested-too-deeply", "data", r"deep\.jsonl: line 2: the JSON is nested too deeply", r"Fix the row")
def _(ctx):
    deep = "[" * 50_000 + "]" * 50_000
    return ctx.train_data(ctx.write("deep.jsonl", '{"prompt": "a", "completion": " b"}\n{"prompt": ' + deep + '}\n'))


@case("data-json-array-nested-too-deeply", "data", r"deep\.json: the JSON is nested too deeply", r"Flatten the data")
def _(ctx):
    return ctx.train_data(ctx.write("deep.json", "[" * 50_000 + "]" * 50_000))


@case("data-mixed-formats-in-one-file", "data",
      r"mixed\.jsonl: line 3 holds a chat row, but line 1 holds a prompt-completion row", r"one file per format")
def _(ctx):
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    return ctx.train_data(ctx.jsonl("mixed.jsonl", [{"prompt": "a", "completion": " b"}] * 2 + [chat]))


@case("data-jsonl-not-an-object", "data", r"list\.jsonl: line 1: expected a JSON object, found a list", r"Fix the row")
def _(ctx):
    return ctx.train_data(ctx.jsonl("list.jsonl", [["a question", "an answer"]]))


@case("data-jsonl-wrong-type", "data", r"number\.jsonl: line 1: field 'completion': expected text, found a number",
      r"Fix the row")
def _(ctx):
    return ctx.train_data(ctx.jsonl("number.jsonl", [{"prompt": "Two plus two?", "completion": 4}]))


@case("data-jsonl-missing-field", "data", r"partial\.jsonl: line 3: field 'completion': is missing", r"Fix the row")
def _(ctx):
    rows = [{"prompt": "a", "completion": " b"}, {"prompt": "c", "completion": " d"}, {"prompt": "e"}]
    return ctx.train_data(ctx.jsonl("partial.jsonl", rows))


@case("data-jsonl-null-field", "data", r"null\.jsonl: line 1: field 'prompt': expected text, found null|"
      r"null\.jsonl: line 1: field 'completion': is null", r"Fix the row")
def _(ctx):
    return ctx.train_data(ctx.jsonl("null.jsonl", [{"prompt": "a", "completion": None}]))


@case("data-jsonl-empty-completion", "data", r"empty-answer\.jsonl: line 1: field 'completion': is empty", r"Fix the row")
def _(ctx):
    return ctx.train_data(ctx.jsonl("empty-answer.jsonl", [{"prompt": "a", "completion": "   "}]))


@case("data-unknown-columns", "data", r"qa\.jsonl: cannot tell the data format from the columns: question, answer",
      r"Set data\.format .* map your columns with data\.columns")
def _(ctx):
    return ctx.train_data(ctx.jsonl("qa.jsonl", [{"question": "a?", "answer": "b"}]))


@case("data-json-array-truncated", "data", r"cut\.json: line 3: not valid JSON", r"one array of objects")
def _(ctx):
    return ctx.train_data(ctx.write("cut.json", '[\n  {"prompt": "a", "completion": " b"},\n  {"prompt": "c", "compl'))


@case("data-json-array-of-numbers", "data", r"numbers\.json: row 1: expected a JSON object, found a number",
      r"Fix the row")
def _(ctx):
    return ctx.train_data(ctx.write("numbers.json", "[1, 2, 3]"))


@case("data-json-bare-string", "data", r"string\.json: line 1: expected a JSON object, found a string", r"Fix the row")
def _(ctx):
    return ctx.train_data(ctx.write("string.json", '"just one string"\n'))


@case("data-csv-ragged-row", "data", r"ragged\.csv: line 3: has 3 values but the header has 2 columns", r"Fix the row")
def _(ctx):
    return ctx.train_data(ctx.write("ragged.csv", "prompt,completion\na, b\nc, d, e\n"))


@case("data-csv-header-only", "data", r"header\.csv: the file has no rows", r"rows below its header line")
def _(ctx):
    return ctx.train_data(ctx.write("header.csv", "prompt,completion\n"))


@case("data-csv-mapped-column-missing", "data",
      r"answers\.csv: line 1: the header has no column 'reply' \(columns: prompt, answer\)", r"map your columns")
def _(ctx):
    return ctx.train_data(ctx.write("answers.csv", "prompt,answer\na, b\n"), columns={"completion": "reply"})


@case("data-csv-huge-cell-then-bad-row", "data", r"big\.csv: line 3: field 'completion': is empty", r"Fix the row")
def _(ctx):
    # A 300 KB cell is ordinary data (csv's default limit is 128 KiB); the error must be the real one, on line 3.
    return ctx.train_data(ctx.write("big.csv", 'prompt,completion\n"' + "long document " * 20_000 + '", ok\nq,\n'))


@case("data-huge-single-row-broken", "data", r"huge\.jsonl: line 1: not valid JSON: (Unterminated string|Invalid control character)", r"Fix the row")
def _(ctx):
    return ctx.train_data(ctx.write("huge.jsonl", '{"prompt": "' + "x" * 3_000_000 + "\n"))


@case("data-huge-single-row-truncated-away", "data", r"No train example is left to train on",
      r"lost all its trained tokens to truncation; check data\.max_length", late=True)
def _(ctx):
    # Readable, but its completion lies beyond max_length: found when tokenized, after the model loaded.
    return ctx.train_data(ctx.jsonl("long-prompt.jsonl", [{"prompt": "word " * 50_000, "completion": " the answer"}]),
                          max_length=64)


@case("data-txt-with-chat-format", "data", r"notes\.txt: a \.txt file holds plain text, not chat rows",
      r"Use data\.format = 'text'")
def _(ctx):
    return ctx.train_data(ctx.write("notes.txt", "Some plain text.\n\nAnother paragraph.\n"), format="chat")


@case("data-parquet-garbage", "data", r"table\.parquet: not a readable Parquet file: .*magic bytes",
      r"write it again .*or use JSONL or CSV")
def _(ctx):
    return ctx.train_data(ctx.write("table.parquet", b"PAR1 this is not really parquet"))


@case("data-parquet-unknown-columns", "data", r"cols\.parquet: cannot tell the data format from the columns: a, b",
      r"data\.columns")
def _(ctx):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = ctx.path("cols.parquet")
    pq.write_table(pa.Table.from_pylist([{"a": "x", "b": "y"}]), path)
    return ctx.train_data(path)


@case("data-folder-not-a-saved-dataset", "data", r"photos: this folder is not a dataset saved with datasets' save_to_disk",
      r"Pick a data file")
def _(ctx):
    ctx.write("photos/cat.jpg", b"\xff\xd8\xff\xe0 jpeg")
    return ctx.train_data(ctx.path("photos"))


@case("data-saved-dataset-broken", "data", r"saved: cannot load the saved dataset", r"Save it again with Dataset\.save_to_disk")
def _(ctx):
    ctx.write("saved/dataset_info.json", "{not json")
    return ctx.train_data(ctx.path("saved"))


@case("data-chat-messages-not-a-list", "data",
      r"chat\.jsonl: line 1: field 'messages': expected a list of messages, found a string", r"Fix the row")
def _(ctx):
    return ctx.train_data(ctx.jsonl("chat.jsonl", [{"messages": "user: hi\nassistant: hello"}]))


@case("data-chat-unknown-role", "data", r"chat\.jsonl: line 1: field 'messages\[1\]\.role': unknown role 'bot'",
      r"Fix the row")
def _(ctx):
    return ctx.train_data(ctx.jsonl("chat.jsonl", [{"messages": [{"role": "user", "content": "hi"},
                                                                 {"role": "bot", "content": "hello"}]}]))


@case("data-chat-no-assistant", "data", r"chat\.jsonl: line 1: field 'messages': has no assistant message",
      r"Fix the row")
def _(ctx):
    return ctx.train_data(ctx.jsonl("chat.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}]))


@case("data-chat-starts-with-assistant", "data",
      r"chat\.jsonl: line 1: field 'messages\[0\]': the conversation starts with an assistant message",
      r"Fix the row", late=True)
def _(ctx):
    return ctx.train_data(ctx.jsonl("chat.jsonl", [{"messages": [{"role": "assistant", "content": "I start."},
                                                                 {"role": "user", "content": "ok"},
                                                                 {"role": "assistant", "content": "fine"}]}]))


@case("data-sharegpt-turn-not-an-object", "data",
      r"sharegpt\.jsonl: line 1: field 'conversations\[0\]': expected an object with role and content, found a string",
      r"Fix the row")
def _(ctx):
    return ctx.train_data(ctx.jsonl("sharegpt.jsonl", [{"conversations": ["human: hi", "gpt: hello"]}]))


@case("data-alpaca-missing-output", "data", r"alpaca\.jsonl: line 1: field 'output': is missing", r"Fix the row")
def _(ctx):
    return ctx.train_data(ctx.jsonl("alpaca.jsonl", [{"instruction": "Say hi.", "input": ""}]), format="alpaca")


@case("data-mixed-formats", "data", r"val\.jsonl holds chat rows but the first training file holds prompt-completion rows",
      r"Use files of one format")
def _(ctx):
    val = ctx.jsonl("val.jsonl", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    return ctx.train(ctx.runfile(data={"validation_files": [str(val)]}), target=val)


@case("data-columns-unknown-role", "data", r"data\.columns: unknown role 'answer'", r"The roles are: text, prompt")
def _(ctx):
    return ctx.train_data(ctx.good_data(), columns={"answer": "completion"})


@case("data-chat-template-syntax", "data", r"data\.chat_template: not a valid Jinja template: .*\(line 1\)",
      r"Fix the template's syntax, or remove data\.chat_template")
def _(ctx):
    chat = ctx.jsonl("chat.jsonl", [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}])
    return ctx.train_data(chat, chat_template="{% for m in messages %}{{ m['content'] }")


@case("data-validation-split-leaves-nothing", "data", r"validation_split = 0\.5 leaves none of the 1 rows for training",
      r"Lower data\.validation_split or add rows")
def _(ctx):
    return ctx.train_data(ctx.jsonl("one.jsonl", [{"prompt": "a", "completion": " b"}]), validation_split=0.5)


@case("data-unreadable-file", "data", r"locked\.jsonl: cannot read the file: Permission denied",
      r"Check the file's permissions", patch="no-permission")
def _(ctx):
    path = ctx.good_data("locked.jsonl")
    path.chmod(0)
    return denied(ctx.train_data(path), path)


# ----------------------------------------------------------------------------------------------- run files


@case("runfile-missing", "runfile", r"file not found: \S*nope\.toml", r"check the path of the run file")
def _(ctx):
    return ctx.train(ctx.path("nope.toml"))


@case("runfile-is-a-folder", "runfile", r"cannot read the file: Is a directory", r"not a folder")
def _(ctx):
    folder = ctx.path("runs-folder")
    folder.mkdir()
    return ctx.train(folder)


@case("runfile-is-a-fifo", "runfile", r"the run file is a FIFO \(named pipe\), not a regular file",
      r"choose the \.toml run file itself", subprocess=True)
def _(ctx):
    import os

    os.mkfifo(ctx.path("run.toml"))
    return ctx.train(ctx.path("run.toml"))


@case("runfile-symlink-loop", "runfile", r"the run file cannot be read: Too many levels of symbolic links", r"run file")
def _(ctx):
    ctx.path("run.toml").symlink_to(ctx.path("run.toml"))
    return ctx.train(ctx.path("run.toml"))


@case("runfile-empty", "runfile", r"^no model chosen", r"pick a local model folder")
def _(ctx):
    return ctx.train(ctx.runfile(text=""))


@case("runfile-not-toml", "runfile", r"not valid TOML: .*\(at line 1, column \d+\)", r"fix the syntax at the line",
      subprocess=True)
def _(ctx):
    return ctx.train(ctx.runfile(text='{"model": {"source": "m"}}\n'))


@case("runfile-unquoted-path", "runfile", r"not valid TOML: .*\(at line 2, column \d+\)",
      r"text values need quotes")
def _(ctx):
    return ctx.train(ctx.runfile(text="[model]\nsource = ./my-model\n"))


@case("runfile-binary", "runfile", r"the file is not UTF-8 text", r"save it as UTF-8")
def _(ctx):
    return ctx.train(ctx.write("binary.toml", b"\x00\x01\x02\xff\xfe garbage"))


@case("runfile-utf16", "runfile", r"the file is not UTF-8 text", r"save it as UTF-8")
def _(ctx):
    return ctx.train(ctx.write("utf16.toml", '[model]\nsource = "m"\n'.encode("utf-16")))


@case("runfile-unknown-section", "runfile", r"modle: unknown key; allowed: model, lora, data, training, eval, output",
      r"edit \S*run\.toml")
def _(ctx):
    return ctx.train(ctx.runfile(text='[modle]\nsource = "m"\n'))


@case("runfile-unknown-key", "runfile", r"lora\.rank: unknown key in \[lora\]; allowed: r, alpha, ", r"edit \S*run\.toml",
      subprocess=True)
def _(ctx):
    return ctx.train(ctx.runfile(lora={"rank": 8}))


@case("runfile-quoted-number", "runfile", r"lora\.r: got '8' — must be a whole number", r"edit \S*run\.toml")
def _(ctx):
    return ctx.train(ctx.runfile(lora={"r": "8"}))


@case("runfile-fraction-for-whole-number", "runfile", r"lora\.r: got 8\.5 — must be a whole number .*no decimal point",
      r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(lora={"r": 8.5}))


@case("runfile-bool-for-number", "runfile", r"training\.batch_size: got True — must be a whole number", r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(training={"batch_size": True}))


@case("runfile-section-not-a-table", "runfile", r"lora: got 5 — must be a \[lora\] table of settings", r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(text='lora = 5\n[model]\nsource = "m"\n'))


@case("runfile-string-for-list", "runfile", r"data\.train_files: got '\S*train\.jsonl' — must be a list", r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(text=f'[model]\nsource = "m"\n[data]\ntrain_files = "{ctx.good_data()}"\n'))


@case("runfile-date-for-text", "runfile", r"model\.source: got datetime\.date\(2024, 5, 1\) — must be text in quotes",
      r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(text="[model]\nsource = 2024-05-01\n"))


@case("runfile-rank-zero", "runfile", r"lora\.r: got 0 — the rank must be a whole number of at least 1", r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(lora={"r": 0}))


@case("runfile-negative-alpha", "runfile", r"lora\.alpha: got -16\.0 — must be greater than 0", r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(lora={"alpha": -16.0}))


@case("runfile-dropout-one", "runfile", r"lora\.dropout: got 1\.0 — must be less than 1", r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(lora={"dropout": 1.0}))


@case("runfile-unknown-preset", "runfile", r"lora\.preset: got 'everything' — unknown preset; choose one of attention-qv",
      r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(lora={"preset": "everything"}))


@case("runfile-bad-block-range", "runfile", r"lora\.blocks: got '8-' — block range '8-' is not N or A-B", r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(lora={"blocks": "8-"}))


@case("runfile-reversed-block-range", "runfile", r"lora\.blocks: got '5-2' — block range '5-2' ends before it starts",
      r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(lora={"blocks": "5-2"}))


@case("runfile-rank-pattern-zero", "runfile", r"lora\.rank_pattern: got .* — ranks must be at least 1 \(bad: q_proj\)",
      r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(lora={"rank_pattern": {"q_proj": 0}}))


@case("runfile-learning-rate-nan", "runfile", r"training\.learning_rate: got nan — must be a number \(nan is not one\)",
      r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(text='[model]\nsource = "m"\n[training]\nlearning_rate = nan\n'))


@case("runfile-unknown-scheduler", "runfile", r"training\.scheduler: got 'exponential' — must be one of 'linear', 'cosine'",
      r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(training={"scheduler": "exponential"}))


@case("runfile-max-length-too-small", "runfile", r"data\.max_length: got 4 — must be greater than or equal to 8", r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(data={"max_length": 4}))


@case("runfile-run-name-with-slash", "runfile", r"output\.name: got '\.\./escape' — .*no slashes", r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(output={"name": "../escape"}))


@case("runfile-several-problems", "runfile",
      r"lora\.r: got 0 .*\n.*lora\.alpha: got -1\.0 .*\n.*training\.batch_size: got 0 — must be greater than or equal to 1",
      r"edit")
def _(ctx):
    return ctx.train(ctx.runfile(lora={"r": 0, "alpha": -1.0}, training={"batch_size": 0}))


@case("runfile-infinite-epochs", "runfile", r"training\.epochs: got inf", r"edit")
def _(ctx):
    run = ctx.runfile(training={"max_steps": 1})
    text = run.read_text().replace("max_steps = 1", "epochs = inf")
    return ctx.train(ctx.runfile(text=text))


@case("runfile-cuda-without-gpu", "runfile", r"training\.device is 'cuda' but no CUDA GPU is available",
      r"set training\.device = 'auto' or 'cpu'", skip_if="cuda")
def _(ctx):
    return ctx.train(ctx.runfile(training={"device": "cuda"}))


@case("runfile-fp16-on-cpu", "runfile", r"training\.precision fp16 needs a GPU", r"use fp32 or bf16 on the CPU",
      skip_if="cuda")
def _(ctx):
    return ctx.train(ctx.runfile(training={"precision": "fp16"}))


@case("runfile-set-bad-value", "runfile", r"invalid run configuration in --set:\n.*training\.learning_rate: got 'fast' — "
      r"must be a number", r"fix the --set KEY=VALUE option", gui=False)
def _(ctx):
    run = ctx.runfile()
    return ctx.train(run, "--set", "training.learning_rate=fast")


@case("runfile-set-without-section", "runfile", r"'lr=1e-4': expected section\.field=value", r"fix the --set", gui=False)
def _(ctx):
    return ctx.train(ctx.runfile(), "--set", "lr=1e-4")


@case("runfile-set-unknown-section", "runfile", r"trainer\.lr: unknown section 'trainer'", r"fix the --set", gui=False)
def _(ctx):
    return ctx.train(ctx.runfile(), "--set", "trainer.lr=1")


@case("runfile-resume-not-a-run-folder", "runfile", r"\S*somewhere is not a run folder \(no run\.toml\)",
      r"pick a folder listed by `workbench runs`", gui=False)
def _(ctx):
    folder = ctx.path("somewhere")
    folder.mkdir()
    (folder / "notes.txt").write_text("not a run\n")
    return Built(folder, ["resume", str(folder), "--quiet"])


@case("runfile-resume-invalid-run-toml", "runfile", r"invalid run configuration in \S*old-run/run\.toml:\n.*lora\.r: got 0",
      r"edit \S*old-run/run\.toml")
def _(ctx):
    folder = ctx.path("old-run")
    folder.mkdir()
    ctx.runfile("old-run/run.toml", lora={"r": 0})
    return Built(folder / "run.toml", ["resume", str(folder), "--quiet"])


# ------------------------------------------------------------------------------------------------ adapters


@case("adapter-missing-folder", "adapter", r"adapter folder \S*no-adapter does not exist", r"pass a run folder")
def _(ctx):
    return inspect_adapter(ctx.path("no-adapter"))


@case("adapter-folder-without-config", "adapter", r"no adapter in \S*: adapter_config\.json not found",
      r"one with adapter_config\.json")
def _(ctx):
    folder = ctx.adapter()
    (folder / "adapter_config.json").unlink()
    return inspect_adapter(folder)


@case("adapter-config-not-json", "adapter", r"cannot read \S*adapter_config\.json", r"damaged or not JSON")
def _(ctx):
    folder = ctx.adapter()
    (folder / "adapter_config.json").write_text("{'r': 4}")
    return inspect_adapter(folder)


@case("adapter-config-nested-too-deeply", "adapter", r"adapter_config\.json is nested too deeply", r"copy or download it again")
def _(ctx):
    folder = ctx.adapter()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "x": ' + "[" * 50_000 + "]" * 50_000 + "}")
    return inspect_adapter(folder)


@case("adapter-config-is-a-fifo", "adapter", r"adapter_config\.json \S*adapter_config\.json is a FIFO \(named pipe\)",
      r"ordinary file")
def _(ctx):
    import os

    folder = ctx.adapter()
    (folder / "adapter_config.json").unlink()
    os.mkfifo(folder / "adapter_config.json")
    return inspect_adapter(folder)


@case("adapter-weights-are-a-fifo-merge", "adapter", r"adapter_model\.safetensors \S* is a FIFO \(named pipe\)",
      r"ordinary file")
def _(ctx):
    import os

    folder = ctx.adapter()
    (folder / "adapter_model.safetensors").unlink()
    os.mkfifo(folder / "adapter_model.safetensors")
    return merge(ctx, ctx.shared_model(), folder, target=folder)


@case("adapter-not-lora", "adapter", r"is a PREFIX_TUNING adapter .*only LoRA and DoRA adapters are supported",
      r"choose a LoRA adapter folder")
def _(ctx):
    return inspect_adapter(ctx.adapter(config={"peft_type": "PREFIX_TUNING"}))


@case("adapter-without-weights", "adapter", r"has no adapter_model\.safetensors, so the adapter folder is incomplete",
      r"copy adapter_model\.safetensors along with adapter_config\.json")
def _(ctx):
    folder = ctx.adapter()
    (folder / "adapter_model.safetensors").unlink()
    return inspect_adapter(folder)


@case("adapter-pickle-only", "adapter", r"holds its weights only as the pickle file adapter_model\.bin",
      r"save_pretrained")
def _(ctx):
    folder = ctx.adapter()
    (folder / "adapter_model.safetensors").unlink()
    ctx.pickle_canary(folder / "adapter_model.bin")
    return inspect_adapter(folder)


@case("adapter-truncated-weights", "adapter", r"cannot read \S*adapter_model\.safetensors", r"damaged or incomplete")
def _(ctx):
    folder = ctx.adapter()
    ctx.truncate(folder / "adapter_model.safetensors")
    return inspect_adapter(folder)


def _poison(value: float) -> Callable[[dict], dict]:
    """An adapter edit: one lora_B tensor of block 1 holds ``value`` (NaN or inf), as after a diverged run."""
    def edit(weights: dict) -> dict:
        key = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
        weights[key] = weights[key].clone()
        weights[key][0, 0] = value
        return weights
    return edit


@case("adapter-nan-weights-inspect", "adapter",
      r"adapter_model\.safetensors holds NaN or infinite values in 1 tensor\(s\): "
      r"base_model\.model\.model\.layers\.1\.self_attn\.v_proj\.lora_B\.weight", r"diverged")
def _(ctx):
    return inspect_adapter(ctx.adapter(tensors=_poison(float("nan"))))


@case("adapter-inf-weights-merge", "adapter", r"holds NaN or infinite values in 1 tensor\(s\): \S*v_proj\.lora_B",
      r"train again from an earlier checkpoint")
def _(ctx):
    adapter = ctx.adapter(tensors=_poison(float("inf")))
    return merge(ctx, ctx.shared_model(), adapter, target=adapter)


@case("adapter-nan-weights-export", "adapter", r"holds NaN or infinite values", r"diverged", gui=False)
def _(ctx):
    return export(ctx, ctx.adapter(tensors=_poison(float("-inf"))), None, "--portable")


@case("adapter-nan-weights-gguf", "adapter", r"holds NaN or infinite values", r"diverged", gui=False)
def _(ctx):
    return export(ctx, ctx.adapter(tensors=_poison(float("nan"))), None, "--gguf")


@case("adapter-missing-tensor", "adapter",
      r"module model\.layers\.1\.self_attn\.q_proj has an incomplete or inconsistent A/B pair \{'lora_A': \(4, 64\)\}",
      r"damaged or was edited")
def _(ctx):
    return inspect_adapter(ctx.adapter(tensors=lambda t: {k: v for k, v in t.items()
                                                           if k != "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"}))


@case("adapter-rank-disagrees-with-config", "adapter",
      r"module model\.layers\.0\.self_attn\.q_proj has rank 4 in its weights but 8 in adapter_config\.json",
      r"from the same save")
def _(ctx):
    return inspect_adapter(ctx.adapter(config={"r": 8}))


@case("adapter-config-bad-rank", "adapter", r"adapter_config\.json: r must be a positive number, got 'four'",
      r"fix that value in adapter_config\.json")
def _(ctx):
    return inspect_adapter(ctx.adapter(config={"r": "four"}))


@case("adapter-unknown-tensors", "adapter", r"has tensors this version cannot interpret: optimizer_state",
      r"saved by PEFT's save_pretrained")
def _(ctx):
    import torch

    return inspect_adapter(ctx.adapter(tensors=lambda t: {**t, "optimizer_state": torch.zeros(3)}))


@case("adapter-dora-without-magnitude", "adapter", r"DoRA adapter \(use_dora = true\) without a magnitude vector",
      r"export the adapter again")
def _(ctx):
    return inspect_adapter(ctx.adapter(config={"use_dora": True}))


@case("adapter-base-rewriting-init", "adapter", r"uses init_lora_weights='pissa' \(it rewrites the base weights",
      r"supported: LoRA, rsLoRA and DoRA")
def _(ctx):
    return inspect_adapter(ctx.adapter(config={"init_lora_weights": "pissa"}))


@case("adapter-mismatched-base", "adapter",
      r"does not belong to the base model \S*gpt2: none of its 4 adapted modules exists there",
      r"the adapter was trained on '\S*good-model'; use that model as the base", subprocess=True)
def _(ctx):
    return inspect_adapter(ctx.adapter(), ctx.model("gpt2", arch="gpt2"))


@case("adapter-wrong-shapes", "adapter",
      r"does not fit the base model \S* \(2 problems\):\n.*q_proj: shape mismatch: the adapter maps 48 → 64 features .* "
      r"but the base layer maps 64 → 64", r"use that model as the base")
def _(ctx):
    import torch

    def narrow(t):
        for block in range(2):
            t[f"base_model.model.model.layers.{block}.self_attn.q_proj.lora_A.weight"] = torch.randn(4, 48)
        return t

    return inspect_adapter(ctx.adapter(tensors=narrow), ctx.shared_model())


@case("adapter-module-missing-in-base", "adapter",
      r"model\.layers\.2\.self_attn\.q_proj: no such module in the base model", r"use that model as the base")
def _(ctx):
    import torch

    def extra_block(t):
        t["base_model.model.model.layers.2.self_attn.q_proj.lora_A.weight"] = torch.randn(4, LLAMA_IN)
        t["base_model.model.model.layers.2.self_attn.q_proj.lora_B.weight"] = torch.randn(64, 4)
        return t

    return inspect_adapter(ctx.adapter(tensors=extra_block), ctx.shared_model())


@case("adapter-merge-mismatched-base", "adapter", r"does not belong to the base model", r"use that model as the base")
def _(ctx):
    adapter = ctx.adapter()
    return merge(ctx, ctx.model("gpt2", arch="gpt2"), adapter, target=adapter)


@case("adapter-dora-has-no-portable-form", "adapter", r"is a DoRA adapter, which has no portable form",
      r"merge it into the base model instead", gui=False)
def _(ctx):
    return export(ctx, ctx.adapter(dora=True), None, "--portable")


@case("adapter-dora-has-no-gguf-adapter-form", "adapter", r"is a DoRA adapter, which has no GGUF adapter form",
      r"export the merged model instead: `workbench export RUN --gguf", gui=False)
def _(ctx):
    return export(ctx, ctx.adapter(dora=True), None, "--gguf-adapter")  # the base: the adapter's own record


# ------------------------------------------------------------------------------------------------- outputs


@case("output-export-existing-folder", "output", r"output folder \S*taken already exists; nothing was written",
      r"choose a new folder")
def _(ctx):
    ctx.write("taken/keep.txt", "mine\n")
    return export(ctx, ctx.adapter(), ctx.path("taken"), target=ctx.path("taken"))


@case("output-merge-existing-folder", "output", r"output folder \S*taken already exists; nothing was written",
      r"choose a new folder")
def _(ctx):
    ctx.write("taken/keep.txt", "mine\n")
    return merge(ctx, ctx.shared_model(), ctx.adapter(), ctx.path("taken"), target=ctx.path("taken"))


@case("output-export-inside-the-adapter", "output",
      r"output folder \S*adapter/sub is inside the adapter \(\S*\); nothing was written",
      r"choose a folder outside the adapter: Workbench never writes into its inputs")
def _(ctx):
    adapter = ctx.adapter()
    return export(ctx, adapter, adapter / "sub", target=adapter)


@case("output-merge-inside-the-base-model", "output",
      r"output folder \S*/merged is inside the base model \(\S*\); nothing was written",
      r"never writes into its inputs")
def _(ctx):
    base = ctx.model("base")
    return merge(ctx, base, ctx.adapter(base=base), base / "merged", target=base)


@case("output-gguf-inside-the-base-model", "output", r"is inside the base model", r"never writes into its inputs",
      gui=False)
def _(ctx):
    base = ctx.model("base")
    built = export(ctx, ctx.adapter(base=base), base / "gguf", "--gguf", "--type", "f16", target=base)
    return Built(built.target, built.argv + ["--base", str(base)], {**built.related, "base": base})


@case("output-gguf-adapter-inside-the-adapter", "output", r"is inside the adapter", r"never writes into its inputs",
      gui=False)
def _(ctx):
    adapter = ctx.adapter()
    return export(ctx, adapter, adapter / "gguf", "--gguf-adapter", target=adapter)


@case("output-export-onto-a-file", "output", r"output folder \S*mine\.txt already exists \(a file\); nothing was written",
      r"Workbench never replaces an existing file or folder")
def _(ctx):
    mine = ctx.write("mine.txt", "keep me\n")
    return export(ctx, ctx.adapter(), mine, target=mine)


@case("output-merge-onto-a-file", "output", r"output folder \S*mine\.txt already exists \(a file\)", r"never replaces")
def _(ctx):
    mine = ctx.write("mine.txt", "keep me\n")
    return merge(ctx, ctx.shared_model(), ctx.adapter(), mine, target=mine)


@case("output-gguf-onto-a-folder", "output", r"output folder \S*taken already exists; nothing was written",
      r"never replaces", gui=False)
def _(ctx):
    ctx.write("taken/keep.txt", "mine\n")
    return export(ctx, ctx.adapter(), ctx.path("taken"), "--gguf", target=ctx.path("taken"))


@case("output-gguf-adapter-onto-a-file", "output", r"output folder \S*mine\.gguf already exists \(a file\)",
      r"never replaces", gui=False)
def _(ctx):
    mine = ctx.write("mine.gguf", "keep me\n")
    return export(ctx, ctx.adapter(), mine, "--gguf-adapter", target=mine)


@case("output-ollama-onto-a-folder", "output", r"output folder \S*taken already exists", r"never replaces", gui=False)
def _(ctx):
    ctx.write("taken/Modelfile", "FROM mine\n")
    return export(ctx, ctx.adapter(), ctx.path("taken"), "--ollama", target=ctx.path("taken"))


@case("output-run-dir-not-empty", "output", r"the run folder \S*full is not empty", r"choose another output\.run_dir")
def _(ctx):
    ctx.write("full/keep.txt", "mine\n")
    return ctx.train(ctx.runfile(output={"run_dir": str(ctx.path("full"))}), target=ctx.path("full"))


@case("output-runs-root-is-a-file", "output", r"cannot create the run folder: .*\S*runs-file",
      r"choose a folder you can write to")
def _(ctx):
    ctx.write("runs-file", "not a folder\n")
    return ctx.train(ctx.runfile(output={"runs_root": str(ctx.path("runs-file"))}), target=ctx.path("runs-file"))


@case("output-export-under-a-file", "output", r"cannot write \S*: \S*adapter_config\.json is a file, not a folder",
      r"part of the --out path is a file")
def _(ctx):
    notes = ctx.write("notes/adapter_config.json", "x\n")
    return export(ctx, ctx.adapter(), notes / "out", target=notes)


@case("output-merge-under-a-file", "output", r"cannot write \S*: \S*notes\.txt is a file, not a folder",
      r"part of the --out path is a file")
def _(ctx):
    notes = ctx.write("notes.txt", "x\n")
    return merge(ctx, ctx.shared_model(), ctx.adapter(), notes / "merged", target=notes)


@case("output-export-disk-full", "output", r"cannot write \S*exported: No space left on device \(nothing was written\)",
      r"free some disk space", patch="disk-full")
def _(ctx):
    return export(ctx, ctx.adapter())


@case("output-merge-disk-full", "output", r"cannot write \S*merged: No space left on device \(nothing was written\)",
      r"free some disk space", patch="disk-full")
def _(ctx):
    return merge(ctx, ctx.shared_model(), ctx.adapter())


@case("output-train-disk-full", "output", r"cannot create the run folder: No space left on device",
      r"choose a folder you can write to", patch="disk-full")
def _(ctx):
    return ctx.train(ctx.runfile())


@case("output-export-unwritable-folder", "output", r"cannot write \S*locked/out: Permission denied",
      r"choose an --out folder you can write to", patch="no-permission")
def _(ctx):
    locked = ctx.path("locked")
    locked.mkdir()
    locked.chmod(0o500)
    return denied(export(ctx, ctx.adapter(), locked / "out", target=locked), locked)


@case("output-train-unwritable-runs-root", "output", r"cannot create the run folder: Permission denied",
      r"choose a folder you can write to", patch="no-permission")
def _(ctx):
    locked = ctx.path("locked")
    locked.mkdir()
    locked.chmod(0o500)
    return denied(ctx.train(ctx.runfile(output={"runs_root": str(locked / "runs")}), target=locked), locked)


@case("output-runs-root-not-a-folder", "output", r"\S*runs\.txt is a file, not a folder of runs",
      r"give the folder that holds the run folders", gui=False)
def _(ctx):
    path = ctx.write("runs.txt", "a list of runs\n")
    return Built(path, ["runs", "--root", str(path)])


@case("output-runs-root-symlink-loop", "output", r"cannot read \S*loop: Too many levels of symbolic links",
      r"give the folder that holds the run folders", gui=False)
def _(ctx):
    ctx.path("loop").symlink_to(ctx.path("loop"))
    return Built(ctx.path("loop"), ["runs", "--root", str(ctx.path("loop"))])


@case("output-runs-root-unreadable", "output", r"no permission to read \S*private", r"check the folder's permissions",
      patch="no-permission", gui=False)
def _(ctx):
    folder = ctx.path("private")
    folder.mkdir()
    folder.chmod(0)
    return denied(Built(folder, ["runs", "--root", str(folder)]), folder)


@case("output-control-run-not-running", "output", r"the run \S*old-run is not running \(new\)", r"see `workbench runs`",
      gui=False)
def _(ctx):
    folder = ctx.path("old-run")
    folder.mkdir()
    ctx.runfile("old-run/run.toml")
    return Built(folder, ["control", str(folder), "stop"])


@case("output-gguf-type-not-writable", "output", r"'q3_x' is not a type a GGUF model can be written in",
      r"choose one of: f32, f16, bf16, q8_0", gui=False)
def _(ctx):
    return export(ctx, ctx.adapter(), None, "--gguf", "--type", "q3_x")


@case("output-gguf-disk-full", "output", r"cannot write \S*exported: No space left on device \(nothing was written\)",
      r"free some disk space", patch="disk-full", gui=False)
def _(ctx):
    return export(ctx, ctx.adapter(), None, "--gguf", "--ollama")


# ================================================================= every field of the run file, generated


def _field_cases() -> list[Case]:
    """For every field of the run-file schema: a value of the wrong type, values just outside its range and
    an unknown choice. Made from the schema itself, so a field added later is covered without a new case."""
    from workbench.core.config import RunConfig

    cases = []
    for section, section_field in RunConfig.model_fields.items():
        for name, info in section_field.annotation.model_fields.items():  # type: ignore[union-attr]
            key = f"{section}.{name}"
            for label, value, words in _bad_values(info):
                cases.append(Case(
                    f"runfile-field-{key}-{label}", "runfile", _field_builder(section, name, value),
                    rf"{re.escape(key)}(\.\S+)?: got .+ — (must be|{words})", r"edit \S*run\.toml", generated=True,
                ))
    return cases


def _field_builder(section: str, name: str, value: Any) -> Callable[[Ctx], Built]:
    def build(ctx: Ctx) -> Built:
        return ctx.train(ctx.write("run.toml", tomli_w.dumps({section: {name: value}})))

    return build


def _bad_values(info: Any) -> list[tuple[str, Any, str]]:
    """(label, value, words the message may use) triples that the field must refuse."""
    annotation = _strip_optional(info.annotation)
    origin = typing.get_origin(annotation)
    out: list[tuple[str, Any, str]] = []
    if annotation is bool:
        out.append(("wrong-type", "yes", "must be"))
    elif annotation is int:
        out.append(("wrong-type", "8", "must be"))
    elif annotation is float:
        out.append(("wrong-type", "fast", "must be"))
    elif annotation is str:
        out.append(("wrong-type", 12345, "must be"))
    elif origin is typing.Literal:
        out.append(("wrong-type", 12345, "must be"))
        out.append(("unknown-choice", "no-such-choice", "must be one of"))
    elif origin is list:
        out.append(("wrong-type", "one-value", "must be a list"))
    elif origin is dict:
        out.append(("wrong-type", ["a", "b"], "must be a table"))
    else:
        out.append(("wrong-type", {"unexpected": [1, 2]}, "must be"))
    for constraint in info.metadata:
        bound = _outside(constraint, annotation)
        if bound is not None:
            out.append(bound)
    return out


def _strip_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and len(args) == 1:
        return args[0]
    return annotation


def _outside(constraint: Any, annotation: Any) -> tuple[str, Any, str] | None:
    """A value just outside an annotated_types bound (Ge, Gt, Le, Lt), of the field's own type."""
    step = 1 if annotation is int else 0.5
    for attr, label, shift in (("ge", "below-minimum", -step), ("gt", "at-exclusive-minimum", 0),
                               ("le", "above-maximum", step), ("lt", "at-exclusive-maximum", 0)):
        limit = getattr(constraint, attr, None)
        if limit is not None:
            value = limit + shift
            return label, int(value) if annotation is int else float(value), "must be (greater|less) than"
    return None


GENERATED_CASES: list[Case] = _field_cases()
ALL_CASES: list[Case] = CASES + GENERATED_CASES


def _gui_builder(c: Case) -> Callable[[Path, Callable[..., Path]], Built]:
    def build(tmp_path: Path, tiny_model_dir: Callable[..., Path]) -> Built:
        return c.build(Ctx(tmp_path, tiny_model_dir))

    return build


# For the window's tests: (id, builder(tmp_path, tiny_model_dir) -> Built, kind). The full case (expected
# message, skip_if, patch such as "no-permission" with Built.related["denied"]) is GUI_CASE_INFO[id].
GUI_CASES: list[tuple[str, Callable[[Path, Callable[..., Path]], Built], str]] = [
    (c.id, _gui_builder(c), c.kind) for c in CASES if c.gui and c.kind in GUI_KINDS
]
GUI_CASE_INFO: dict[str, Case] = {c.id: c for c in CASES if c.gui and c.kind in GUI_KINDS}


def counts() -> dict[str, int]:
    """Hand-written cases per kind, plus the generated run-file field cases."""
    out = {kind: sum(1 for c in CASES if c.kind == kind) for kind in KINDS}
    out["generated run-file fields"] = len(GENERATED_CASES)
    return out
from bad_inputs import corpus_runs  # noqa: E402,F401  (registers the run/resume/adapter cases)
