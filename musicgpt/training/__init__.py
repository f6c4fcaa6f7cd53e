"""Training (torch): configs, batches, the loop, run directories, evaluation, and the metrics log.

    config.py    TOML configs -> dataclasses ([model] [data] [optim] [train] [finetune]), `--set` overrides
    data.py      the corpus of a run, random crops with augmentation, evaluation windows, prefetching
    optim.py     AdamW parameter groups, warmup + cosine schedule
    loop.py      `train(config, run_dir, data=...)`: the `Trainer` (DDP, autocast, stop and resume)
    conditioning.py  control headers and infilling crops; the run's tokenizer; embeddings carried over by name
    finetune.py  what --init-from keeps of a checkpoint: its control and infilling tokens and their rows
    rundir.py    a run directory: config.toml, run.json, step checkpoints, best/, RNG state
    signals.py   SIGINT/SIGTERM: stop after the step and write a checkpoint
    evaluate.py  NLL per event, perplexity and accuracy of a checkpoint on a split or MIDI files
    log.py       metrics.csv (no torch: `musicgpt plot` reads it)
"""
