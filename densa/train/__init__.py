"""Training: DeepSpeed engine, loop with callbacks, atomic checkpoints, metrics, eval, finetuning.

`train(cfg)` / `build_trainer(cfg, ...)` live in `densa.train.run` (imported lazily: deepspeed is heavy).
"""
