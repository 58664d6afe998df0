"""The subcommands of ``fastsgd``, behind ``fastsgd.cli``.

``parser``: every command's options and the value types they parse; ``options``:
defaults, ``UsageError`` and the checks the commands share; ``building``: the data,
model and rates that train and lr-find build alike; then one module per command
family: ``train`` (with ``--resume``), ``lr_find``, ``predict`` (predict and
interpret), ``info`` (info, warmup and bench).
"""
