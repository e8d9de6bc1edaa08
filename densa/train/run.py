"""Build a trainer from a `RunConfig` and run it: the programmatic entry point behind `densa train`.

    from densa.train import train
    result = train(cfg)                       # world, model, engine, data, checkpoints, logging, export

    trainer = build_trainer(cfg, callbacks=[MyCallback()], train_data=my_source)
    result = trainer.fit()

Order matters for failure behaviour: the run dir and disk are checked before the process group and the
model exist; every rank seeds identically before building the model (identical init, no broadcast).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from densa.config.checks import validate
from densa.config.schema import RunConfig
from densa.train import engine as eng
from densa.train.callbacks import Callback
from densa.train.data import BatchSource, load_run_tokenizer, train_source, valid_batches
from densa.train.export import export_run
from densa.train.failures import dist_timeout_s, preflight
from densa.train.finetune import freeze, init_from
from densa.train.loop import Trainer, TrainResult
from densa.train.methods import method_callbacks, method_loss, prepare_model, trained_model_config


def build_model(cfg: RunConfig) -> torch.nn.Module:
    """The recipe's decoder (TP-sharded when parallel.tp > 1), initialised or loaded, frozen by glob, then
    prepared for the recipe's methods (ReLU swap, retaining heads) before any optimizer sees it."""
    from densa.models.transformer import Transformer

    tp_rank = 0
    if cfg.parallel.tp > 1:
        from densa.models.parallel import init_tensor_parallel
        from densa.models.parallel import tp_rank as get_tp_rank

        init_tensor_parallel(cfg.parallel.tp)
        tp_rank = get_tp_rank()
    torch.manual_seed(cfg.run.seed)
    model = Transformer(cfg.model, tp_size=cfg.parallel.tp)
    if cfg.init.from_path:
        init_from(model, cfg.init.from_path, tp_rank)
    freeze(model, cfg.init.freeze)
    model.gradient_checkpointing = cfg.parallel.activation_checkpointing
    return prepare_model(cfg, model)


def _no_empty_run_dir(build: Callable[..., Trainer]) -> Callable[..., Trainer]:
    """Setup that fails (bad data, validation, model) removes the run dir it created, and any parent it
    created, while they are still empty: a failed start leaves nothing behind."""

    @functools.wraps(build)
    def wrapper(cfg: RunConfig, *args: Any, **kwargs: Any) -> Trainer:
        created, path = [], Path(cfg.run.out_dir).absolute()
        while not path.exists() and path != path.parent:
            created.append(path)
            path = path.parent
        try:
            return build(cfg, *args, **kwargs)
        except BaseException:
            for folder in created:  # deepest first
                try:
                    folder.rmdir()
                except FileNotFoundError:  # another rank removed it
                    continue
                except OSError:  # not empty: another rank or process wrote there
                    break
            raise

    return wrapper


@_no_empty_run_dir
def build_trainer(
    cfg: RunConfig,
    *,
    callbacks: Iterable[Callback] = (),
    train_data: BatchSource | Any | None = None,
    valid_data: Callable[[], list[dict]] | None = None,
    loss_fn: eng.LossFn | None = None,
) -> Trainer:
    """World + model + engine + data + trainer.

    The recipe's method callbacks (SSD, sparsity, retaining heads) run before `callbacks`, so those see
    the methods' metrics; `loss_fn` defaults to the method's loss (retaining heads) or the LM loss.

    `train_data` bypasses `densa.data`: a `BatchSource`, or a map-style dataset of sample dicts that is
    sharded over DP ranks like the recipe's data would be. `valid_data` returns this rank's eval batches.
    """
    from densa.config.load import dump_recipe

    preflight(cfg.run.out_dir, cfg.model.num_params(), cfg.checkpoint.keep_last)
    world = eng.init_distributed(dist_timeout_s())
    validate(
        cfg,
        world.world_size,
        device=eng.device_kind(),
        training=train_data is None,
    )
    model = build_model(cfg)
    engine = eng.Engine(cfg, model, world)
    b = engine.batch
    if train_data is not None and not callable(train_data):
        train_data = _dataset_source(train_data, b.global_samples, b.micro_batch, engine.dp_rank, b.dp)
    if train_data is None or (valid_data is None and cfg.data.valid):
        tokenizer = load_run_tokenizer(cfg)
        if train_data is None:
            train_data = train_source(cfg, b.global_samples, b.micro_batch, engine.dp_rank, b.dp, tokenizer)
        if valid_data is None:
            valid_data = valid_batches(cfg, b.micro_batch, engine.dp_rank, b.dp, tokenizer)
    recipe_yaml = dump_recipe(cfg)
    if world.rank == 0:
        Path(cfg.run.out_dir, "recipe.yaml").write_text(recipe_yaml)
    return Trainer(
        cfg,
        engine,
        train_data,
        valid_data=valid_data,
        callbacks=[*method_callbacks(cfg, b.grad_accum), *callbacks],
        loss_fn=loss_fn or method_loss(cfg) or eng.lm_loss,
        recipe_yaml=recipe_yaml,
        num_params=cfg.model.num_params(),
    )


def _dataset_source(dataset: Any, global_samples: int, micro: int, dp_rank: int, dp: int) -> BatchSource:
    from densa.data.sampler import BatchIterator

    return lambda consumed: iter(BatchIterator(dataset, global_samples, micro, dp_rank, dp, consumed))


def export_final(trainer: Trainer) -> Path | None:
    """Collective: write export.hf_dir from the trained weights (rank 0 writes)."""
    cfg = trainer.cfg
    if not cfg.export.hf_dir:
        return None
    state = trainer.engine.full_state_dict()
    if trainer.is_main:  # the exporter `densa export RUN` uses: the same files from the same weights
        export_run(
            cfg.export.hf_dir,
            trained_model_config(cfg),
            state,
            run=Path(cfg.run.out_dir),
            folder=trainer.last_checkpoint,
            recipe_text=trainer.recipe_yaml,
            step=trainer.state.step,
            tokenizer=cfg.data.tokenizer,
            overwrite=True,  # only a folder densa wrote: the recipe check refused any other
        )
    eng.barrier()
    return Path(cfg.export.hf_dir)


def train(cfg: RunConfig, **kwargs) -> TrainResult:
    """Build and fit; export to export.hf_dir when the run completed (not when a signal stopped it)."""
    trainer = build_trainer(cfg, **kwargs)
    result = trainer.fit()
    if not result.interrupted:
        export_final(trainer)
    return result
